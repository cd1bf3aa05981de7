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
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rfbench.atomic import atomic_write, atomic_write_text, ensure_writable_dir
from rfbench.errors import UserError
from rfbench.solvers import KEY_COLUMNS, Setting

# The schema: every row has these columns, in this order (docs/design.md, "Results").
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
    "grid_times",
    "t_start",
    "t_end",
    "stepping",
    "per_sample_impl",
    "nfe_std",
    "curvature",
    "nfe_total",
    "record_time_s",
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
# The type of every column rfbench writes. The schema, not pandas' guess from the values,
# decides how a column is held and read back: a column of single-batch counts ("86") is
# text, whatever it looks like, so results.parquet never meets two types in one column.
_TEXT, _FLOAT, _INT, _BOOL = "string", "float64", "Int64", "boolean"
COLUMN_TYPES: dict[str, str] = {
    **dict.fromkeys(
        (
            "dataset",
            "model_id",
            "solver",
            "family",
            "nfe_per_batch",
            "feature_extractor",
            "reference",
            "device",
            "status",
            "error",
            "grid",
            "grid_times",
            "stepping",
            "per_sample_impl",
            "solver_nfe",
            "compute_dtype",
            "time_convention",
            "run",
        ),
        _TEXT,
    ),
    **dict.fromkeys(
        ("steps", "batch_size", "n_samples", "seed", "nfe_total", "oom_retries", "world_size"), _INT
    ),
    **dict.fromkeys(("channels_last", "compiled"), _BOOL),
}
_KNOWN = frozenset({*COLUMNS, *EXTRA_COLUMNS, *COLUMN_TYPES})
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def column_type(column: str) -> str:
    """The schema type of a column: text, Int64, boolean, or float64 for every metric."""
    return COLUMN_TYPES.get(column, _FLOAT)


def _typed_column(values: pd.Series, kind: str) -> pd.Series:
    """``values`` as ``kind``; a ValueError names the first value that is not one."""
    present = values.notna()
    if kind == _TEXT:
        return values.astype("string")
    if kind == _BOOL:
        words = values[present].map(lambda v: _BOOLS.get(str(v).strip().lower()))
        bad = words.isna()
        if bad.any():
            raise ValueError(f"{values[present][bad].iloc[0]!r} is not true or false")
        return words.reindex(values.index).astype("boolean")
    if kind == _INT:  # exactly: a float64 detour would round seeds beyond 2**53
        return pd.Series([_integer(v) for v in values], index=values.index, dtype="Int64")
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = present & numbers.isna()
    if bad.any():
        raise ValueError(f"{values[bad].iloc[0]!r} is not a number")
    return numbers


def _integer(v) -> int | None:
    """One value of an integer column, exactly; None where it is empty."""
    if _missing(v):
        return None
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not an integer")
    if isinstance(v, int | np.integer):
        n = int(v)
    elif isinstance(v, float | np.floating):
        if not float(v).is_integer():
            raise ValueError(f"{v!r} is not an integer")
        n = int(v)
    else:
        text = str(v).strip()
        try:
            n = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise ValueError(f"{v!r} is not an integer") from None
            if not f.is_integer():
                raise ValueError(f"{v!r} is not an integer") from None
            n = int(f)
    if not -(2**63) <= n < 2**63:
        raise ValueError(f"{v!r} is out of the 64-bit range")
    return n


def typed(frame: pd.DataFrame, source: str = "results") -> pd.DataFrame:
    """Every column of ``frame`` as the schema types it (unknown columns: float when they
    hold numbers only, else text). A value of the wrong type is a UserError naming the
    column and ``source``."""
    out = frame.copy()
    for column in out.columns:
        kind = column_type(column) if column in _KNOWN else None
        if kind is None:  # a column rfbench does not know: numbers, or text
            numeric = pd.to_numeric(out[column], errors="coerce")
            kind = _FLOAT if (numeric.notna() == out[column].notna()).all() else _TEXT
        try:
            out[column] = _typed_column(out[column], kind)
        except ValueError as e:
            raise UserError(f"{source}: column {column}: {e}") from None
    return out


def read_results_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A results.csv as a frame typed by the schema; a file that is not one is a UserError."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    return typed(frame, str(path))


# The columns that identify a cell; a resumed run skips rows whose key is done.
CELL_KEY: tuple[str, ...] = ("model_id", *KEY_COLUMNS, "seed")
# Key columns that came after results files existed: a file without them holds the
# Setting's defaults (no custom times, the interval 0 to 1), which reading fills in.
LATER_KEY_COLUMNS: tuple[str, ...] = ("grid_times", "t_start", "t_end")

# Config keys that may differ between a run and its resumption.
_RESUMABLE = frozenset({"resume", "out", "keep_failed", "measurement_version"})
# What the numbers of a row mean. A run measured under another version cannot be resumed:
# its rows and the new ones would not mean the same. 2: DOP853 without dense-output calls,
# wall and overhead time without rfbench's recording, reflow pairs on their own noise.
MEASUREMENT_VERSION = 2

STATUS_OK = "ok"
STATUS_FAILED = "failed"
ALL_SAMPLES = "all-samples"  # --save-samples: every sample of each cell, <cell_id>.npz or /


def records_to_frame(records: list[dict]) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with every schema column, typed by the schema; missing
    values stay empty (NA)."""
    frame = pd.DataFrame.from_records(records)
    extra = [c for c in EXTRA_COLUMNS if c in frame.columns]
    others = [c for c in frame.columns if c not in COLUMNS and c not in EXTRA_COLUMNS]
    return typed(frame.reindex(columns=[*COLUMNS, *extra, *others]))


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def cell_key(row: dict) -> tuple:
    """The identity of a cell: its model, its setting's key (``Setting.key``) and its seed,
    the same whether the row is new or read back from CSV."""
    seed = row.get("seed")
    seed = None if _missing(seed) else int(seed)
    if _missing(row.get("steps")) and _missing(row.get("rtol")):  # samples scored by eval
        return (row.get("model_id"), row.get("solver"), None, None, None, None, None, seed)
    return (row.get("model_id"), *Setting.from_row(row).key(), seed)


def cell_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's ``cell_key``, on the frame's index (``.duplicated()`` finds repeats)."""
    return pd.Series(
        [cell_key(r) for r in frame.to_dict("records")], index=frame.index, dtype=object
    )


def cell_ids(frame: pd.DataFrame) -> pd.Series:
    """:func:`cell_id` of every row of a results frame."""
    return frame.apply(lambda r: cell_id(r.to_dict()), axis=1)


def cell_id(row: dict) -> str:
    """A file-name-safe name of a cell, unique within a run: the name of its saved samples
    (``samples/<cell_id>.npz``) and toy2d trajectories (``trajectories/<cell_id>.npz``)."""
    setting = Setting.from_row(row)
    name = f"{row.get('model_id')}--{setting.solver}-{setting.slug()}-seed{int(row['seed'])}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


class RunDir:
    """The files of one run; rows are appended cell by cell."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.results_csv = self.path / "results.csv"
        self.figures = self.path / "figures"
        self.log_path = self.path / "run.log"

    def create(self, config: dict, resume: bool, argv: list[str] | None = None) -> list[dict]:
        """Make the directory and lock it; return the rows already done (``resume``); never
        overwrite. The lock (``flock`` on ``.lock``) is held until ``close()`` or the
        process ends, however it ends, so a second run on the same directory stops.

        Everything that can be checked (an existing run, its config and results) is checked
        before anything is written. ``argv`` is the command line recorded in env.json (by
        default this process's)."""
        config = {**config, "measurement_version": MEASUREMENT_VERSION}
        self._made = not self.path.exists()
        ensure_writable_dir(self.path, "output directory")
        self._lock()
        try:
            return self._start(config, resume, sys.argv[1:] if argv is None else argv)
        except BaseException:  # stopped half-way (an error, Ctrl-C, SIGTERM): undo a fresh run
            if getattr(self, "fresh", False):
                self.discard()
            self.close()
            raise

    def _start(self, config: dict, resume: bool, argv: list[str]) -> list[dict]:
        config_path = self.path / "config.json"
        existing = self.results_csv.exists() or config_path.exists()
        if existing:
            if not resume:
                raise UserError(
                    f"{self.path} already holds a run; pass --resume to continue it, or choose "
                    "another --out"
                )
            if config_path.exists():
                old = _read_json(config_path, "its config.json")
                new = json.loads(json.dumps(config))
                if not isinstance(old, dict):
                    raise UserError(f"cannot resume {self.path}: its config.json is not a config")
                version = old.get("measurement_version", 1)
                if version != MEASUREMENT_VERSION:
                    raise UserError(
                        f"cannot resume {self.path}: it was measured by another rfbench "
                        f"(measurement version {version}, this one {MEASUREMENT_VERSION}), "
                        "whose rows mean other things; start a new --out"
                    )
                defaults = _config_defaults()  # keys an older config.json lacks: their default
                mismatch = sorted(
                    k for k in new if k not in _RESUMABLE and old.get(k, defaults.get(k)) != new[k]
                )
                if mismatch:
                    raise UserError(
                        f"cannot resume {self.path}: its config differs in {', '.join(mismatch)}"
                    )
        rows = self.read_rows() if resume else []
        invocations = self._invocations()
        folders = ("", "samples", "trajectories", ALL_SAMPLES)
        for folder in folders:
            for stale in (self.path / folder).glob(".*.tmp"):  # a killed writer's; the lock
                if stale.is_dir():  # is ours
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        self.fresh = not existing  # this invocation made the run: discard() may undo it
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        entry = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": list(argv),
            "resume": resume,
            "rows_done": len(rows),
            **environment(),
        }
        text = json.dumps({"invocations": [*invocations, entry]}, indent=2)
        atomic_write_text(self.path / "env.json", text + "\n")
        return rows

    def _invocations(self) -> list[dict]:
        """The env.json entries of the earlier invocations of this run (one per invocation;
        a run written before invocations were kept has its one environment as the first)."""
        path = self.path / "env.json"
        if not path.exists():
            return []
        env = _read_json(path, "its env.json")
        if isinstance(env, dict) and isinstance(env.get("invocations"), list):
            return env["invocations"]
        return [env]

    def discard(self) -> None:
        """Undo a run that this invocation created and that finished no cell: remove what
        it wrote (and the directory, if it made it and nothing else is in it), so that the
        same command can be run again without --resume. Anything else stays."""
        if not getattr(self, "fresh", False) or self.results_csv.exists():
            return
        self.close()
        for name in ("config.json", "env.json", "run.log", ".lock"):
            (self.path / name).unlink(missing_ok=True)
        for kind in ("samples", "trajectories", ALL_SAMPLES):
            folder = self.path / kind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if self._made and not any(self.path.iterdir()):
            self.path.rmdir()

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
        frame = read_results_csv(self.results_csv)
        missing = [c for c in CELL_KEY if c not in frame.columns and c not in LATER_KEY_COLUMNS]
        if missing:
            raise UserError(
                f"{self.results_csv} is not an rfbench results file (no {', '.join(missing)}); "
                "move it away, or choose another --out"
            )
        return [
            {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in r.items()
                if not _missing(v)
            }
            for r in frame.astype(object).to_dict("records")
        ]

    def write_rows(self, rows: list[dict]) -> pd.DataFrame:
        """Rewrite results.csv (and .parquet) with all rows so far, atomically."""
        frame = records_to_frame(rows)
        atomic_write_text(self.results_csv, frame.to_csv(index=False))
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return frame
        atomic_write(self.path / "results.parquet", lambda f: frame.to_parquet(f, index=False))
        return frame

    def save_arrays(self, kind: str, row: dict, **arrays) -> Path:
        """Write ``<kind>/<cell_id>.npz`` atomically: a cell's saved samples or trajectories."""
        path = self.path / kind / f"{cell_id(row)}.npz"
        path.parent.mkdir(exist_ok=True)
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _config_defaults() -> dict:
    """Every RunConfig field's default, as config.json holds it (lists for tuples)."""
    import dataclasses

    from rfbench.config import RunConfig

    return {
        f.name: json.loads(json.dumps(f.default))
        for f in dataclasses.fields(RunConfig)
        if f.default is not dataclasses.MISSING
    }


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"cannot resume {path.parent}: {what} is not readable JSON ({e}); move it away, "
            "or choose another --out"
        ) from None


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


def read_run(path: str | os.PathLike) -> pd.DataFrame:
    """One run's results (a run directory, or its results.csv) as a DataFrame typed by the
    schema: one row per cell.

    >>> read_run("results/quickstart-fashion")["solver"].unique().tolist()
    ['euler', 'rk45']
    """
    return read_runs([path])


def read_runs(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The results of several runs (run directories, or results.csv files) as one frame.

    A cell (model, solver, setting, seed) that succeeded in more than one run is never
    pooled: the frame then gets a ``run`` column (each run directory's name), which every
    view keys on. Without such repeats there is no ``run`` column.

    >>> read_runs(["results/quickstart-fashion"])["solver"].unique().tolist()
    ['euler', 'rk45']
    """
    if not paths:
        raise UserError("no run directory given")
    frames, names, seen = [], [], set()
    for given in paths:
        path = Path(given)
        csv = path / "results.csv" if path.is_dir() else path
        if not csv.is_file():
            raise UserError(f"{given} holds no results.csv: not a run directory")
        if csv.resolve() in seen:
            raise UserError(f"{given} is given twice")
        seen.add(csv.resolve())
        frame = read_results_csv(csv)
        missing = [c for c in ("model_id", "solver", "seed", "nfe", "status") if c not in frame]
        if missing:
            raise UserError(f"{csv} is not an rfbench results.csv: no {', '.join(missing)}")
        frames.append(frame)
        names.append(csv.resolve().parent.name)
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    runs = [f.assign(run=n) for f, n in zip(frames, names) if len(f)]  # empty: no dtypes
    merged = typed(pd.concat(runs or [frames[0].assign(run=names[0])], ignore_index=True))
    merged = merged.reindex(columns=[*COLUMNS, *(c for c in merged if c not in COLUMNS)])
    ok = merged[merged["status"] == STATUS_OK]
    if not cell_keys(ok).duplicated().any():
        merged = merged.drop(columns="run")
    return merged
