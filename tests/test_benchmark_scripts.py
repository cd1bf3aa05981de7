"""The scripts in benchmarks/ run on the CPU at small sizes, so they are known to work
before their real runs (and before a GPU is lent)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_on_cpu(tmp_path):
    assert _load("gpu_check").main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## 1. Quick run on toy2d", "## 2. Time per NFE", "## 3. scipy RK45",
                    "## 4. Reflow: 256 dopri5"):  # fmt: skip
        assert heading in report
    assert "| rk45 |" in report and "| dopri5 |" in report
    assert "Wall-time ratio rk45 / dopri5" in report
    assert "-2rf-" in report  # the 2-RF's rows


def test_solver_overhead_small(tmp_path):
    out = tmp_path / "overhead.md"
    argv = ["--dataset", "toy2d", "--epochs", "1", "--batch", "16", "--repeats", "1"]
    assert _load("solver_overhead").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    for solver in ("euler", "rk4", "rk45", "lsoda", "dopri5", "adaptive_heun"):
        assert f"| {solver} " in text
    assert "radau, bdf" in text and "wall-time ratio rk45 / dopri5" in text


@pytest.mark.parametrize("solver", ["rk45", "dopri5"])
def test_stepping_modes_small(tmp_path, solver):
    out = tmp_path / "stepping.md"
    argv = ["--datasets", "toy2d", "--solvers", solver, "--n", "8", "--epochs", "1"]
    assert _load("stepping_modes").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"| {solver} " in text and "nfe_per_sample_std" in text


def test_solve_memory_small(tmp_path):
    out = tmp_path / "memory.md"
    argv = ["--batch", "8", "--steps", "4", "--out", str(out)]
    assert _load("solve_memory").main(argv) == 0
    text = out.read_text()
    for variant in ("baseline", "bare", "stats", "trajectory"):
        assert f"| {variant} |" in text
    assert "Target: stats peak within 1.5x of bare" in text


def test_metrics_sanity_small(tmp_path, mnist_root, monkeypatch):
    roots = tmp_path / "roots"  # the script reads the dataset by name: $RFBENCH_DATA_ROOT/mnist
    roots.mkdir()
    (roots / "mnist").symlink_to(mnist_root)
    monkeypatch.setenv("RFBENCH_DATA_ROOT", str(roots))
    out = tmp_path / "sanity.md"
    argv = ["--dataset", "mnist", "--sizes", "50,100", "--epochs", "1", "--solver-steps", "2"]
    assert _load("metrics_sanity").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## 2. FID as the test images are disturbed" in text and "| blur " in text
    assert (tmp_path / "sanity.png").stat().st_size > 0


def test_feature_memory_small(tmp_path, mnist_root, monkeypatch):
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "mnist").symlink_to(mnist_root)
    monkeypatch.setenv("RFBENCH_DATA_ROOT", str(roots))
    out = tmp_path / "features.md"
    argv = ["--dataset", "mnist", "--sizes", "100,300", "--repeats", "1", "--out", str(out)]
    assert _load("feature_memory").main(argv) == 0
    text = out.read_text()
    assert re.search(r"\|\s+100 \| stream", text) and re.search(r"\|\s+300 \| hold", text)
    assert "FID equal: True" in text  # streamed and held samples give the same FID


def test_reflow_study_small(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--dataset", "toy2d", "--out", str(out), "--work", str(work), "--train-epochs", "2",
            "--pairs", "600", "--pair-solver", "euler", "--pair-steps", "4",
            "--reflow-epochs", "1", "--num-samples", "200", "--seeds", "0"]  # fmt: skip
    assert _load("reflow_study").main(argv) == 0
    text = (out / "README.md").read_text()
    assert "| 1-RF " in text and "| 2-RF " in text and "| 2-RF distilled (1 step) " in text
    assert "rfbench reflow --checkpoint" in text and "ratio" in text
    assert (out / "run" / "figures" / "trajectories.pdf").stat().st_size > 0
    assert (out / "pivot-swd.md").exists() and (out / "pivot-straightness.md").exists()
    # Rerunning skips every step that is done.
    assert _load("reflow_study").main(argv) == 0


def test_train_step_small(tmp_path):
    out = tmp_path / "train-step.md"
    assert _load("train_step").main(["--steps", "2", "--warmup", "1", "--batch", "8",
                                     "--out", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert "| rfbench train_step |" in text and "| bare loop |" in text
    assert re.search(r"Throughput ratio rfbench / bare: \d+\.\d{3}", text)
