"""torchrun: N processes give one process's results (gloo, 2 CPU processes).

Each test launches ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m
rfbench ...`` beside a plain ``rfbench ...`` and compares what they wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rfbench.cli import main
from rfbench.distributed import World, batch_ranges, shard
from rfbench.sample import generate, merge_runs

HERE = Path(__file__).parent
EXACT = ["solver", "steps", "rtol", "seed", "status", "nfe", "nfe_per_batch", "batch_size"]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_shards_cover_every_batch_once():
    batches = batch_ranges(300, 64)
    assert batches == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]
    shares = [shard(batches, World(rank, 2)) for rank in range(2)]
    assert shares == [[(0, 64), (128, 192), (256, 300)], [(64, 128), (192, 256)]]
    assert shard(batches, World(2, 3)) == [(128, 192)]


def test_merged_shares_equal_one_solve():
    """integrate(ranges=...) on each share, merged, is the single solve, number for number."""
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    velocity = lambda x, t: model(x) * (1 + t[:, None])  # noqa: E731
    whole = generate(
        velocity,
        "dopri5",
        90,
        (2,),
        rtol=1e-4,
        atol=1e-4,
        batch_size=20,
        record=True,
        keep=50,
        progress=False,
    )
    shares = [
        generate(
            velocity,
            "dopri5",
            90,
            (2,),
            rtol=1e-4,
            atol=1e-4,
            batch_size=20,
            record=True,
            keep=50,
            progress=False,
            ranges=shard(batch_ranges(90, 20), World(r, 2)),
        )
        for r in range(2)
    ]
    merged = merge_runs(shares)
    assert merged.nfe_per_solve == whole.nfe_per_solve
    assert merged.solve_ranges == whole.solve_ranges
    assert torch.equal(merged.x, whole.x)
    assert torch.equal(merged.straightness, whole.straightness)
    assert merged.wall_time_s == pytest.approx(sum(s.wall_time_s for s in shares))
    assert merged.elapsed_s == max(s.wall_time_s for s in shares)


def test_torchrun_sampling_equals_one_process(tmp_path, capsys):
    """toy2d: 5 batches split 3 / 2; fixed-step, scipy and torchdiffeq solvers."""
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(tmp_path / "m")]) == 0
    ckpt = str(tmp_path / "m" / "checkpoint.pt")
    common = [
        "--dataset",
        "toy2d",
        "--solvers",
        "euler,rk45,dopri5",
        "--steps",
        "1,4",
        "--tols",
        "1e-4",
        "--num-samples",
        "300",
        "--batch-size",
        "64",
        "--checkpoint",
        ckpt,
    ]
    assert main(["run", *common, "--out", str(tmp_path / "one")]) == 0
    done = torchrun("-m", "rfbench", "run", *common, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / d / "results.csv") for d in ("one", "two"))
    assert (one["world_size"] == 1).all() and (two["world_size"] == 2).all()
    pd.testing.assert_frame_equal(one[EXACT], two[EXACT])
    for col in ("swd", "energy_distance", "straightness", "curvature"):
        np.testing.assert_allclose(two[col], one[col], rtol=1e-9, err_msg=col)
    for f in sorted((tmp_path / "one" / "samples").iterdir()):
        assert np.array_equal(np.load(f)["x"], np.load(tmp_path / "two" / "samples" / f.name)["x"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


@pytest.mark.slow
def test_torchrun_fid_equals_one_process(mnist_root, tmp_path):
    """Images: features computed on each rank, gathered in sample order, FID and KID once.
    Slow (minutes on a 2-core CPU: two trainings, a classifier, two processes); the toy2d
    test above checks the same sharding and gathering in the default suite."""
    root = str(mnist_root)
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data-root",
                root,
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    ckpt = str(tmp_path / "m" / "checkpoint.pt")
    common = [
        "--dataset",
        "mnist",
        "--data-root",
        root,
        "--solvers",
        "euler,dopri5",
        "--steps",
        "2",
        "--tols",
        "1e-3",
        "--num-samples",
        "200",
        "--batch-size",
        "64",
        "--metrics",
        "fid,kid,prc",
        "--checkpoint",
        ckpt,
    ]
    assert main(["run", *common, "--out", str(tmp_path / "one")]) == 0  # trains the classifier
    done = torchrun("-m", "rfbench", "run", *common, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / d / "results.csv") for d in ("one", "two"))
    pd.testing.assert_frame_equal(one[EXACT], two[EXACT])
    for col in ("fid", "kid_mean", "kid_std", "precision", "recall", "straightness"):
        np.testing.assert_allclose(two[col], one[col], rtol=1e-6, err_msg=col)
    assert one["fid"].notna().all()


def test_torchrun_training_equals_one_process(tmp_path):
    """DDP over 2 ranks (each half of every global batch, a last batch of one sample) ends
    where one process ends, up to floating-point reduction order."""
    script = str(HERE / "ddp_train.py")
    alone = subprocess.run(
        [sys.executable, script, str(tmp_path / "one.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    done = torchrun(script, str(tmp_path / "two.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    assert one["step"] == two["step"] == 2 * 3  # 129 images in batches of 64: 64, 64, 1
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    for part in ("model", "ema"):
        for name, tensor in one[part].items():
            torch.testing.assert_close(two[part][name], tensor, rtol=1e-4, atol=1e-5)
    assert not torch.equal(one["model"]["net.0.weight"], one["ema"]["net.0.weight"])


def test_commands_other_than_run_and_train_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["solvers"]) == 2
    assert "only run and train" in capsys.readouterr().err


def test_a_refusal_on_rank_0_stops_every_rank(tmp_path):
    """A busy --out (an existing run without --resume) is rank 0's to find; every rank
    stops at once instead of waiting for it, and the directory is untouched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("keep me\n")
    done = torchrun(
        "-m",
        "rfbench",
        "run",
        "--dataset",
        "toy2d",
        "--solvers",
        "euler",
        "--steps",
        "1",
        "--num-samples",
        "10",
        "--epochs",
        "1",
        "--out",
        str(out),
        timeout=120,
    )
    assert done.returncode != 0
    assert "rfbench: error:" in done.stderr
    assert (out / "results.csv").read_text() == "keep me\n"
