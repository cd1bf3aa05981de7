from __future__ import annotations

import pytest
import torch

from rfbench.data import load_split
from rfbench.metrics import energy_distance, sliced_wasserstein
from rfbench.metrics.classifier import get_classifier
from rfbench.metrics.fidelity import (
    CLASSIFIER_EXTRACTOR,
    Extractor,
    reference_cache_name,
    samples_to_metrics,
)


@pytest.fixture(scope="module")
def mnist_like(mnist_root):
    train = load_split("mnist", "train", str(mnist_root))
    test = load_split("mnist", "test", str(mnist_root))
    info = get_classifier(train, test, progress=False)
    return train, test, info, Extractor(CLASSIFIER_EXTRACTOR, info.name, info.path)


def test_classifier_learns_and_is_cached(mnist_like):
    train, test, info, _ = mnist_like
    assert info.test_accuracy > 0.95  # the synthetic classes are easy
    assert info.name.startswith("classifier-") and len(info.name) == len("classifier-") + 8
    again = get_classifier(train, test, progress=False)
    assert again == info  # the cached file, not a retrained one


def test_fid_of_a_set_against_itself_is_near_zero(mnist_like):
    train, _, _, extractor = mnist_like
    row = samples_to_metrics(train.x, train, extractor, ("fid",))
    assert abs(row["fid"]) < 1e-3
    # (KID's unbiased estimator is not 0 on one set compared with itself, since the two
    # "samples" share every point; it is tested on independent sets below.)


def test_fid_orders_real_over_noise(mnist_like):
    train, test, _, extractor = mnist_like
    real = samples_to_metrics(test.x, train, extractor, ("fid", "kid"))
    noise = samples_to_metrics(torch.rand_like(test.x) * 2 - 1, train, extractor, ("fid", "kid"))
    assert real["fid"] < 0.2 * noise["fid"]
    assert real["kid_mean"] < noise["kid_mean"]


def test_metric_selection_and_kid_subset_adapts_to_small_n(mnist_like):
    train, test, _, extractor = mnist_like
    row = samples_to_metrics(test.x[:50], train, extractor, ("kid",))
    assert set(row) == {"kid_mean", "kid_std"}
    assert samples_to_metrics(test.x, train, extractor, ()) == {}


def test_reference_cache_key_changes_with_data(mnist_like, tmp_path):
    from .conftest import write_mnist_like

    train, _, _, extractor = mnist_like
    other = load_split("mnist", "train", str(write_mnist_like(tmp_path, 600, 200, seed=5)))
    assert reference_cache_name(train, extractor) != reference_cache_name(other, extractor)
    assert train.content_hash[:16] in reference_cache_name(train, extractor)
    assert extractor.label in reference_cache_name(train, extractor)


def test_toy_distances():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 2, generator=g)
    assert sliced_wasserstein(a, a) == 0.0
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    shifted = a + torch.tensor([1.0, 0.0])
    # SW2 of a pure shift by d is |d| times the RMS of cos over random directions: 1/sqrt(2).
    assert sliced_wasserstein(a, shifted, projections=4000) == pytest.approx(2**-0.5, rel=0.05)
    assert energy_distance(a, shifted) > 0.1
