"""Result records -> DataFrame, and the run directory that holds them.

A run directory holds config.json, env.json, results.csv (and results.parquet where
pyarrow is present), table.md, figures/ and run.log. Rows are written as each cell
finishes, atomically (write a temporary file, then rename), so ``--resume`` can skip the
cells already done and a crash never leaves a corrupt results.csv.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rfbench.errors import UserError

# The schema: every row has these columns, in this order (DESIGN.md, "Results schema").
COLUMNS: tuple[str, ...] = (
    "dataset",
    "model_id",
    "solver",
    "family",
    "steps",
    "rtol",
    "atol",
    "nfe",
    "nfe_per_batch",
    "batch_size",
    "n_samples",
    "seed",
    "wall_time_s",
    "model_time_s",
    "overhead_time_s",
    "images_per_s",
    "fid",
    "kid_mean",
    "kid_std",
    "feature_extractor",
    "reference",
    "straightness",
    "device",
    "status",
    "error",
)
# Further columns rfbench fills where they apply.
EXTRA_COLUMNS: tuple[str, ...] = (
    "grid",
    "stepping",
    "nfe_std",
    "curvature",
    "nfe_total",
    "solver_nfe",
    "precision",
    "recall",
    "isc_mean",
    "isc_std",
    "swd",
    "energy_distance",
    "inversion_rmse",
    "inversion_nfe",
    "oom_retries",
    "world_size",
    "compute_dtype",
    "channels_last",
    "compiled",
    "time_convention",
)
# The columns that identify a cell; a resumed run skips rows whose key is done.
CELL_KEY: tuple[str, ...] = (
    "model_id", "solver", "steps", "grid", "rtol", "atol", "stepping", "seed",
)  # fmt: skip

# Config keys that may differ between a run and its resumption.
_RESUMABLE = frozenset({"resume", "out"})

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def records_to_frame(records: list[dict]) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with every schema column; missing values stay empty (NaN)."""
    frame = pd.DataFrame.from_records(records)
    extra = [c for c in EXTRA_COLUMNS if c in frame.columns]
    others = [c for c in frame.columns if c not in COLUMNS and c not in EXTRA_COLUMNS]
    return frame.reindex(columns=[*COLUMNS, *extra, *others])


def cell_key(row: dict) -> tuple:
    """The identity of a cell, normalised so that values read back from CSV compare equal."""

    def norm(v):
        if v is None or (isinstance(v, float) and v != v):
            return None
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        return v

    return tuple(norm(row.get(k)) for k in CELL_KEY)


def cell_id(row: dict) -> str:
    """A file-name-safe name of a cell, unique within a run: the name of its saved samples
    (``samples/<cell_id>.npz``) and toy2d trajectories (``trajectories/<cell_id>.npz``)."""
    model, solver, steps, grid, rtol, atol, stepping, seed = cell_key(row)
    if steps is not None:
        setting = f"steps{steps}-{grid or 'uniform'}"
    else:
        setting = f"rtol{rtol:g}-atol{rtol if atol is None else atol:g}-{stepping or 'batched'}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{model}--{solver}-{setting}-seed{seed}")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """The files of one run; rows are appended cell by cell."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.results_csv = self.path / "results.csv"
        self.figures = self.path / "figures"
        self.log_path = self.path / "run.log"

    def create(self, config: dict, resume: bool) -> list[dict]:
        """Make the directory and lock it; return the rows already done (``resume``); never
        overwrite. The lock (``flock`` on ``.lock``) is held until ``close()`` or the
        process ends, however it ends, so a second run on the same directory stops."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to output directory {self.path}: {e.strerror}") from None
        self._lock()
        try:
            return self._start(config, resume)
        except BaseException:
            self.close()
            raise

    def _start(self, config: dict, resume: bool) -> list[dict]:
        config_path = self.path / "config.json"
        if self.results_csv.exists() or config_path.exists():
            if not resume:
                raise UserError(
                    f"{self.path} already holds a run; pass --resume to continue it, or choose "
                    "another --out"
                )
            if config_path.exists():
                old = json.loads(config_path.read_text())
                new = json.loads(json.dumps(config))
                mismatch = sorted(k for k in new if k not in _RESUMABLE and old.get(k) != new[k])
                if mismatch:
                    raise UserError(
                        f"cannot resume {self.path}: its config differs in {', '.join(mismatch)}"
                    )
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        atomic_write_text(self.path / "env.json", json.dumps(environment(), indent=2) + "\n")
        return self.read_rows() if resume else []

    def _lock(self) -> None:
        import fcntl

        lock = open(self.path / ".lock", "a+")  # noqa: SIM115 - held open until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(
                f"{self.path} is in use by a running rfbench ({holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock_file = lock

    def close(self) -> None:
        """Release the directory's lock."""
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            lock.close()
            self._lock_file = None

    def read_rows(self) -> list[dict]:
        if not self.results_csv.exists():
            return []
        frame = pd.read_csv(self.results_csv, keep_default_na=True)
        return [
            {k: v for k, v in r.items() if not (isinstance(v, float) and v != v)}
            for r in frame.to_dict("records")
        ]

    def write_rows(self, rows: list[dict]) -> pd.DataFrame:
        """Rewrite results.csv (and .parquet) with all rows so far, atomically."""
        frame = records_to_frame(rows)
        atomic_write_text(self.results_csv, frame.to_csv(index=False))
        try:
            import pyarrow  # noqa: F401

            tmp = self.path / "results.parquet.tmp"
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, self.path / "results.parquet")
        except ImportError:
            pass
        return frame

    def save_arrays(self, kind: str, row: dict, **arrays) -> Path:
        """Write ``<kind>/<cell_id>.npz`` atomically: a cell's saved samples or trajectories."""
        path = self.path / kind / f"{cell_id(row)}.npz"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
        return path


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    """Whether rfbench's source differs from its commit (None outside a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if status is None else bool(status)


def environment() -> dict:
    """Facts of this machine and software, written once per run as env.json."""
    versions = {}
    for pkg in (
        "rfbench",
        "torch",
        "torchvision",
        "torch-fidelity",
        "torchdiffeq",
        "scipy",
        "numpy",
        "pandas",
        "matplotlib",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "packages": versions,
    }
