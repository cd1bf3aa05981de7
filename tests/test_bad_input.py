"""Inputs that once ended in a traceback, did the wrong thing, or left a half-made run
directory: each now ends in one line on stderr and exit code 2, with nothing written lost
and no run directory left behind that would force --resume on the next try."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from rfbench.cli import main
from rfbench.results import RunDir
from rfbench.train import CHECKPOINT_FORMAT

TOY = [
    "run",
    "--dataset",
    "toy2d",
    "--epochs",
    "1",
    "--num-samples",
    "60",
    "--batch-size",
    "60",
    "--solvers",
    "euler",
    "--steps",
    "1,2",
]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ".lock":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _fails_in_one_line(argv, capsys, needle: str) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()
    assert len(last) == 1 and "Traceback" not in err and needle in err, err
    return err


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "done"
    assert main([*TOY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy_of(done, tmp_path):
    def make(name: str = "copy") -> Path:
        import shutil

        return Path(shutil.copytree(done, tmp_path / name, ignore=shutil.ignore_patterns(".lock")))

    return make


def test_checkpoint_with_nothing_but_its_format(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save({"format": CHECKPOINT_FORMAT}, path)
    out = tmp_path / "run"
    _fails_in_one_line(
        [*TOY, "--checkpoint", str(path), "--out", str(out)],
        capsys,
        "holds no spec, ema, epoch, losses",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda p: p.write_bytes(os.urandom(300)), "results"),
        (lambda p: p.write_text(p.read_text().replace(",0,", ",zero,", 1)), "column seed"),
        (lambda p: p.write_text("just some text\n"), "not an rfbench results file"),
    ],
)
def test_resume_over_a_damaged_results_csv(copy_of, capsys, damage, needle):
    run = copy_of()
    damage(run / "results.csv")
    before = _digest(run)
    _fails_in_one_line([*TOY, "--out", str(run), "--resume"], capsys, needle)
    assert _digest(run) == before


def test_resume_over_a_damaged_config(copy_of, capsys):
    run = copy_of()
    (run / "config.json").write_text("{ not json")
    before = _digest(run)
    _fails_in_one_line([*TOY, "--out", str(run), "--resume"], capsys, "config.json")
    assert _digest(run) == before


@pytest.mark.parametrize("option", [["--seeds=-1"], ["--train-seed", str(2**70)]])
def test_seeds_out_of_range(tmp_path, capsys, option):
    out = tmp_path / "run"
    _fails_in_one_line([*TOY, *option, "--out", str(out)], capsys, "2**63")
    assert not out.exists()


def test_cache_that_is_a_regular_file(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("")
    monkeypatch.setenv("RFBENCH_CACHE", str(cache))
    out = tmp_path / "run"
    _fails_in_one_line([*TOY, "--out", str(out)], capsys, "is not a directory")
    assert not out.exists()  # the run it had started is undone
    monkeypatch.setenv("RFBENCH_CACHE", str(cache / "below"))
    _fails_in_one_line([*TOY, "--out", str(out)], capsys, "is not a directory")
    assert not out.exists()


def test_a_failure_after_the_run_started_leaves_no_half_made_directory(
    tmp_path, capsys, monkeypatch
):
    """The run directory is made, then model training fails (the cache is a file): into an
    existing directory of the user's, only what the run wrote is removed; a fresh one goes."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "cache"))
    written = []
    real = RunDir.create

    def create(self, *args, **kwargs):
        rows = real(self, *args, **kwargs)
        written.append(sorted(p.name for p in self.path.iterdir()))
        return rows

    monkeypatch.setattr(RunDir, "create", create)
    _fails_in_one_line([*TOY, "--out", str(out)], capsys, "is not a directory")
    assert "config.json" in written[0] and "env.json" in written[0]  # the run had started
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    _fails_in_one_line([*TOY, "--out", str(tmp_path / "fresh")], capsys, "is not a directory")
    assert len(written) == 2 and not (tmp_path / "fresh").exists()


def test_cache_behind_a_broken_link(tmp_path, capsys, monkeypatch):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "link"))
    _fails_in_one_line([*TOY, "--out", str(tmp_path / "run")], capsys, "is a broken link")
    assert not (tmp_path / "run").exists()


def test_steps_beyond_the_nfe_guard_fail_before_any_work(tmp_path, capsys):
    import time

    out = tmp_path / "run"
    start = time.perf_counter()
    _fails_in_one_line([*TOY, "--steps", "20000", "--out", str(out)], capsys, "--max-nfe 10000")
    assert time.perf_counter() - start < 30 and not out.exists()
    _fails_in_one_line(
        ["run", "--dataset", "toy2d", "--solvers", "rk4", "--steps", "2501", "--out", str(out)],
        capsys,
        "10004 network calls",
    )


def test_truncated_cached_model_names_the_file_to_delete(done, capsys, tmp_path):
    from rfbench.config import cache_dir

    (cached,) = (cache_dir() / "models").glob("toy2d-quick-e1-*.pt")
    whole = cached.read_bytes()
    try:
        cached.write_bytes(whole[:500])
        err = _fails_in_one_line([*TOY, "--out", str(tmp_path / "run")], capsys, "delete")
        assert str(cached) in err
    finally:
        cached.write_bytes(whole)
    assert not (tmp_path / "run").exists()


def test_resume_after_single_batch_cells_keeps_parquet_in_step(copy_of, capsys):
    """Cells of one batch write nfe_per_batch "1": read back, it must stay text, or the
    resumed run's new row (text) and the old ones (integers) cannot share a Parquet column."""
    pytest.importorskip("pyarrow")
    run = copy_of()
    frame = pd.read_csv(run / "results.csv")
    frame.iloc[:1].to_csv(run / "results.csv", index=False)  # as if killed after one cell
    assert main([*TOY, "--out", str(run), "--resume"]) == 0
    csv = pd.read_csv(run / "results.csv", dtype={"nfe_per_batch": str})
    parquet = pd.read_parquet(run / "results.parquet")
    assert len(csv) == len(parquet) == 2
    assert parquet["nfe_per_batch"].tolist() == csv["nfe_per_batch"].tolist() == ["1", "2"]
    assert (run / "table.md").exists()


def test_resume_keeps_every_invocation_and_retries_failed_cells(copy_of, capsys):
    import json

    run = copy_of()
    frame = pd.read_csv(run / "results.csv", dtype={"error": object})
    frame.loc[1, ["status", "error", "swd"]] = ["failed", "RuntimeError: injected", None]
    frame.to_csv(run / "results.csv", index=False)
    assert main([*TOY, "--out", str(run), "--resume"]) == 0
    after = pd.read_csv(run / "results.csv")
    assert len(after) == 2 and (after["status"] == "ok").all()
    assert sorted(after["steps"]) == [1, 2]
    invocations = json.loads((run / "env.json").read_text())["invocations"]
    assert [e["resume"] for e in invocations] == [False, True]
    assert invocations[1]["rows_done"] == 2 and invocations[0]["torch"] == torch.__version__


def test_the_largest_seeds_run_and_resume_exactly(tmp_path, capsys):
    """Seeds up to 2**63 - 1 are accepted, so they must work end to end: typed exactly in
    results.csv (no float64 detour that rounds beyond 2**53), resumed without a duplicate;
    a training seed that large trains."""
    big = [2**63 - 1, 2**53 + 1]
    out = tmp_path / "run"
    argv = [
        *TOY,
        "--steps",
        "1",
        "--seeds",
        ",".join(map(str, big)),
        "--train-seed",
        str(2**63 - 1),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert pd.read_csv(out / "results.csv", dtype=str)["seed"].tolist() == [str(b) for b in big]
    frame = pd.read_csv(out / "results.csv", dtype=str)
    frame.iloc[:1].to_csv(out / "results.csv", index=False)
    assert main([*argv, "--resume"]) == 0
    assert pd.read_csv(out / "results.csv", dtype=str)["seed"].tolist() == [str(b) for b in big]
    assert (
        main(
            [
                "train",
                "--dataset",
                "toy2d",
                "--epochs",
                "1",
                "--seed",
                str(2**63 - 1),
                "--out",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )


def test_keep_failed_leaves_failed_cells_alone(copy_of, capsys):
    run = copy_of()
    frame = pd.read_csv(run / "results.csv", dtype={"error": object})
    frame.loc[1, ["status", "error", "swd"]] = ["failed", "RuntimeError: injected", None]
    frame.to_csv(run / "results.csv", index=False)
    assert main([*TOY, "--out", str(run), "--resume", "--keep-failed"]) == 0
    after = pd.read_csv(run / "results.csv")
    assert after["status"].tolist() == ["ok", "failed"] and after.loc[1, "error"].endswith(
        "injected"
    )


def test_a_run_measured_by_an_older_rfbench_is_not_resumed(copy_of, capsys):
    """Its rows would mean other things (DOP853's NFE, overhead with the recording)."""
    import json

    run = copy_of()
    config = json.loads((run / "config.json").read_text())
    assert config["measurement_version"] == 2
    del config["measurement_version"]
    (run / "config.json").write_text(json.dumps(config))
    before = _digest(run)
    _fails_in_one_line([*TOY, "--out", str(run), "--resume"], capsys, "measurement version 1")
    assert _digest(run) == before


def test_env_json_records_the_command_that_ran(copy_of, capsys):
    import json

    run = copy_of()
    argv = [*TOY, "--out", str(run), "--resume"]
    assert main(argv) == 0
    assert json.loads((run / "env.json").read_text())["invocations"][-1]["argv"] == argv


def test_a_cache_that_is_a_file_is_one_line_from_a_fresh_process(tmp_path):
    """The dataset registry names the cache in its help text when rfbench starts: a cache
    path that is a file must not break that (found by benchmarks/reliability.py)."""
    import subprocess
    import sys

    (tmp_path / "cache").write_text("")
    env = {**os.environ, "RFBENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "rfbench", *TOY, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "is not a directory" in done.stderr
    assert not out.exists()


def test_compile_with_vectorised_per_sample_stepping(tmp_path, capsys):
    """The compiled network is compiled for fixed batch sizes; vectorised per-sample
    stepping runs it at every size as samples finish: refused before anything runs."""
    out = tmp_path / "run"
    argv = [*TOY[:-4], "--solvers", "rk45-torch", "--tols", "1e-3", "--compile"]
    _fails_in_one_line([*argv, "--stepping", "per-sample", "--out", str(out)], capsys, "compile")
    assert not out.exists()
