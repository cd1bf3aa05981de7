"""The standard Inception-v3 feature extractor (torch-fidelity's port of the TF-FID weights).

Its weights file cannot be fetched offline. rfbench looks for it where it is told
(``--inception-weights PATH``), else where torch-fidelity's download puts it (torch hub's
``checkpoints/``), checks its sha256 against the prefix in its name, and otherwise stops
with one message saying how to provide it. It never falls back to another extractor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rfbench.errors import UserError
from rfbench.metrics.fidelity import Extractor

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # the file name carries its sha256 prefix
INCEPTION_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's registered name
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)


def default_inception_path() -> Path:
    """Where torch-fidelity's own download caches the file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inception_extractor(weights: str | None = None) -> Extractor:
    """The Inception extractor with verified weights, or a UserError naming how to get them."""
    path = Path(weights) if weights else default_inception_path()
    if not path.is_file():
        raise UserError(
            f"the Inception feature extractor needs {INCEPTION_FILE}, not found at {path}. "
            f"It cannot be downloaded offline: fetch {INCEPTION_URL} on a machine that is "
            f"online, then pass --inception-weights PATH or copy it to {default_inception_path()}; "
            "or use --feature-extractor classifier for an offline metric (not comparable with "
            "papers)"
        )
    digest = sha256_of(path)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise UserError(
            f"{path} is not {INCEPTION_FILE}: its sha256 starts {digest[:8]}, "
            f"not {INCEPTION_SHA256_PREFIX}"
        )
    return Extractor(
        INCEPTION_EXTRACTOR, f"inception-{digest[:8]}", str(path), rgb=True, batch_size=64
    )
