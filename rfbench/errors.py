"""Errors that the CLI reports as one line with exit code 2."""


class UserError(Exception):
    """Bad input or a missing resource: the message says what to do; no traceback is shown."""


class DatasetUnavailable(UserError):
    """A dataset is not on this machine and cannot be fetched."""


class DataFormatError(UserError):
    """A data file exists but is corrupt, truncated or inconsistent."""
