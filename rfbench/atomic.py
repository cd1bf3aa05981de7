"""Atomic file writes: a file is either its old self or wholly the new one, never half.

Each write goes to a temporary file with a unique name beside the target, then replaces
the target with ``os.replace``. The unique name matters for caches that several processes
may fill at once (two runs training the same classifier): with one fixed temporary name,
one process could rename the other's half-written file into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, replace: bool = True
) -> Path:
    """Call ``write(f)`` on a new temporary file beside ``path``, then move it onto
    ``path``. On any error the temporary file is removed and ``path`` is untouched. With
    ``replace=False`` a file that appears at ``path`` meanwhile is kept, and
    FileExistsError raised (the move is a hard link, which never overwrites)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() would not
        with os.fdopen(fd, "wb") as f:
            write(f)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError as e:  # a filesystem without hard links
                from rfbench.errors import UserError

                raise UserError(
                    f"cannot write {path} without the risk of replacing a file there: "
                    f"{e.strerror or e} (this filesystem has no hard links)"
                ) from None
            Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make directory ``path`` (and its parents) and prove it writable with a probe file,
    before any work whose result would go there; otherwise a UserError naming ``what``."""
    from rfbench.errors import UserError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to {what} {path}: {e.strerror or e}") from None
    check_can_write(path, what)  # now the nearest existing directory is path itself
    return path


def check_can_write(path: str | os.PathLike, what: str) -> Path:
    """Prove, without making anything, that directory ``path`` could be made and written:
    its nearest existing ancestor must be a directory that takes a probe file. Otherwise a
    UserError naming ``what``. For a check before long work that writes there later."""
    from rfbench.errors import UserError

    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write to {what} {path}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {path}: {e.strerror or e}") from None
    return path
