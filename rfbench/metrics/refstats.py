"""Reference statistics: the mean and covariance of a reference set's features, in a file.

Papers publish FID references as ``.npz`` files of ``mu`` [d] and ``sigma`` [d, d]:
pytorch-fid's ``--save-stats``, clean-fid's ``np.savez_compressed(mu=, sigma=)`` and ADM's
reference batches, which add ``mu_s`` and ``sigma_s`` (spatial features) and often the
images themselves (``arr_0``). All of them are read here without unpickling anything.
(torch-fidelity computes the same mu and sigma but caches them as pickled torch
files, which are not read.) ``rfbench stats`` writes the same two keys and says, in
further keys, what they were computed from: the extractor, the dataset, its split, n and
the data's sha256.

Statistics hold no features, so against them only FID can be computed: KID and
precision/recall need the reference's feature rows.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfbench.atomic import atomic_write
from rfbench.errors import UserError

STATS_FORMAT = "rfbench-stats-v1"
STATS_ONLY_METRICS = ("fid",)  # the metrics that mu and sigma alone give


@dataclass(frozen=True)
class ReferenceStats:
    """FID statistics of a reference set and where they came from."""

    mu: np.ndarray  # [d], float64
    sigma: np.ndarray  # [d, d], float64
    sha256: str  # of the file they were read from ("" when computed here)
    layout: str  # which writer's key layout the file follows
    meta: dict = field(default_factory=dict)  # rfbench's own keys: extractor, dataset, ...

    @property
    def dim(self) -> int:
        return len(self.mu)

    @property
    def label(self) -> str:
        """The ``reference`` column of rows computed against these statistics."""
        return f"stats-{self.sha256}"

    def as_fidelity(self) -> dict:
        """What torch-fidelity's ``fid_statistics_to_metric`` takes."""
        return {"mu": self.mu, "sigma": self.sigma}


def statistics_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (n - 1 normalised, as every FID implementation) in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def read_stats(path: str | Path) -> ReferenceStats:
    """Read ``mu`` and ``sigma`` from a statistics file of any of the known layouts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--reference-stats {path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise UserError(
                    f"--reference-stats {path} is a single array, not an .npz of mu and sigma"
                )
            keys = set(npz.files)
            if not {"mu", "sigma"} <= keys:
                raise UserError(
                    f"--reference-stats {path} holds {', '.join(sorted(keys)) or 'nothing'}, "
                    "not mu and sigma"
                )
            mu, sigma = npz["mu"], npz["sigma"]
            meta = {
                k: npz[k].item()
                for k in ("format", "feature_extractor", "dataset", "split", "n", "data_sha256")
                if k in keys and npz[k].ndim == 0
            }
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"--reference-stats {path} is not a readable .npz: {e}") from None
    if meta.get("format") == STATS_FORMAT:
        layout = "rfbench"
    elif "mu_s" in keys:
        layout = "adm"
    else:
        layout = "mu-sigma"  # pytorch-fid, clean-fid, torch-fidelity, TTUR
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(
            f"--reference-stats {path}: mu has shape {list(mu.shape)} and sigma "
            f"{list(sigma.shape)}; they must be [d] and [d, d]"
        )
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise UserError(f"--reference-stats {path}: mu and sigma must be floating point")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"--reference-stats {path}: mu or sigma holds NaN or Inf")
    _check_covariance(sigma, path)
    return ReferenceStats(mu, sigma, digest.hexdigest(), layout, meta)


def _check_covariance(sigma: np.ndarray, path) -> None:
    """A covariance is symmetric and positive semi-definite (to round-off)."""
    big = max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > 1e-6 * big:
        raise UserError(f"--reference-stats {path}: sigma is not symmetric, so not a covariance")
    if np.linalg.eigvalsh(sigma).min() < -1e-6 * big:
        raise UserError(
            f"--reference-stats {path}: sigma has a negative eigenvalue, so not a covariance"
        )


def check_compatible(stats: ReferenceStats, extractor_label: str, dim: int, where: str) -> None:
    """Refuse statistics that the run's features cannot be compared with: another feature
    dimension, or (for rfbench's own files) another extractor."""
    if stats.dim != dim:
        raise UserError(
            f"{where} holds {stats.dim}-dimensional statistics, but the {extractor_label} "
            f"features are {dim}-dimensional"
        )
    recorded = stats.meta.get("feature_extractor")
    if recorded is not None and recorded != extractor_label:
        raise UserError(
            f"{where} was computed with {recorded}, not {extractor_label}: their FIDs do not "
            "compare"
        )


def write_stats(
    path: str | Path,
    features: np.ndarray,
    *,
    feature_extractor: str,
    dataset: str,
    split: str,
    data_sha256: str,
) -> ReferenceStats:
    """Write the statistics of ``features`` [n, d] as ``mu`` and ``sigma`` (float64, the
    keys every FID tool reads) with what they were computed from; atomically."""
    mu, sigma = statistics_of(features)
    meta = {
        "format": STATS_FORMAT,
        "feature_extractor": feature_extractor,
        "dataset": dataset,
        "split": split,
        "n": int(len(features)),
        "data_sha256": data_sha256,
    }
    arrays = {k: np.asarray(v) for k, v in meta.items()}
    atomic_write(Path(path), lambda f: np.savez(f, mu=mu, sigma=sigma, **arrays))
    return read_stats(path)
