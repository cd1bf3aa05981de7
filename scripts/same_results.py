"""A restructuring must not change what rfbench measures: run one toy2d grid and compare
its results.csv with another's, every column but the times.

    python scripts/same_results.py run OUT_DIR          # the grid, with a fresh cache
    python scripts/same_results.py compare A B          # exit 1 where they differ

The grid covers every code path a cell can take on toy2d: fixed-step solvers on two time
grids, scipy and torchdiffeq adaptive solvers with batched and per-sample stepping, two
seeds, several batches per cell, and the inversion metric.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pandas as pd

GRID = [
    "run",
    "--dataset",
    "toy2d",
    "--epochs",
    "2",
    "--num-samples",
    "300",
    "--batch-size",
    "100",
    "--solvers",
    "euler,heun,rk4,rk45,dopri5",
    "--steps",
    "1,4",
    "--grids",
    "uniform,cosine",
    "--tols",
    "1e-3",
    "--stepping",
    "batched,per-sample",
    "--seeds",
    "0,1",
    "--metrics",
    "inversion",
    "--device",
    "cpu",
]
TIMES = ["wall_time_s", "model_time_s", "overhead_time_s", "record_time_s", "images_per_s"]


def run(out: str) -> int:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "RFBENCH_CACHE": cache}
        return subprocess.run(
            [sys.executable, "-m", "rfbench", *GRID, "--out", out], env=env
        ).returncode


def compare(a: str, b: str) -> int:
    frames = [pd.read_csv(f"{d}/results.csv").drop(columns=TIMES, errors="ignore") for d in (a, b)]
    if list(frames[0].columns) != list(frames[1].columns):
        print(f"columns differ:\n  {list(frames[0].columns)}\n  {list(frames[1].columns)}")
        return 1
    diff = frames[0].compare(frames[1])
    rows, cols = frames[0].shape
    if diff.empty:
        print(f"same: {rows} rows x {cols} columns (times excluded: {', '.join(TIMES)})")
        return 0
    print(f"DIFFERENT in {len(diff)} of {rows} rows:\n{diff.to_string()}")
    return 1


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    sys.exit({"run": run, "compare": compare}[command](*rest))
