"""The scripts in benchmarks/ run on the CPU at small sizes, so they are known to work
before their real runs (and before a GPU is lent)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rfbench.cli import main

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:  # the scripts import benchmarks/targets.py
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets(text: str, count: int) -> list[dict]:
    """The report's target lines: there are ``count``, and each verdict (met or MISSED)
    follows from the number printed beside it."""
    found = _load("targets").read(text)
    assert len(found) == count, text
    for t in found:
        holds = t["value"] <= t["limit"] if t["op"] == "<=" else t["value"] >= t["limit"]
        assert t["met"] == holds, t
    return found


SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if "def main(argv" in p.read_text())


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_answers_help(name, capsys):
    """--help prints the usage and exits 0 (reflow_margins.py once read it as a seed)."""
    with pytest.raises(SystemExit) as stop:
        _load(name).main(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_script_list_is_whole():
    """Every Python script in benchmarks/ is in the parametrisation above (one whose main
    took no argv would drop out of it unseen)."""
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text()}
    assert len(scripts) > 10 and scripts == set(SCRIPTS)


def test_target_lines_say_what_the_numbers_say():
    targets = _load("targets")
    assert targets.target("x / y", 1.2, "<=", 1.5).endswith(": 1.2 (met)")
    assert targets.target("x / y", 1.6, "<=", 1.5).endswith(": 1.6 (MISSED)")
    assert targets.target("speed", 0.94, ">=", 0.95).endswith("(MISSED)")
    assert targets.target("speed", float("nan"), ">=", 0.95).endswith("(MISSED)")
    lines = "\n".join(targets.target("a", v, "<=", 1.0) for v in (0.5, 2.0))
    assert [t["met"] for t in targets.read(lines)] == [True, False]


GPU_CHECK_SECTIONS = (
    "## 1. Environment",
    "## 2. Training throughput",
    "## 3. FID run",
    "## 4. Sampling cost",
    "## 5. CUDA path options",
    "## 6. torchrun",
    "## 7. Reflow",
)


def _section(report: str, heading: str) -> str:
    """The body of the section whose heading starts with ``heading``."""
    return report.split(heading, 1)[1].split("\n", 1)[1].split("\n## ", 1)[0]


def test_gpu_check_smoke_on_cpu_but_torchrun(tmp_path):
    """Every step but torchrun (slow test below; test_distributed covers torchrun itself)
    runs at smoke sizes and reports."""
    gpu_check = _load("gpu_check")
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--skip", "torchrun"]
    _check_smoke_report(gpu_check, argv, tmp_path, torchrun=False)


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(tmp_path):
    """Every step runs at smoke sizes, the torchrun step included, and reports."""
    gpu_check = _load("gpu_check")
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path)]
    _check_smoke_report(gpu_check, argv, tmp_path, torchrun=True)


def test_gpu_check_refuses_an_unknown_skip(tmp_path, capsys):
    assert _load("gpu_check").main(["--smoke", "--out", str(tmp_path), "--skip", "nap"]) == 2
    assert "unknown --skip step(s): nap" in capsys.readouterr().err


def _check_smoke_report(gpu_check, argv, tmp_path, torchrun: bool) -> None:
    assert gpu_check.main(argv) == 0
    [path] = tmp_path.glob("*.md")
    report = path.read_text()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.md", path.name)
    assert "failed:" not in report
    assert report.count("skipped:") == (0 if torchrun else 1)
    for heading in GPU_CHECK_SECTIONS:
        assert heading in report
    training = _section(report, "## 2. Training throughput")
    for name in gpu_check.TRAINING_SETS:
        assert len(re.findall(rf"^\| {re.escape(name)} \| ", training, re.M)) == 1, name
    assert set(gpu_check.TRAINING_SETS) == set(gpu_check.PRESETS)  # a row for every preset
    assert "extrapolation from the measured steps" in training
    assert "| rk45 |" in report and "| dopri5 |" in report and "| rk4 |" in report
    assert "wall-time ratio rk45 / dopri5" in report
    assert re.search(
        r"^rk45-torch with per-sample stepping \(vectorised\): NFE per sample \d", report, re.M
    )
    options = _section(report, "## 5. CUDA path options")
    assert re.search(r"^\| bf16 \| fp32 \| False \| False \|", options, re.M)  # effective
    if torchrun:
        assert "Verdict: the 1- and 2-process results agree" in report
    else:
        assert _section(report, "## 6. torchrun").strip() == "skipped: --skip"
    assert "-2rf-" in _section(report, "## 7. Reflow")
    assert re.search(r"^Budget: \d+ s used of 480 s; per step: 1\. environment", report, re.M)
    assert (tmp_path / path.stem / "fid-run" / "results.csv").exists()


def test_gpu_check_skips_what_does_not_fit(tmp_path):
    """A 1 s budget: the environment is written, every later step says it was skipped."""
    assert (
        _load("gpu_check").main(
            ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "1"]
        )
        == 0
    )
    [path] = tmp_path.glob("*.md")
    report = path.read_text()
    assert "| torch |" in _section(report, "## 1. Environment")
    for heading in GPU_CHECK_SECTIONS[1:]:
        assert _section(report, heading).strip().startswith("skipped: "), heading
    assert "7. reflow skipped" in report


def test_gpu_check_reports_a_failed_step_and_goes_on(tmp_path, monkeypatch):
    gpu_check = _load("gpu_check")

    def broken(ck):
        raise RuntimeError("boom\nsecond line")

    steps = (gpu_check.STEPS[0], ("broken", "Broken", broken), gpu_check.STEPS[0])
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    assert gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 1
    report = next(tmp_path.glob("*.md")).read_text()
    assert "## 2. Broken\n\nfailed: RuntimeError: boom\n" in report
    assert "second line" not in report and "## 3. Environment" in report


def test_gpu_check_refuses_to_run_without_cuda(tmp_path, monkeypatch, capsys):
    gpu_check = _load("gpu_check")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA" in err and "--smoke" in err
    assert not (tmp_path / "gpu").exists()


def test_solver_overhead_small(tmp_path):
    out = tmp_path / "overhead.md"
    argv = ["--dataset", "toy2d", "--epochs", "1", "--batch", "16", "--repeats", "1"]
    assert _load("solver_overhead").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    for solver in ("euler", "rk4", "rk45", "lsoda", "dopri5", "adaptive_heun"):
        assert f"| {solver} " in text
    assert "radau, bdf" in text and "wall-time ratio rk45 / dopri5" in text
    _targets(text, 2)
    # Every row: overhead = wall - model, and the ratio to the bare solve as printed.
    checked = 0
    header = next(line for line in text.splitlines() if line.startswith("| solver "))
    names = [c.strip() for c in header.strip("|").split("|")]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(names) or not line.startswith("| ") or cells[0] in ("solver", ""):
            continue
        row = dict(zip(names, cells))
        if row.get("wall_s", "nan") in ("nan", "") or set(row["wall_s"]) <= {":", "-"}:
            continue
        wall, model, over = (float(row[k]) for k in ("wall_s", "model_s", "overhead_s"))
        assert abs(wall - model - over) <= 2e-3 * max(wall, 1e-3) + 1e-4, row
        # The recording was timed (a cell records) and the ratio is the printed columns'.
        assert float(row["record_s"]) > 0, row
        ratio = float(row["overhead_s"]) / float(row["bare_overhead_s"])
        assert abs(float(row["overhead_over_bare"]) - ratio) <= 2e-3 * abs(ratio), row
        checked += 1
    assert checked >= 8  # every solver that ran, the toy2d row and the rk45/dopri5 pair


@pytest.mark.parametrize("solver", ["rk45", "dopri5"])
def test_stepping_modes_small(tmp_path, solver):
    out = tmp_path / "stepping.md"
    argv = ["--datasets", "toy2d", "--solvers", solver, "--n", "8", "--epochs", "1"]
    assert _load("stepping_modes").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert row["solver"] == solver and int(row["n"]) == 8
    low, high = float(row["nfe_per_sample_min"]), float(row["nfe_per_sample_max"])
    # solved alone, the samples need different counts (per-sample stepping ran), and the
    # batch's one count lies among them
    assert float(row["nfe_per_sample_std"]) > 0 and low < high
    assert low <= float(row["nfe_per_sample_mean"]) <= high
    assert low <= float(row["nfe_batched"]) <= high
    assert float(row["max_abs_diff"]) > 0


def test_solve_memory_small(tmp_path):
    out = tmp_path / "memory.md"
    argv = ["--batch", "8", "--steps", "4", "--out", str(out)]
    assert _load("solve_memory").main(argv) == 0
    text = out.read_text()
    for variant in ("baseline", "bare", "stats", "trajectory"):
        assert f"| {variant} |" in text
    (peak,) = _targets(text, 1)
    assert peak["what"] == "stats peak / bare peak" and peak["limit"] == 1.5


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


def _reflow_ratios(csv: Path, metric: str, tol: float) -> tuple[float, float]:
    """The reflow ratios computed here from a reflow run's rows: one Euler step of the
    2-RF and of the distilled 2-RF over the 1-RF's rk45, each a mean over seeds."""
    rows = pd.read_csv(csv)
    rows = rows[rows["status"] == "ok"]
    ids = rows["model_id"].unique()
    (rf1,) = [i for i in ids if "rf-" not in i]
    (rf2,) = [i for i in ids if "-2rf-" in i and "-d1-" not in i]
    (d1,) = [i for i in ids if "-2rf-d1-" in i]

    def mean(model, solver, **match):
        g = rows[(rows["model_id"] == model) & (rows["solver"] == solver)]
        for k, v in match.items():
            g = g[g[k] == v]
        assert not g.empty
        return g.groupby("seed")[metric].mean().mean()

    base = mean(rf1, "rk45", rtol=tol)
    return mean(rf2, "euler", steps=1) / base, mean(d1, "euler", steps=1) / base


def test_reflow_study_small(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        "--dataset",
        "toy2d",
        "--out",
        str(out),
        "--work",
        str(work),
        "--train-epochs",
        "2",
        "--pairs",
        "600",
        "--pair-solver",
        "euler",
        "--pair-steps",
        "4",
        "--reflow-epochs",
        "1",
        "--num-samples",
        "200",
        "--seeds",
        "0,1",
    ]
    assert _load("reflow_study").main(argv) == 0
    text = (out / "README.md").read_text()
    assert "| 1-RF " in text and "| 2-RF " in text and "| 2-RF distilled (1 step) " in text
    assert "rfbench reflow --checkpoint" in text
    ratio, ratio_d = _reflow_ratios(out / "run" / "results.csv", "swd", 1e-5)
    assert f"ratio {ratio:.2f}; the distilled 2-RF's one step: ratio {ratio_d:.2f}." in text
    # blog_study reads the same ratios from a reflow run, with its target's verdict
    blog = tmp_path / "blog"
    (blog / "reflow" / "run").mkdir(parents=True)
    shutil.copy(out / "run" / "results.csv", blog / "reflow" / "run" / "results.csv")
    lines = "\n".join(_load("blog_study")._reflow_lines(blog, "swd", "1e-5"))
    assert f"**{ratio:.2f}**" in lines and f"**{ratio_d:.2f}**" in lines
    assert lines.startswith("Sampled on cpu. ")
    assert _targets(lines, 1)[0]["value"] == pytest.approx(ratio_d, abs=5e-4)
    assert (out / "run" / "figures" / "trajectories.pdf").stat().st_size > 0
    assert (out / "pivot-swd.md").exists() and (out / "pivot-straightness.md").exists()
    # Rerunning skips every step that is done: train, reflow, distill and the run.
    capsys.readouterr()
    assert _load("reflow_study").main(argv) == 0
    log = capsys.readouterr().err
    assert log.count("skip (done): rfbench ") == 4 and "run: rfbench" not in log, log
    # From a given 1-RF (--parent): no training step, and the same 1-RF in the run.
    parent = work / "1rf" / "checkpoint.pt"
    other = [*argv[:2], "--out", str(tmp_path / "o2"), "--work", str(tmp_path / "w2"), *argv[6:]]
    assert _load("reflow_study").main([*other, "--parent", str(parent)]) == 0
    text2 = (tmp_path / "o2" / "README.md").read_text()
    assert "rfbench train" in text and "rfbench train" not in text2
    one = pd.read_csv(out / "run" / "results.csv")
    two = pd.read_csv(tmp_path / "o2" / "run" / "results.csv")
    (first,) = [i for i in one["model_id"].unique() if "rf-" not in i]  # the 1-RF's id
    assert first in set(two["model_id"])
    assert not (tmp_path / "w2" / "1rf").exists()
    # Another --parent with the same --work is refused: its done steps are another lineage.
    assert (
        main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(tmp_path / "p3")]) == 0
    )
    with pytest.raises(SystemExit, match="was reflowed from .*give another --work"):
        _load("reflow_study").main([*other, "--parent", str(tmp_path / "p3" / "checkpoint.pt")])
    # ... and so is the same parent on another number of pairs
    more = ["700" if a == "600" else a for a in other]
    with pytest.raises(SystemExit, match="on 600 euler pairs, not from .* on 700 euler pairs"):
        _load("reflow_study").main([*more, "--parent", str(parent)])


def test_reflow_study_continues_a_model_step_cut_short(tmp_path):
    """A distillation killed after its first epoch leaves a checkpoint behind (one is
    written after each epoch): the study continues it with --resume instead of skipping
    it as done."""
    from rfbench.train import load_model, read_checkpoint

    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--dataset", "toy2d", "--out", str(out), "--work", str(work), "--train-epochs", "1"]
    argv += ["--pairs", "300", "--pair-solver", "euler", "--pair-steps", "2"]
    argv += ["--reflow-epochs", "2", "--num-samples", "100", "--seeds", "0", "--no-in-sample"]
    study = _load("reflow_study")
    assert study.main(argv) == 0
    finished = load_model(work / "2rf-d1" / "checkpoint.pt")
    assert finished.epochs_done == 2
    # The same distillation, stopped after epoch 1 of 2: a 1-epoch run whose spec says 2.
    cut = tmp_path / "cut"
    distill = ["reflow", "--checkpoint", str(work / "2rf" / "checkpoint.pt"), "--pairs", "300"]
    distill += ["--solver", "euler", "--steps", "2", "--distill", "1", "--device", "auto"]
    assert main([*distill, "--epochs", "1", "--out", str(cut)]) == 0
    ckpt = read_checkpoint(cut / "checkpoint.pt")
    ckpt["spec"] = read_checkpoint(work / "2rf-d1" / "checkpoint.pt")["spec"]
    torch.save(ckpt, cut / "checkpoint.pt")
    shutil.rmtree(work / "2rf-d1")
    shutil.copytree(cut, work / "2rf-d1")
    shutil.rmtree(out)
    assert load_model(work / "2rf-d1" / "checkpoint.pt").epochs_done == 1
    calls = []
    real = study.rfbench
    study.rfbench = lambda a: calls.append(a) or real(a)
    assert study.main(argv) == 0
    (continued,) = [a for a in calls if a[0] == "reflow"]  # the 2-RF is done: not called
    assert "--distill" in continued and continued[-1] == "--resume"
    resumed = load_model(work / "2rf-d1" / "checkpoint.pt")
    assert resumed.epochs_done == 2 and resumed.model_id == finished.model_id
    assert resumed.losses == finished.losses  # exactly as the uninterrupted run
    assert "distilled" in (out / "README.md").read_text()
    # A work directory trained for another number of epochs is another study's.
    with pytest.raises(SystemExit, match="2-epoch training, not 3: give another --work"):
        study.main(
            [
                *argv[: argv.index("--reflow-epochs") + 1],
                "3",
                *argv[argv.index("--reflow-epochs") + 2 :],
            ]
        )
    # An evaluation run that holds another model than these is refused, not reported.
    csv = out / "run" / "results.csv"
    frame = pd.read_csv(csv)
    frame.loc[frame["model_id"] == finished.model_id, "model_id"] = "toy2d-2rf-d1-older"
    frame.to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="holds models toy2d-2rf-d1-older, not this study's"):
        study.main(argv)
    # A checkpoint cut short without its optimizer state cannot be continued: one line.
    del ckpt["optimizer"]
    torch.save(ckpt, work / "2rf-d1" / "checkpoint.pt")
    with pytest.raises(SystemExit, match="holds no optimizer state"):
        study.main(argv)


def test_train_step_small(tmp_path):
    out = tmp_path / "train-step.md"
    assert (
        _load("train_step").main(
            ["--steps", "2", "--warmup", "1", "--batch", "8", "--out", str(out)]
        )
        == 0
    )
    text = out.read_text()
    assert "| rfbench train_step |" in text and "| bare loop |" in text
    (ratio,) = _targets(text, 1)
    medians = dict(re.findall(r"^\| (rfbench train_step|bare loop) \| ([0-9.]+) \|", text, re.M))
    expected = float(medians["bare loop"]) / float(medians["rfbench train_step"])
    assert abs(ratio["value"] - expected) <= 0.01 * expected  # from the printed medians


@pytest.mark.slow
def test_gpu_session_script_runs_the_check_on_a_cpu(tmp_path):
    """The script a GPU session runs, in smoke mode: report and tarball land in $OUT."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_session.sh"), "--smoke", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reports = list(tmp_path.glob("*.md"))
    assert len(reports) == 1 and "## 6. torchrun" in reports[0].read_text()
    assert (tmp_path / "gpu-runs.tgz").stat().st_size > 0


def test_train_epoch_matches_the_bare_loop(mnist_root, tmp_path):
    """train() and the benchmark's bare epoch draw the same batches: the same weights."""
    out = tmp_path / "epoch.md"
    argv = [
        "--dataset",
        "mnist",
        "--data-root",
        str(mnist_root),
        "--images",
        "300",
        "--rounds",
        "1",
        "--out",
        str(out),
    ]
    assert _load("train_epoch").main(argv) == 0
    text = out.read_text()
    assert "Same final EMA weights: yes" in text
    (ratio,) = _targets(text, 1)
    assert ratio["op"] == ">=" and ratio["limit"] == 0.95


@pytest.mark.slow
def test_torchrun_equivalence_script(mnist_root, tmp_path):
    """The evidence script on a small MNIST-like set: one thread alone and two processes
    under torchrun give the same samples and FID."""
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data-root",
                str(mnist_root),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    out = tmp_path / "torchrun.md"
    argv = [
        "--dataset",
        "mnist",
        "--data-root",
        str(mnist_root),
        "--checkpoint",
        str(tmp_path / "m" / "checkpoint.pt"),
        "--solvers",
        "euler,dopri5",
        "--steps",
        "2",
        "--num-samples",
        "128",
        "--batch-size",
        "32",
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(out),
    ]
    assert _load("torchrun_equivalence").main(argv) == 0
    rows = [
        line
        for line in out.read_text().splitlines()
        if line.startswith("| euler") or line.startswith("| dopri5")
    ]
    assert len(rows) == 2 and all(row.split(" | ")[8] == "yes" for row in rows)


def test_inception_fashion_small(tmp_path, monkeypatch):
    """The evidence script of the Inception FID on small digits with a random Inception
    (the real weights are not downloaded here), and its rank agreement on made-up runs."""
    import pandas as pd
    import torch

    from rfbench.metrics import inception
    from tests.conftest import write_mnist_like
    from tests.test_inception import _random_inception

    root = write_mnist_like(tmp_path / "digits", n_train=60, n_test=20)
    weights = tmp_path / "tf.pth"
    torch.save(_random_inception().state_dict(), weights)
    monkeypatch.setattr(inception, "INCEPTION_SHA256_PREFIX", inception.sha256_of(weights)[:8])
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "cache"))
    runs = {}
    for name, fids in (("clf", [1.0, 2.0, 3.0, 4.0]), ("inc", [10.0, 20.0, 40.0, 30.0])):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        pd.DataFrame(
            {
                "model_id": "m",
                "solver": ["euler", "euler", "euler", "rk45"],
                "steps": [1, 2, 4, None],
                "rtol": [None, None, None, 1e-5],
                "seed": 0,
                "nfe": [1, 2, 4, 50],
                "status": "ok",
                "fid": fids,
            }
        ).to_csv(runs[name] / "results.csv", index=False)
    out = tmp_path / "report.md"
    argv = ["--dataset", "mnist", "--data-root", str(root), "--inception-weights", str(weights)]
    argv += ["--n-real", "12", "--ladder-n", "6", "--sigmas", "0.3,0.9"]
    argv += ["--run", str(runs["clf"]), "--eval", str(runs["inc"]), "--out", str(out)]
    code = _load("inception_fashion").main(argv)
    text = out.read_text()
    found = _targets(text, 3)
    assert code == (0 if all(t["met"] for t in found) else 1)
    assert found[2]["value"] == pytest.approx(4 / 6, abs=1e-4)  # 5 concordant, 1 discordant
    assert len(re.findall(r"^\| (0|0\.3|0\.9) \|", text, re.M)) == 3  # the ladder's rows
    assert "12 training images" in text and "images/s" in text


def test_few_step_study_small(tmp_path):
    """The few-step study end to end on toy2d at a tiny size, and its overhead target on
    made-up rows."""
    import pandas as pd

    study = _load("few_step_study")
    out = tmp_path / "out"
    argv = ["--work", str(tmp_path / "work"), "--out", str(out), "--toy-samples", "40"]
    argv += ["--pairs", "100", "--toy-epochs", "1", "--seeds", "0,1", "--steps", "1,4"]
    argv += ["--heun-steps", "2", "--grids", "uniform,edm"]
    notes = tmp_path / "notes.md"
    notes.write_text("## What the numbers show\n\nA reading.\n")
    assert study.main([*argv, "--notes", str(notes)]) == 0
    text = (out / "README.md").read_text()
    assert text.endswith("## What the numbers show\n\nA reading.\n")
    assert text.count("### toy2d-quick") == 2  # the 1-RF and the 2-RF model
    assert "NFE ≤ 4" in text and "| dpmpp-2m " in text and "| heun " in text
    assert "| midpoint " in text and "| rk4 " in text
    # only the given schedules, and every adaptive cell
    frame = pd.DataFrame(
        {"grid": ["uniform", "cosine", "edm-rho7", None], "rtol": [None] * 3 + [1e-5]}
    )
    assert study._on_grids(frame, ["uniform", "edm-rho7"]).index.tolist() == [0, 2, 3]
    assert re.search(r"- NFE 4: the best multistep solver, \S+ \(", text)
    assert len(list(out.glob("toy2d-*.png"))) == 2
    # distances from a converged run of the 1-RF model, paired by seed and sample
    one = tmp_path / "work" / "1rf" / "checkpoint.pt"
    rk = tmp_path / "rk45"
    argv = ["run", "--dataset", "toy2d", "--checkpoint", str(one), "--solvers", "rk45"]
    argv += ["--tols", "1e-5,1e-2", "--seeds", "0,1", "--num-samples", "40", "--out", str(rk)]
    assert main(argv) == 0
    d = study._distances([out / "toy2d-multistep", rk])
    assert set(d.reference) == {"rk45 rtol 1e-05"}  # the tightest of the two, whatever order
    cells = pd.read_csv(out / "toy2d-multistep" / "results.csv")
    reference = pd.read_csv(rk / "results.csv")
    assert len(d) == (cells.model_id == reference.model_id.iloc[0]).sum() == 2 * 8 * 2 * 2
    row = d[(d.solver == "ab2") & (d.nfe == 4) & (d.grid == "edm-rho7") & (d.seed == 1)].iloc[0]
    name = f"{row.model_id}--ab2-steps4-edm-rho7-seed1.npz"
    x = np.load(out / "toy2d-multistep" / "samples" / name)["x"] / 255
    ref = np.load(next((rk / "samples").glob("*rtol1e-05*seed1.npz")))["x"] / 255
    assert row.rmse == pytest.approx(np.sqrt(((x - ref) ** 2).mean()), rel=1e-6)  # float32
    assert row.rmse > 0 and row.samples == len(x)
    # distances.csv keeps the cells of the study whose samples are gone, drops the cells
    # no longer in it, and fresh samples replace a cell's old distance
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out / "toy2d-multistep", copy)
    (copy / "samples" / name).unlink()  # row's samples are gone; its cell is still there
    kept = tmp_path / "kept"
    kept.mkdir()
    other = d[(d.solver == "ab2") & (d.nfe == 4) & (d.grid == "uniform")].iloc[0]
    pd.DataFrame(
        [
            {**row.to_dict(), "rmse": 0.5},  # samples gone: kept
            {**row.to_dict(), "model_id": "gone-model"},  # not in the study: dropped
            {**other.to_dict(), "rmse": 99.0},  # samples here: recomputed
        ]
    ).to_csv(kept / "distances.csv", index=False)
    lines = study._accuracy_section([copy, rk], ["uniform", "edm-rho7"], kept)
    merged = pd.read_csv(kept / "distances.csv")
    assert len(merged) == len(d) and "1 of these distances" in "\n".join(lines)
    assert "gone-model" not in set(merged.model_id) and 99.0 not in merged.rmse.tolist()
    again = merged[(merged.solver == "ab2") & (merged.nfe == 4) & (merged.seed == 1)]
    assert again[again.grid == "edm-rho7"].rmse.tolist() == [0.5]
    rows = pd.DataFrame(
        {
            "solver": ["euler", "ab2", "ab2", "unipc-bh1"],
            "overhead_time_s": [0.01, 0.02, 0.04, 0.2],
            "model_time_s": [1.0, 1.0, 1.0, 2.0],
        }
    )
    table, worst = study._overhead(rows)
    assert worst == pytest.approx(0.1)  # unipc-bh1: 0.2 / 2; ab2's median is 3%
    assert "3.00%" in table and "10.00%" in table
    # the largest cell's share, of multistep solvers only
    cells = rows.assign(steps=[1, 2, 3, 4], grid="uniform", seed=0)
    largest = study._largest_cell(cells)
    assert (largest["solver"], largest["steps"]) == ("unipc-bh1", 4)
    assert largest["share"] == pytest.approx(0.1)
    assert study._largest_cell(cells[cells.solver != "unipc-bh1"])["share"] == 0.04
    # verdicts compare seed by seed
    best = pd.DataFrame(
        {
            "solver": ["euler", "ab2"],
            "nfe": [4, 4],
            "grid": ["uniform", "sd3-shift3"],
            "value": [10.0, 9.0],
            "std": [1.0, 1.0],
        }
    )
    frame = pd.DataFrame(
        {
            "solver": ["euler", "euler", "ab2", "ab2"],
            "grid": ["uniform", "uniform", "sd3-shift3", "sd3-shift3"],
            "nfe": [4, 4, 4, 4],
            "seed": [0, 1, 0, 1],
            "fid": [10.5, 9.5, 9.4, 8.6],
        }
    )
    (line,) = study._verdicts(best, frame, "fid")
    assert "ab2 (sd3-shift3), beats, on each of the 2 seeds," in line and "+1.1, +0.9" in line
    (line,) = study._verdicts(best, frame.assign(fid=[10.5, 9.5, 9.4, 9.6]), "fid")
    assert "neither beats nor loses to (the seeds disagree)" in line
    # the converged reference: per seed, then mean and std over seeds
    adaptive = pd.DataFrame(
        {
            "solver": ["rk45"] * 4,
            "rtol": [1e-5] * 4,
            "seed": [0, 0, 1, 1],
            "fid": [10.0, 12.0, 14.0, 16.0],
            "nfe": [80, 90, 100, 110],
        }
    )
    (c,) = study._converged(adaptive, "fid")
    assert (c["solver"], c["rtol"], c["value"], c["nfe"]) == ("rk45", 1e-5, 13.0, 95)
    assert c["std"] == pytest.approx(2**0.5 * 2)  # seeds 11 and 15, ddof 1


def _rows(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table of a report."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _table_with(text: str, column: str) -> list[dict[str, str]]:
    """The rows of the first markdown table with a column whose name holds ``column``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        header = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
        if header and column in line:
            block = itertools.takewhile(lambda x: x.startswith("|"), lines[i:])
            return _rows("\n".join(block))
    raise AssertionError(f"no table with a column {column!r}")


def _table(text: str) -> dict[str, dict[str, str]]:
    """The first markdown table of a report, by its first column."""
    return {next(iter(row.values())): row for row in _rows(text)}


def test_per_sample_stepping_small(tmp_path):
    out = tmp_path / "stepping.md"
    argv = ["--dataset", "toy2d", "--n", "16", "--rounds", "2", "--epochs", "1"]
    assert _load("per_sample_stepping").main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    rows = _table(text)
    assert set(rows) == {"batched", "sequential", "vectorised", "scipy rk45"}
    seq, vec, batched = rows["sequential"], rows["vectorised"], rows["batched"]
    assert (seq["impl"], vec["impl"]) == ("sequential", "vectorised")
    # the same steps per sample both ways; the vectorised solve's forwards are its hardest
    # sample's, the sequential ones the sum over samples
    for column in ("nfe_mean", "nfe_std", "nfe_min", "nfe_max"):
        assert float(seq[column]) == float(vec[column])
    assert float(vec["nfe_std"]) > 0
    assert int(vec["forwards"]) == int(float(vec["nfe_max"]))
    # the batch's one count lies among the counts the samples need alone
    assert float(vec["nfe_min"]) <= float(batched["nfe_mean"]) <= float(vec["nfe_max"])
    assert "the same NFE as solving it alone: yes" in text
    # scipy and rk45-torch take the same steps
    assert rows["scipy rk45"]["solver_nfe"] == batched["solver_nfe"] == batched["forwards"]
    # the verdict follows from the medians in the table
    (found,) = _targets(text, 1)
    ratio = float(vec["wall_s"]) / float(batched["wall_s"])
    assert found["value"] == pytest.approx(ratio, rel=2e-3)


def test_blog_study_plan(tmp_path):
    """--plan: exact images x NFE for every fixed-step stage, the adaptive NFE guessed until
    the adaptive run has measured it, then measured; and nothing run."""
    from rfbench.cli import main as rfbench

    assert rfbench(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(tmp_path)]) == 0
    ckpt, out = str(tmp_path / "checkpoint.pt"), tmp_path / "out"
    argv = ["--checkpoint", ckpt, "--dataset", "toy2d", "--preset", "quick", "--out", str(out)]
    argv += ["--num-samples", "100", "--seeds", "0,1", "--frontier-extractor", "none"]
    argv += ["--no-compile", "--plan", "--adaptive-nfe", "1e-3:50,1e-5:120"]
    study = _load("blog_study")
    assert study.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.md"]  # planned, not run
    by_what = {r["what"]: float(r["images x NFE"]) for r in _rows((out / "plan.md").read_text())}
    per_cell = 100 * 2
    assert by_what["euler 1,2,4,8 steps x 2 grids"] == 15 * 2 * per_cell
    assert by_what["heun 1,2,4,8 steps x 2 grids"] == 2 * 15 * 2 * per_cell
    assert by_what["rk4 1,2,4 steps x 2 grids"] == 4 * 7 * 2 * per_cell
    assert by_what[f"{len(study.MULTISTEP)} solvers x 2,4,6,8,10"] == 7 * 30 * per_cell
    assert by_what["rk45 1e-05: 120 NFE (guess)"] == 120 * per_cell
    assert by_what["euler [16, 50] steps x 2 grids (matched to rk45, guess)"] == 66 * 2 * per_cell
    # once the adaptive run exists, its NFE replaces the guess
    run = ["run", "--dataset", "toy2d", "--checkpoint", ckpt, "--solvers", "rk45,dopri5"]
    run += ["--tols", "1e-3", "--num-samples", "50", "--seeds", "0", "--out", str(out / "adaptive")]
    assert rfbench(run) == 0
    nfe = pd.read_csv(out / "adaptive" / "results.csv").set_index("solver")["nfe"]
    assert study.main(argv) == 0
    plan = (out / "plan.md").read_text()
    by_what = {r["what"]: float(r["images x NFE"]) for r in _rows(plan)}
    assert by_what[f"rk45 0.001: {nfe['rk45']:.0f} NFE (measured)"] == nfe["rk45"] * per_cell
    assert by_what["dopri5 1e-05: 120 NFE (guess)"] == 120 * per_cell
    rate = float(re.search(r"([0-9.]+) images x NFE per second", plan)[1])
    for r in _rows(plan):  # every sampling stage: its images x NFE at the timed rate
        if r["stage"] in ("adaptive", "fixed", "rk4", "euler-more", "multistep"):
            hours = float(r["images x NFE"]) / rate / 3600
            assert float(r["hours"]) == pytest.approx(hours, abs=0.006), r
    assert by_what[
        "pairs: 2 x 10000 at rk45 1e-3 (the 1-RF's NFE, measured, for the 2-RF's too)"
    ] == pytest.approx(2 * 10000 * nfe["rk45"], abs=1)
    evaluation = "evaluation: 3 models x (euler 1,2,4,8 + rk45 at the 1-RF's NFE, measured)"
    assert by_what[evaluation] == pytest.approx(3 * (15 + nfe["rk45"]) * per_cell, abs=1)
    total = float(re.search(r"Total: ([0-9.]+) hours", plan)[1])
    assert total == pytest.approx(sum(float(r["hours"]) for r in _rows(plan)), abs=0.1)


def test_blog_study_frontier_names_a_tie_as_the_budget_table_does():
    """dpmpp-2m's two steps are Euler's: the same FID, and the frontier must name the
    cell the budget table names (Euler), not the alphabetically first."""
    from rfbench.report import budget_table
    from rfbench.results import records_to_frame
    from tests.test_report import _cells

    rows = [r for r in _cells() if r["solver"] == "euler" and r["steps"] == 1]
    rows = [dict(r, steps=2, nfe=2, model_id="m") for r in rows]
    rows += [dict(r, solver="dpmpp-2m", wall_time_s=0.001) for r in rows]
    frame = records_to_frame(rows)
    frontier = _load("blog_study")._frontier(frame, "fid")
    assert frontier["solver"].tolist() == ["euler"]
    assert budget_table(frame, nfe_budgets=(2,))["solver"].tolist() == ["euler"]


def test_blog_study_refuses_to_resume_with_other_speed_options(tmp_path):
    study = _load("blog_study")
    out = tmp_path / "adaptive"
    out.mkdir()
    (out / "config.json").write_text(
        '{"channels_last": false, "compile": false, "solvers": ["rk45", "dopri5"]}'
    )
    grid = ["--solvers", "rk45,dopri5"]
    with pytest.raises(SystemExit, match="begun with channels_last=False: pass --no-channels"):
        study._run(grid, out, ["--channels-last"], [], tmp_path / "t.json")
    with pytest.raises(SystemExit, match="begun with compile=False: pass --no-compile"):
        study._run(grid, out, ["--compile"], [], tmp_path / "t.json")
    old = tmp_path / "fixed"
    old.mkdir()
    (old / "config.json").write_text('{"solvers": ["euler", "heun", "rk4"]}')
    with pytest.raises(SystemExit, match="older layout of the study"):
        study._run(["--solvers", "euler,heun"], old, [], [], tmp_path / "t.json")


@pytest.mark.slow
def test_blog_study_small(tmp_path, mnist_root):
    """The whole study on a one-epoch model of a small MNIST-like set: cache add, the four
    runs (the Euler step count matched to RK45's NFE), reflow, the frontier rescored by
    `rfbench eval`, and the README's numbers read back from the runs."""
    from rfbench.cli import main as rfbench

    model, root = tmp_path / "model", ["--data-root", str(mnist_root)]
    train = ["train", "--dataset", "mnist", "--epochs", "1", *root, "--out", str(model)]
    assert rfbench(train) == 0
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--checkpoint", str(model / "checkpoint.pt"), "--dataset", "mnist", *root]
    argv += ["--preset", "quick", "--out", str(out), "--work", str(work)]
    argv += ["--num-samples", "64", "--seeds", "0,1", "--tols", "1e-2", "--fixed-steps", "1,2"]
    argv += ["--rk4-steps", "1"]
    argv += ["--euler-more-steps", "4", "--multistep-steps", "2", "--pairs", "128"]
    argv += ["--pair-tol", "1e-2", "--reflow-epochs", "1", "--reflow-eval-tol", "1e-2"]
    argv += ["--frontier-extractor", "classifier", "--no-compile"]  # compiling: minutes
    # First without step 5 (a machine without the extractor's weights), then with it.
    assert _load("blog_study").main([*argv, "--no-rescore"]) == 0
    listed = (out / "frontier-samples.txt").read_text().split()
    assert listed and all(Path(f).is_file() and "all-samples" in f for f in listed)
    assert not (out / "frontier-classifier").exists()
    assert "Not scored yet (--no-rescore)" in (out / "README.md").read_text()
    stamp = (out / "fixed" / "results.csv").stat().st_mtime_ns
    assert _load("blog_study").main(argv) == 0
    adaptive = pd.read_csv(out / "adaptive" / "results.csv")
    rk45 = adaptive[adaptive["solver"] == "rk45"]["nfe"].mean()
    more = pd.read_csv(out / "euler-more" / "results.csv")
    assert sorted(more["steps"].unique()) == sorted({4, max(1, round(rk45))} - {1, 2})
    for name in ("fixed", "rk4", "multistep"):
        frame = pd.read_csv(out / name / "results.csv")
        assert (frame["status"] == "ok").all() and set(frame["seed"]) == {0, 1}
        assert frame["channels_last"].all() and not frame["compiled"].any()  # as asked
    for name in ("adaptive", "fixed"):  # run --preset reused the added model: no training
        log = (out / name / "run.log").read_text()
        assert "reusing cached model" in log and "training mnist" not in log
    text = (out / "README.md").read_text()
    assert f"rfbench cache add {model / 'checkpoint.pt'}" in text
    (line,) = _targets(text, 1)
    reflow = pd.read_csv(out / "reflow" / "run" / "results.csv")

    def seed_mean(rows):
        return rows.groupby("seed")["fid"].mean().mean()

    one = reflow[~reflow["model_id"].str.contains("rf-")]
    dist = reflow[reflow["model_id"].str.contains("-2rf-d1-")]
    ratio = seed_mean(dist[(dist["solver"] == "euler") & (dist["steps"] == 1)]) / seed_mean(
        one[one["solver"] == "rk45"]
    )
    assert line["value"] == pytest.approx(ratio, rel=1e-3)
    assert not (out / "reflow" / "in-sample.csv").exists()  # --no-in-sample
    assert "left out (--no-in-sample)" in (out / "reflow" / "README.md").read_text()
    # The frontier's rescoring: one eval row per frontier cell, its FID in the README.
    rescored = pd.read_csv(out / "frontier-classifier" / "results.csv")
    assert len(rescored) == len(listed) >= 2 and rescored["fid"].notna().all()
    assert sorted(rescored["samples"]) == sorted(listed)
    assert f"{rescored['fid'].iloc[0]:.4g}" in text and "Not scored yet" not in text
    assert (out / "figures" / "fid_vs_nfe.png").exists()
    # Done steps are skipped: the second call ran no `rfbench run` again.
    assert (out / "fixed" / "results.csv").stat().st_mtime_ns == stamp
    assert f"torch {torch.__version__}), this README" in text
    # The frontier sampled again here: the scores of the runs' samples are not reused ...
    with pytest.raises(SystemExit, match="scored other samples than this frontier's"):
        _load("blog_study").main([*argv, "--resample-frontier"])
    shutil.move(out / "frontier-classifier", tmp_path / "scored-from-the-runs")
    assert _load("blog_study").main([*argv, "--resample-frontier"]) == 0
    again = (out / "frontier-samples.txt").read_text().split()
    assert len(again) == len(listed) and all("frontier-resampled" in f for f in again)
    assert [Path(f).name for f in again] == [Path(f).name for f in listed]  # the same cells
    # ... and on this machine the same seed gives the same samples, so the same FID
    rows = _table_with((out / "README.md").read_text(), "that seed, the run's")
    assert len(rows) >= len(listed)  # one row per budget, a cell in several
    for r in rows:
        run_fid = [v for k, v in r.items() if "that seed, the run's" in k]
        here_fid = [v for k, v in r.items() if "sampled again here" in k]
        assert len(run_fid) == len(here_fid) == 1 and run_fid == here_fid and run_fid[0]
    first = pd.read_csv(tmp_path / "scored-from-the-runs" / "results.csv")["fid"]
    rescored_again = pd.read_csv(out / "frontier-classifier" / "results.csv")["fid"]
    assert np.allclose(sorted(first), sorted(rescored_again))


def test_speed_options_small(tmp_path):
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(tmp_path)]) == 0
    speed = _load("speed_options")
    argv = ["--checkpoint", str(tmp_path / "checkpoint.pt"), "--backend", "eager"]
    argv += ["--batch-size", "32", "--repeats", "2", "--out", str(tmp_path / "speed.md")]
    assert speed.main([*argv, "--min-speedup", "0"]) == 0
    text = (tmp_path / "speed.md").read_text()
    rows = _table(text)
    assert set(rows) == {"eager", "channels-last", "compile", "channels-last+compile"}
    assert rows["compile"]["ran as"] == "compiled" and rows["eager"]["ran as"] == "eager"
    assert rows["eager"]["speed-up over eager"] == "1.00"
    ratio, diff = _targets(text, 2)
    assert ratio["met"] and diff["met"] and diff["value"] == 0  # eager backend: the same ops
    assert speed.main([*argv, "--min-speedup", "1e9"]) == 1  # no variant is a billion times faster
    assert not _targets((tmp_path / "speed.md").read_text(), 2)[0]["met"]
    # the timed rounds run the compiled graph (no recompiling in them), each variant once
    # per round after one untimed round
    from rfbench.runtime import Acceleration
    from rfbench.train import load_model

    calls = []

    def counting(gm, example_inputs):
        calls.append("compiled")
        return lambda *args: (calls.append("ran"), gm.forward(*args))[1]

    variants = {"eager": Acceleration(), "compile": Acceleration(compile=True)}
    trained = load_model(tmp_path / "checkpoint.pt")
    seconds, _, ran = speed.time_forward(trained, variants, 16, 3, counting)
    assert calls.count("compiled") == 1  # the warm-up's graph serves every timed round
    assert calls.count("ran") == 2 + 1 + 3  # warm-up, untimed round, 3 timed rounds
    assert [len(v) for v in seconds.values()] == [3, 3] and ran["compile"].compile


@pytest.mark.parametrize(
    "script, bad",
    [
        ("reflow_study", ["--num-samples", "0"]),
        ("reflow_study", ["--reflow-epochs", "0"]),
        ("reflow_study", ["--train-epochs", "0"]),
        ("reflow_study", ["--train-epochs", "-1"]),
        ("reflow_study", ["--seeds", "0,x"]),
        ("reflow_study", ["--eval-solver", "rk54"]),
        ("reflow_study", ["--pair-solver", "bogus"]),
        ("reflow_study", ["--pair-tol", "abc"]),
        ("reflow_study", ["--eval-tol", "1e-3,1e-5"]),
        ("reflow_study", ["--pair-steps", "0"]),
        ("blog_study", ["--plan", "--pair-tol", "abc"]),
        ("blog_study", ["--reflow-eval-tol", "0"]),
        ("blog_study", ["--batch-size", "0"]),
        ("blog_study", ["--num-samples", "-3"]),
        ("blog_study", ["--pairs", "0"]),
        ("blog_study", ["--reflow-epochs", "0"]),
    ],
)
def test_study_scripts_refuse_bad_numbers_before_any_work(tmp_path, capsys, script, bad):
    """A count of 0 once fell back to the preset's silently and started the real
    evaluation, and a bad tolerance failed with a traceback after the model had loaded
    (or hours later, inside the reflow step): each is now argparse's one-line error."""
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(SystemExit) as stop:
        _load(script).main([*bad, "--out", str(out), "--work", str(work)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {bad[-2]}:" in err and "Traceback" not in err
    assert not out.exists() and not work.exists()
