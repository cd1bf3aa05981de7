"""The command line, end to end on toy2d and on small IDX files the tests write."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rfbench.cli import main
from rfbench.config import RunConfig
from rfbench.results import COLUMNS, cell_id

TOY = ["run", "--dataset", "toy2d", "--epochs", "2", "--num-samples", "300", "--batch-size", "100"]


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--dataset", "toy2d", "--solvers", "euler,nope"], "choose from: euler"),
        (["run", "--dataset", "nope"], "choose from 'mnist'"),
        (["run", "--dataset", "toy2d", "--steps", "1,,4"], "malformed"),
        (["run", "--dataset", "toy2d", "--steps", "0"], "> 0"),
        (["run", "--dataset", "toy2d", "--tols=-1e-3"], "> 0"),
        (["run", "--dataset", "toy2d", "--tols", "-0.5"], "> 0"),
        (["run", "--dataset", "toy2d", "--tols", "abc"], "not a valid tolerance"),
        (["run", "--dataset", "toy2d", "--tols", "inf"], "finite"),  # found by fuzzing
        (["run", "--dataset", "toy2d", "--num-samples=--"], "expected a value"),  # likewise
        (["run", "--dataset", "toy2d", "--seeds", "1,1"], "repeats"),
        (["run", "--dataset", "toy2d", "--num-samples", "0"], "> 0"),
        (["run", "--dataset", "toy2d", "--preset", "huge"], "choose from 'quick'"),
        (["train", "--dataset", "toy2d"], "--out"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    for default in (
        "(default: euler,rk45)",
        "(default: quick)",
        "(default: 1e-05)",
        "(default: uniform)",
        "(default: fid,kid)",
        "(default: auto)",
    ):
        assert default in out, default
    assert "(default: None)" not in out
    assert "seed of the trained model (default: 0)" in out


def test_toy2d_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(
        [*TOY, "--solvers", "euler,rk45,heun", "--steps", "1,4", "--metrics", "inversion"]
        + ["--out", str(out)],
        capsys,
    )
    assert code == 0 and stdout.strip() == str(out)
    for name in (
        "config.json",
        "env.json",
        "results.csv",
        "table.md",
        "run.log",
        "figures/swd_vs_nfe.png",
        "figures/swd_vs_time.png",
        "figures/straightness_vs_nfe.png",
        "figures/trajectories.png",
    ):
        assert (out / name).stat().st_size > 0, name
    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(frame) == 5 and (frame["status"] == "ok").all()
    euler = frame[frame.solver == "euler"].set_index("steps")
    assert euler.loc[1, "nfe"] == 1 and euler.loc[4, "nfe"] == 4
    assert euler.loc[4, "nfe_per_batch"] == "4;4;4"
    assert frame[frame.solver == "heun"].set_index("steps").loc[4, "nfe"] == 8
    rk45 = frame[frame.solver == "rk45"].iloc[0]
    assert rk45["rtol"] == 1e-5 and rk45["atol"] == 1e-5 and pd.isna(rk45["steps"])
    assert rk45["solver_nfe"] == rk45["nfe_per_batch"]  # scipy's nfev == the wrapper's count
    assert pd.isna(euler.loc[1, "rtol"]) and pd.isna(euler.loc[1, "fid"])  # empty, never 0
    # One step of a barely trained model is far worse than four.
    assert euler.loc[1, "swd"] > euler.loc[4, "swd"]
    # Straightness along the solved paths: one Euler step is a straight line by construction
    # (0 up to the float32 rounding of x1 - x0, about 1e-7 of |v|^2 per sample).
    assert abs(euler.loc[1, "straightness"]) < 1e-6 and euler.loc[4, "straightness"] > 1e-4
    assert frame["straightness"].notna().all()
    assert abs(euler.loc[1, "curvature"]) < 1e-6 and euler.loc[4, "curvature"] > 1e-4
    # The round trip data -> noise -> data: 1 Euler step each way is far off, RK45 is close.
    assert rk45["inversion_rmse"] < 0.1 * euler.loc[1, "inversion_rmse"]
    assert euler.loc[4, "inversion_nfe"] == 8
    assert (frame["stepping"] == "batched").all() and (
        frame[frame.family == "fixed"].grid == "uniform"
    ).all()
    (env,) = json.loads((out / "env.json").read_text())["invocations"]  # one per invocation
    assert env["torch"] and "packages" in env and env["resume"] is False
    # The first samples of every cell, and the paths of the fixed-step cells, for figures.
    for _, row in frame.iterrows():
        saved = np.load(out / "samples" / f"{cell_id(row.to_dict())}.npz")
        assert saved["x"].shape == (64, 2) and saved["x"].dtype == np.float32
    paths = np.load(out / "trajectories" / f"{cell_id(euler.reset_index().iloc[1])}.npz")
    assert paths["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and paths["x"].shape == (5, 128, 2)
    assert len(list((out / "trajectories").iterdir())) == 4  # euler and heun, 1 and 4 steps


def test_existing_run_is_not_overwritten_and_resume_skips_done_cells(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run([*TOY, "--solvers", "euler", "--steps", "1,2", "--out", str(out)], capsys)[0] == 0
    before = (out / "results.csv").read_text()
    code, _, err = _run([*TOY, "--solvers", "euler", "--steps", "1,2", "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err
    assert (out / "results.csv").read_text() == before
    code, _, err = _run(
        [*TOY, "--solvers", "euler", "--steps", "1,2", "--out", str(out), "--resume"], capsys
    )
    assert code == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2  # nothing redone, nothing duplicated
    code, _, err = _run(
        [*TOY, "--solvers", "euler", "--steps", "1,2,4", "--out", str(out), "--resume"], capsys
    )
    assert code == 2 and "differs in steps" in err


def test_mnist_from_data_root_gives_fid_and_kid(mnist_root, tmp_path, capsys):
    out = tmp_path / "mnist"
    code, _, err = _run(
        [
            "run",
            "--dataset",
            "mnist",
            "--data-root",
            str(mnist_root),
            "--solvers",
            "euler",
            "--steps",
            "1,2",
            "--epochs",
            "1",
            "--num-samples",
            "100",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    frame = pd.read_csv(out / "results.csv")
    for col in ("nfe", "wall_time_s", "fid", "kid_mean", "n_samples", "feature_extractor"):
        assert frame[col].notna().all(), col
    assert frame["feature_extractor"].str.match(r"classifier-[0-9a-f]{8}$").all()
    saved = np.load(out / "samples" / f"{cell_id(frame.iloc[0].to_dict())}.npz")["x"]
    assert saved.shape == (64, 1, 28, 28) and saved.dtype == np.uint8
    assert not (out / "trajectories").exists()
    assert (out / "figures" / "fid_vs_nfe.png").exists()


def test_mnist_offline_is_one_clear_error(monkeypatch, capsys):
    import torchvision.datasets

    def offline(*_a, **_k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    code, _, err = _run(
        ["run", "--dataset", "mnist", "--solvers", "euler", "--out", "/nonexistent/x"], capsys
    )
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("rfbench: error: dataset 'mnist' is not on this machine")
    assert "--data-root" in line


def test_checkpoint_for_another_dataset_is_refused(mnist_root, tmp_path, capsys):
    ckpt_dir = tmp_path / "toy"
    assert (
        _run(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(ckpt_dir)], capsys)[0]
        == 0
    )
    code, _, err = _run(
        [
            "run",
            "--dataset",
            "mnist",
            "--data-root",
            str(mnist_root),
            "--checkpoint",
            str(ckpt_dir / "checkpoint.pt"),
            "--solvers",
            "euler",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 2 and "was trained on toy2d" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_missing_checkpoint_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = _run(
        [*TOY, "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)], capsys
    )
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    assert not out.exists()


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    code, _, err = _run([*TOY, "--solvers", "euler", "--out", str(blocker / "run")], capsys)
    assert code == 2 and "cannot write to output directory" in err
    assert blocker.read_text() == "keep me"


def test_data_list_and_solvers(mnist_root, capsys):
    code, out, _ = _run(["data", "list", "--data-root", str(mnist_root)], capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == {"mnist", "fashion-mnist", "cifar10", "image-folder", "toy2d"}
    assert "yes" in lines["mnist"] and "yes" in lines["toy2d"]
    code, out, _ = _run(["solvers"], capsys)
    assert code == 0 and "rk45" in out and "dopri5" in out


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "rfbench", "solvers"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "euler" in proc.stdout


def test_grid_and_stepping_axes(tmp_path, capsys):
    out = tmp_path / "axes"
    argv = [*TOY, "--num-samples", "40", "--solvers", "euler,dopri5", "--steps", "2,4"]
    argv += ["--grids", "uniform,cosine", "--stepping", "batched,per-sample", "--tols", "1e-3"]
    assert _run([*argv, "--out", str(out)], capsys)[0] == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 * 2 + 2  # euler: steps x grids; dopri5: tols x stepping
    euler = frame[frame.solver == "euler"]
    assert sorted(euler.grid.unique()) == ["cosine", "uniform"] and euler.rtol.isna().all()
    dopri = frame[frame.solver == "dopri5"].set_index("stepping")
    assert dopri.grid.isna().all()
    assert len(str(dopri.loc["per-sample", "nfe_per_batch"]).split(";")) == 40
    assert dopri.loc["per-sample", "solver_nfe"] == dopri.loc["per-sample", "nfe_per_batch"]
    assert dopri.loc["batched", "nfe_std"] == 0
    assert dopri.loc["per-sample", "per_sample_impl"] == "sequential"  # torchdiffeq: one by one
    assert pd.isna(dopri.loc["batched", "per_sample_impl"])


def test_per_sample_stepping_runs_vectorised_for_rk45_torch(tmp_path, capsys):
    out = tmp_path / "vec"
    argv = [*TOY, "--num-samples", "40", "--solvers", "rk45-torch,rk45", "--tols", "1e-4"]
    argv += ["--stepping", "per-sample", "--batch-size", "16", "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    frame = pd.read_csv(out / "results.csv").set_index("solver")
    assert frame.loc["rk45-torch", "per_sample_impl"] == "vectorised"
    assert frame.loc["rk45", "per_sample_impl"] == "sequential"
    # the same steps for every sample: the same mean and spread of NFE, one solve a batch
    for column in ("nfe", "nfe_std"):
        assert frame.loc["rk45-torch", column] == pytest.approx(frame.loc["rk45", column])
    assert frame.loc["rk45", "nfe_std"] > 0
    assert len(str(frame.loc["rk45-torch", "nfe_per_batch"]).split(";")) == 3
    assert len(str(frame.loc["rk45", "nfe_per_batch"]).split(";")) == 40


def test_report_prints_the_run_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run([*TOY, "--solvers", "euler", "--steps", "1,2", "--out", str(out)], capsys)[0] == 0
    code, md, _ = _run(["report", str(out)], capsys)
    assert code == 0 and md == (out / "table.md").read_text()
    code, csv, _ = _run(["report", str(out), "--format", "csv"], capsys)
    assert code == 0 and csv.splitlines()[0].startswith("solver,steps,nfe")
    code, _, err = _run(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err


def test_inception_without_weights_stops_before_writing(mnist_root, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["run", "--dataset", "mnist", "--data-root", str(mnist_root), "--solvers", "euler"]
    argv += ["--feature-extractor", "inception", "--inception-weights", str(tmp_path / "w.pth")]
    code, _, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in err
    assert err.count("\n") == 1 and not out.exists()


def test_report_views_over_seeds(tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = [*TOY, "--num-samples", "100", "--solvers", "euler,heun", "--steps", "2"]
    assert _run([*argv, "--seeds", "0,1,2", "--out", str(out)], capsys)[0] == 0
    code, md, _ = _run(["report", str(out), "--view", "seeds", "--metric", "swd"], capsys)
    assert code == 0 and "swd_ci_low" in md and "| euler" in md
    code, csv, _ = _run(
        [
            "report",
            str(out),
            "--view",
            "paired",
            "--baseline",
            "heun",
            "--metric",
            "swd",
            "--format",
            "csv",
        ],
        capsys,
    )
    assert code == 0 and csv.splitlines()[1].startswith("toy2d,")
    assert "swd_minus_heun_count" in csv and csv.splitlines()[1].endswith(",3")
    code, _, err = _run(["report", str(out), "--view", "paired"], capsys)
    assert code == 2 and "--baseline" in err


def _results_dir(path, model, fids, status="ok"):
    """A run directory holding only a hand-made results.csv: euler at 1 and 4 steps, rk45."""
    from rfbench.results import records_to_frame

    path.mkdir()
    rows = [
        dict(
            dataset="d",
            model_id=model,
            solver=solver,
            steps=steps,
            rtol=rtol,
            atol=rtol,
            seed=seed,
            nfe=nfe,
            fid=fid + seed,
            wall_time_s=nfe / 10,
            status=status,
        )
        for seed in (0, 1)
        for (solver, steps, rtol, nfe), fid in zip(
            [("euler", 1, None, 1), ("euler", 4, None, 4), ("rk45", None, 1e-5, 86)], fids
        )
    ]
    records_to_frame(rows).to_csv(path / "results.csv", index=False)
    return path


def test_report_pivot_and_budget_views(tmp_path, capsys):
    a = _results_dir(tmp_path / "a", "m1", (300.0, 120.0, 55.0))
    b = _results_dir(tmp_path / "b", "m2", (200.0, 100.0, 50.0))
    code, md, _ = _run(["report", str(a), str(b), "--view", "pivot"], capsys)
    assert code == 0 and "- fid: mean ± std over seeds (mean NFE per sample)" in md
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("|") and not line.startswith("|:")
    ]
    assert rows[0] == ["model", "solver", "1 step", "4 steps", "rtol 1e-05"]
    assert rows[-1] == ["m2", "rk45", "", "", "50.5 ± 0.71 (86)"]
    code, tex, _ = _run(["report", str(a), "--view", "pivot", "--format", "latex"], capsys)
    assert code == 0 and r"\toprule" in tex and r"300.5 $\pm$ 0.71 (1)" in tex
    argv = ["report", str(a), str(b), "--view", "budget", "--format", "csv"]
    code, csv, _ = _run([*argv, "--nfe-budget", "1,4", "--time-budget", "0.5"], capsys)
    assert code == 0 and csv.splitlines() == [
        "model,budget,solver,setting,nfe,wall_time_s,fid,fid_std",
        f"m1,NFE ≤ 1,euler,1 step,1.0,0.1,300.5,{2**-0.5}",
        f"m1,NFE ≤ 4,euler,4 steps,4.0,0.4,120.5,{2**-0.5}",
        f"m1,time ≤ 0.5 s,euler,4 steps,4.0,0.4,120.5,{2**-0.5}",
        f"m2,NFE ≤ 1,euler,1 step,1.0,0.1,200.5,{2**-0.5}",
        f"m2,NFE ≤ 4,euler,4 steps,4.0,0.4,100.5,{2**-0.5}",
        f"m2,time ≤ 0.5 s,euler,4 steps,4.0,0.4,100.5,{2**-0.5}",
    ]
    out = tmp_path / "budget.md"
    code, md, _ = _run(["report", str(a), "--view", "budget", "--out", str(out)], capsys)
    assert code == 0 and md == "" and "| NFE ≤ 128 | rk45     | rtol 1e-05 |" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "budget.md"]  # no .tmp left


def test_report_notes_failed_cells(tmp_path, capsys):
    a = _results_dir(tmp_path / "a", "m1", (300.0, 120.0, 55.0))
    b = _results_dir(tmp_path / "b", "m2", (200.0, 100.0, 50.0), status="failed")
    code, md, _ = _run(["report", str(a), str(b), "--view", "pivot"], capsys)
    assert code == 0 and "| m2" not in md and "_left out 6 cell(s) that did not succeed" in md
    code, csv, err = _run(["report", str(a), str(b), "--view", "pivot", "--format", "csv"], capsys)
    assert code == 0 and "left out 6 cell(s)" not in csv and "note: left out 6 cell(s)" in err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--view", "nope"], "invalid choice: 'nope'"),
        (["--view", "budget", "--nfe-budget", "0"], "> 0"),
        (["--view", "budget", "--nfe-budget", "1,,4"], "malformed"),
        (["--view", "budget", "--nfe-budget", "2.5"], "not a valid NFE budget"),
        (["--view", "budget", "--time-budget", "abc"], "not a valid time budget"),
    ],
)
def test_report_bad_options_exit_2(tmp_path, extra, needle, capsys):
    a = _results_dir(tmp_path / "a", "m1", (300.0, 120.0, 55.0))
    with pytest.raises(SystemExit) as e:
        main(["report", str(a), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--view", "pivot", "--metric", "swd"], "no values of 'swd'; they have: fid, nfe"),
        (["--view", "pivot", "--metric", "solver"], "no values of 'solver'"),
        (["--view", "pivot", "--nfe-budget", "4"], "--nfe-budget applies to --view budget only"),
        (["--view", "budget", "--baseline", "euler"], "--baseline applies to --view paired"),
        (["--view", "pivot", "--out", "/nonexistent/dir/t.md"], "cannot write /nonexistent"),
        (["MISSING"], "MISSING holds no results.csv: not a run directory"),
        (["A"], "is given twice"),
    ],
)
def test_report_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, extra, needle, capsys):
    a = _results_dir(tmp_path / "A", "m1", (300.0, 120.0, 55.0))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["report", str(a), *extra], capsys)
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1


def test_report_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: cells)",
        "(default: md)",
        "(default: fid)",
        "(default: none)",
        "(default: standard output)",
        "powers of two",
    ):
        assert default in out, default
    assert "(default: None)" not in out


def test_figures_command(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TOY, "--solvers", "euler,rk45", "--steps", "1,2", "--seeds", "0,1"]
    assert _run([*argv, "--out", str(out)], capsys)[0] == 0
    code, stdout, err = _run(["figures", str(out), "--format", "pdf,svg"], capsys)
    assert code == 0, err
    written = sorted(p.split("/")[-1] for p in stdout.split())
    assert written == sorted(
        f"{name}.{ext}"
        for name in ("swd_vs_nfe", "swd_vs_time", "straightness_vs_nfe", "trajectories")
        for ext in ("pdf", "svg")
    )
    first = {p: (out / "figures" / p).read_bytes() for p in written}
    assert _run(["figures", str(out), "--format", "pdf,svg"], capsys)[0] == 0
    assert all((out / "figures" / p).read_bytes() == b for p, b in first.items())
    code, _, err = _run(["figures", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no results.csv" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["figures", str(out), "--format", "png,gif"])
    assert e.value.code == 2 and "unknown figure format 'gif'" in capsys.readouterr().err


def test_a_run_replays_from_its_config(tmp_path, capsys):
    """``run --config RUN_DIR/config.json`` runs the same grid into a new directory; options
    given beside it override the file's."""
    first = tmp_path / "first"
    argv = [*TOY, "--solvers", "euler", "--steps", "1,2", "--seeds", "0", "--out", str(first)]
    assert main(argv) == 0
    again = tmp_path / "again"
    assert main(["run", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}
    drop = ["wall_time_s", "model_time_s", "overhead_time_s", "record_time_s", "images_per_s"]
    pd.testing.assert_frame_equal(
        pd.read_csv(first / "results.csv").drop(columns=drop),
        pd.read_csv(again / "results.csv").drop(columns=drop),
    )
    other = tmp_path / "other"
    assert (
        main(
            [
                "run",
                "--config",
                str(first / "config.json"),
                "--seeds",
                "1",
                "--steps",
                "2",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    c = json.loads((other / "config.json").read_text())
    assert c["seeds"] == [1] and c["steps"] == [2] and c["num_samples"] == a["num_samples"]
    (tmp_path / "bad.json").write_text("{ nope")
    capsys.readouterr()
    code, _, err = _run(["run", "--config", str(tmp_path / "bad.json")], capsys)
    assert code == 2 and "cannot read --config" in err and err.count("\n") == 1
    (tmp_path / "odd.json").write_text(json.dumps({**a, "warp_drive": True}))
    code, _, err = _run(["run", "--config", str(tmp_path / "odd.json")], capsys)
    assert code == 2 and "warp_drive" in err


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("preset", "nope", "unknown preset"),
        ("max_nfe", "x", "--max-nfe must be"),
        ("steps", ["a"], "--steps must be"),
        ("steps", [float("nan")], "--steps must be"),
        ("tols", ["a"], "--tols must be"),
        ("tols", [-1e-3], "--tols must be"),
        ("epochs", 0, "--epochs must be"),
        ("repeats", 0, "--repeats must be"),
        ("num_samples", 0, "--num-samples must be"),
        ("batch_size", 0, "--batch-size must be"),
        ("seeds", [0, 0], "repeats a seed"),
        ("solvers", 5, "--solvers must be a list"),
        ("checkpoint", 5, "--checkpoint must be a list"),
        ("metrics", ["nope"], "--metrics must be one of"),
        ("stepping", ["nope"], "--stepping must be one of"),
        ("reference", "bogus", "--reference must be one of"),
        ("workers", -1, "--workers must be"),
    ],
)
def test_a_config_with_a_bad_value_is_one_line(tmp_path, capsys, key, value, needle):
    """Configs reach RunConfig from --config and the API without the command line's checks:
    RunConfig makes them itself, so a hand-edited config.json ends in one line and exit 2."""
    good = RunConfig(dataset="toy2d", solvers=("euler",), steps=(1,)).to_dict()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**good, key: value}))
    out = tmp_path / "out"
    code, _, err = _run(["run", "--config", str(path), "--out", str(out)], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_train_and_reflow_refuse_an_out_they_cannot_write_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for argv in (
        ["train", "--dataset", "toy2d", "--epochs", "50", "--out", str(blocker)],
        ["train", "--dataset", "toy2d", "--epochs", "50", "--out", str(blocker / "sub")],
        ["reflow", "--checkpoint", str(tmp_path / "none.pt"), "--pairs", "8"]
        + ["--out", str(blocker)],
    ):
        code, _, err = _run(argv, capsys)
        assert code == 2 and "is not a directory" in err and err.count("\n") == 1, err
    assert blocker.read_text() == "not a directory"
