"""Errors that the CLI reports as one line with exit code 2."""


class UserError(Exception):
    """Bad input or a missing resource: the message says what to do; no traceback is shown."""


class DatasetUnavailable(UserError):
    """A dataset is not on this machine and cannot be fetched."""


class DataFormatError(UserError):
    """A data file exists but is corrupt, truncated or inconsistent."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut to ``limit``), for one-line reports."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__
