"""Slow tests on the real Fashion-MNIST (the Debian package): `tox -e slow` or `pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rfbench.cli import main
from rfbench.data import load_split

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not FASHION.is_dir(), reason="needs the Debian package dataset-fashion-mnist"
    ),
]


def test_fashion_classifier_reaches_90_percent():
    from rfbench.metrics.classifier import get_classifier

    info = get_classifier(
        load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test"), progress=False
    )
    assert info.test_accuracy >= 0.90


def test_mnist_classifier_reaches_99_percent():
    """Needs MNIST, which is not on an offline machine: set RFBENCH_DATA_ROOT (or --data-root
    style: $RFBENCH_DATA_ROOT/mnist) to its IDX files, or run where torchvision can fetch it."""
    from rfbench.errors import DatasetUnavailable
    from rfbench.metrics.classifier import get_classifier

    try:
        train, test = load_split("mnist", "train"), load_split("mnist", "test")
    except DatasetUnavailable:
        pytest.skip("MNIST is not on this machine and cannot be downloaded offline")
    info = get_classifier(train, test, progress=False)
    assert info.test_accuracy >= 0.99


def test_fashion_run_improves_with_steps(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--dataset",
            "fashion-mnist",
            "--solvers",
            "euler,rk45",
            "--steps",
            "1,8",
            "--tols",
            "1e-3",
            "--epochs",
            "1",
            "--num-samples",
            "500",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    frame = pd.read_csv(out / "results.csv")
    assert (frame["status"] == "ok").all()
    fid = frame.set_index(["solver", "steps"])["fid"]
    assert fid[("euler", 8)] < 0.5 * fid[("euler", 1)]
    rk45 = frame[frame.solver == "rk45"].iloc[0]
    assert rk45["solver_nfe"] == rk45["nfe_per_batch"]
