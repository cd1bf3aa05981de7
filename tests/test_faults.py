"""Faults during a grid: a run killed with SIGKILL resumes to exactly the rows of an
uninterrupted run, and two runs never write the same directory at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rfbench.cli import main
from rfbench.results import CELL_KEY

# rk45 integrating each of 200 samples on its own takes about a second per cell here: slow
# enough to kill the run between cells and in the middle of one.
GRID = [
    "run",
    "--dataset",
    "toy2d",
    "--epochs",
    "2",
    "--num-samples",
    "200",
    "--batch-size",
    "50",
    "--solvers",
    "euler,rk45",
    "--steps",
    "1,2",
    "--tols",
    "1e-2,1e-3,1e-4,1e-5",
    "--stepping",
    "per-sample",
]
TIMING = ["wall_time_s", "model_time_s", "overhead_time_s", "record_time_s", "images_per_s"]
CELLS = 6


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rfbench", *GRID, "--out", str(out), "--resume"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(out: Path) -> int:
    try:
        return len(pd.read_csv(out / "results.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _wait_for_rows(proc: subprocess.Popen, out: Path, rows: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _rows(out) < rows:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {rows} rows: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {rows} rows within {timeout} s")
        time.sleep(0.02)


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=TIMING).sort_values(list(CELL_KEY)).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("faults") / "whole"
    assert main([*GRID, "--out", str(out)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == CELLS and (frame["status"] == "ok").all()
    return frame


def test_sigkill_between_and_during_cells_loses_nothing(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    kills = 0
    for rows in (3, 4):  # each kill lands in the middle of an rk45 cell
        proc = _start(out)
        _wait_for_rows(proc, out, rows)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        frame = pd.read_csv(out / "results.csv")  # never corrupt
        assert rows <= len(frame) < CELLS
        assert not frame.duplicated(list(CELL_KEY)).any()
    proc = _start(out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    final = pd.read_csv(out / "results.csv")
    assert kills == 2 and len(final) == CELLS
    pd.testing.assert_frame_equal(_comparable(final), _comparable(uninterrupted))
    assert not list(out.rglob("*.tmp"))  # a killed writer's are removed on resume


def test_second_run_on_a_busy_directory_stops(tmp_path, capsys):
    out = tmp_path / "busy"
    proc = _start(out)
    try:
        _wait_for_rows(proc, out, 1)
        before = (out / "results.csv").read_bytes()
        code = main([*GRID, "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by a running rfbench (pid" in err
        assert len(err.strip().splitlines()) == 1
        assert (out / "results.csv").read_bytes()[: len(before)] == before  # nothing lost
    finally:
        proc.kill()
        proc.wait()
    # The lock dies with its process: the run resumes.
    assert main([*GRID, "--out", str(out), "--resume"]) == 0
    assert _rows(out) == CELLS


def test_lock_is_released_after_a_refused_start(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*GRID[:-4], "--steps", "1", "--solvers", "euler", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2  # exists: refused, and the lock it took is given back
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert os.path.exists(out / ".lock")


def test_out_of_memory_halves_the_batch_and_says_so():
    from dataclasses import replace

    import torch
    from torch import nn

    from rfbench import candidates, runner
    from rfbench.config import RunConfig
    from rfbench.data import load_split
    from rfbench.metrics.quality import build_quality
    from rfbench.solvers import Setting
    from rfbench.train import train

    data = load_split("toy2d")
    trained = train(candidates.model_spec("toy2d", "quick", data, 0, 1), data, progress=False)

    class FitsFifty(nn.Module):  # a GPU that holds 50 samples at a time
        def __init__(self):
            super().__init__()
            self.net = trained.model

        def forward(self, x, t):
            if len(x) > 50:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.net(x, t)

    cpu = torch.device("cpu")
    quality = build_quality("toy2d", data, data, (), cpu, 200)
    cfg = RunConfig(dataset="toy2d", solvers=("euler",))
    cell = runner.Cell(Setting("euler", steps=4), seed=0)
    fits_fifty = candidates.Candidate.of(replace(trained, model=FitsFifty()))
    row = runner.run_cell(cell, fits_fifty, runner.GridContext(cfg, quality, 200, 200, cpu, False))
    assert row["status"] == "ok" and row["batch_size"] == 50 and row["oom_retries"] == 2
    direct = runner.run_cell(
        cell,
        candidates.Candidate.of(trained),
        runner.GridContext(cfg, quality, 200, 50, cpu, False),
    )
    assert row["swd"] == direct["swd"] and row["nfe_per_batch"] == "4;4;4;4"


def test_sigkill_during_training_loses_at_most_the_epoch_in_flight(tmp_path):
    from rfbench.train import load_model, read_checkpoint

    argv = ["train", "--dataset", "toy2d", "--epochs", "4"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rfbench", *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # the first epoch is written: kill during a later one
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = read_checkpoint(ckpt)["epoch"]  # never a half-written file
    assert 1 <= done < 4
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    whole, resumed = load_model(tmp_path / "whole" / "checkpoint.pt"), load_model(ckpt)
    assert resumed.model_id == whole.model_id and resumed.losses == whole.losses


def test_sigterm_during_training_in_a_run_leaves_no_half_run(tmp_path):
    """SIGTERM (a timeout, a cancelled CI job) cleans up as Ctrl-C does: a run stopped
    before its first cell leaves no directory that the same command would refuse."""
    out = tmp_path / "run"
    argv = ["run", "--dataset", "toy2d", "--epochs", "400", "--solvers", "euler"]
    argv += ["--steps", "1", "--out", str(out)]
    env = {**os.environ, "RFBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rfbench", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():  # the run has started: now it trains
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "terminated" in err, err[-2000:]
    assert not out.exists()
