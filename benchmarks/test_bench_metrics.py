"""pytest-benchmark: feature extraction and the FID computation (classifier extractor).

The extractor is the offline classifier's network with random weights (its speed does not
depend on them), saved as rfbench's classifier payload; the reference is 2000 random images.
"""

from __future__ import annotations

import os

import pytest
import torch

from rfbench.data import DataSplit
from rfbench.metrics.classifier import CLASSIFIER_FORMAT, SmallCNN
from rfbench.metrics.fidelity import CLASSIFIER_EXTRACTOR, Extractor, FidelityMetrics

N = 2000


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    """FidelityMetrics over a random reference; its feature cache in a temporary folder."""
    saved = os.environ.get("RFBENCH_CACHE")
    os.environ["RFBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.manual_seed(0)
    net = SmallCNN(1, 28, 10)
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    torch.save(
        {
            "format": CLASSIFIER_FORMAT,
            "state_dict": net.state_dict(),
            "in_channels": 1,
            "image_size": 28,
            "num_classes": 10,
            "data_hash": "bench",
            "test_accuracy": 0.0,
        },
        path,
    )
    g = torch.Generator().manual_seed(1)
    ref = DataSplit(
        "bench", "train", torch.rand(N, 1, 28, 28, generator=g) * 2 - 1, None, "bench", "random"
    )
    fm = FidelityMetrics(
        ref, Extractor(CLASSIFIER_EXTRACTOR, "classifier-bench", str(path)), ("fid",)
    )
    fm.reference_fid_statistics()
    yield fm
    if saved is None:
        os.environ.pop("RFBENCH_CACHE")
    else:
        os.environ["RFBENCH_CACHE"] = saved


def test_feature_extraction(benchmark, metrics):
    images = (torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 255).to(
        torch.uint8
    )
    feats = benchmark.pedantic(metrics.features, args=(images,), rounds=3, iterations=1)
    benchmark.extra_info["images"] = N
    assert feats["feature"].shape == (N, 128)


def test_fid_from_a_stream(benchmark, metrics):
    x = torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def fid() -> float:
        stream = metrics.stream(N)
        for chunk in x.split(500):
            stream.add(chunk)
        return stream.result()["fid"]

    value = benchmark.pedantic(fid, rounds=3, iterations=1)
    benchmark.extra_info["images"] = N
    assert value >= 0
