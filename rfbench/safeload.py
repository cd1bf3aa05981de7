"""Loading rfbench's own files (checkpoints, caches, pair shards) without unpickling code.

Every such file is a dict of tensors and plain values with a ``format`` key, read with
``torch.load(weights_only=True)``; anything else is one UserError that names the file, what
it should have been, and what to do. Other projects' files (torchcfm checkpoints) go
through the same ``load_weights_only``.
"""

from __future__ import annotations

import os
import warnings

import torch

from rfbench.errors import UserError


def load_weights_only(path: str | os.PathLike, what: str, remedy: str = "") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing, unsafe or corrupt file
    is one UserError naming it as ``what`` and ending with ``remedy``."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of old files
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for unsafe or corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load {what} {path} safely (weights_only=True): {first[:200]}{remedy}"
        ) from None


def load_dict(path: str | os.PathLike, what: str, fmt: str, remedy: str = "") -> dict:
    """The dict in ``path`` whose "format" is ``fmt``; ``what`` names the file in messages
    ("checkpoint", "cached classifier", ...) and ``remedy`` ends them ("; delete it")."""
    payload = load_weights_only(path, what, remedy)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise UserError(f"{path} is not an rfbench {what} (format {fmt}){remedy}")
    return payload
