from __future__ import annotations

import io

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


def test_classifier_learns_and_is_cached(mnist_like, tmp_path):
    from rfbench.errors import UserError
    from rfbench.metrics.classifier import load_classifier_payload

    train, test, info, _ = mnist_like
    payload = torch.load(info.path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_classifier_payload(tmp_path / "edited.pt")
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


def test_equals_torch_fidelity_called_directly(mnist_like):
    """rfbench's numbers are torch-fidelity's, on the same uint8 samples and extractor."""
    import torch_fidelity

    from rfbench.data import to_uint8
    from rfbench.metrics.fidelity import UInt8Images

    train, test, _, extractor = mnist_like
    ours = samples_to_metrics(test.x, train, extractor, ("fid", "kid", "isc"))
    direct = torch_fidelity.calculate_metrics(
        input1=UInt8Images(to_uint8(test.x)),
        input2=UInt8Images(to_uint8(train.x)),
        feature_extractor=extractor.registry_name,
        feature_extractor_weights_path=extractor.weights_path,
        fid=True,
        kid=True,
        isc=True,
        kid_subset_size=len(test.x),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-9)
    assert ours["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-9)
    assert ours["isc_mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-9)


def test_stream_checks_its_count_and_keeps_only_features(mnist_like):
    from rfbench.metrics.fidelity import FidelityMetrics

    train, test, _, extractor = mnist_like
    stream = FidelityMetrics(train, extractor, ("fid", "isc")).stream(30)
    stream.add(test.x[:20])
    with pytest.raises(ValueError, match="20 samples streamed, 30 announced"):
        stream.result()
    with pytest.raises(ValueError, match="more than the 30"):
        stream.add(test.x[:11])
    stream.add(test.x[20:30])
    assert stream.result()["fid"] > 0
    # What it holds: one row of 128 features and 10 logits per sample, no images.
    assert {k: tuple(v.shape) for k, v in stream._features.items()} == {
        "feature": (30, 128),
        "logits": (30, 10),
    }


def test_reference_features_are_cached_and_checked(mnist_like, monkeypatch):
    from rfbench.config import cache_dir
    from rfbench.errors import UserError
    from rfbench.metrics.fidelity import FidelityMetrics

    train, test, _, extractor = mnist_like
    first = samples_to_metrics(test.x, train, extractor, ("fid",))
    path = cache_dir() / "fidelity" / f"{reference_cache_name(train, extractor)}-feature.pt"
    assert path.exists()

    def no_extraction(self, images):
        raise AssertionError("the reference features should come from the cache")

    with monkeypatch.context() as m:  # generated samples still need the extractor: FID only
        fm = FidelityMetrics(train, extractor, ("fid",))
        m.setattr(FidelityMetrics, "features", no_extraction)
        fm.reference_fid_statistics()
    assert samples_to_metrics(test.x, train, extractor, ("fid",)) == first

    saved = path.read_bytes()
    try:
        path.write_bytes(saved[: len(saved) // 2])  # truncated
        with pytest.raises(UserError, match="delete it"):
            samples_to_metrics(test.x, train, extractor, ("fid",))
        good = torch.load(io.BytesIO(saved), weights_only=True)
        assert good["sha256"]  # recorded with the features
        torch.save({**good, "features": good["features"] + 1e-3}, path)  # edited
        with pytest.raises(UserError, match="do not match the sha256"):
            samples_to_metrics(test.x, train, extractor, ("fid",))
        torch.save({"format": "rfbench-features-v1", "features": torch.zeros(5, 128)}, path)
        with pytest.raises(UserError, match=r"shape \[5, 128\]"):
            samples_to_metrics(test.x, train, extractor, ("fid",))
    finally:
        path.write_bytes(saved)


def test_metrics_do_not_depend_on_the_batch_size(mnist_like):
    train, test, _, extractor = mnist_like
    small = samples_to_metrics(test.x, train, extractor, ("fid",), batch_size=7)
    large = samples_to_metrics(test.x, train, extractor, ("fid",), batch_size=200)
    assert small["fid"] == pytest.approx(large["fid"], rel=1e-6)


def test_kid_of_disjoint_halves_is_near_zero(mnist_like):
    train, _, _, extractor = mnist_like
    a = samples_to_metrics(train.x[:300], _half(train, slice(300, None)), extractor, ("kid",))
    noise = samples_to_metrics(
        torch.rand_like(train.x[:300]) * 2 - 1, _half(train, slice(300, None)), extractor, ("kid",)
    )
    assert abs(a["kid_mean"]) < 0.02 * noise["kid_mean"]


def _half(split, part):
    from dataclasses import replace

    from rfbench.data import content_hash, to_uint8

    x = split.x[part]
    return replace(
        split, x=x, labels=split.labels[part], content_hash=content_hash(to_uint8(x).numpy())
    )


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_fid_rises_with_disturbance(mnist_like, kind):
    from rfbench.metrics.sanity import disturb

    train, test, _, extractor = mnist_like

    levels = [0.1, 0.3, 0.6, 1.0] if kind == "noise" else [0.5, 1.0, 2.0, 3.0]
    fids = [
        samples_to_metrics(disturb(test.x, kind, lv), train, extractor, ("fid",))["fid"]
        for lv in levels
    ]
    assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_inception_weights_missing_is_one_clear_error(tmp_path):
    from rfbench.errors import UserError
    from rfbench.metrics.inception import INCEPTION_FILE, inception_extractor

    with pytest.raises(UserError) as e:
        inception_extractor(str(tmp_path / INCEPTION_FILE))
    msg = str(e.value)
    assert "--inception-weights" in msg and "classifier" in msg and "\n" not in msg


def test_inception_weights_checksum_is_verified(tmp_path, monkeypatch):
    from rfbench.errors import UserError
    from rfbench.metrics import inception

    fake = tmp_path / inception.INCEPTION_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="sha256 starts"):
        inception.inception_extractor(str(fake))
    # A file whose digest does carry the expected prefix is accepted and named by it.
    monkeypatch.setattr(inception, "INCEPTION_SHA256_PREFIX", inception.sha256_of(fake)[:8])
    ex = inception.inception_extractor(str(fake))
    assert ex.label == f"inception-{inception.sha256_of(fake)[:8]}" and ex.rgb


def test_grey_images_are_repeated_for_rgb_extractors():
    from rfbench.metrics.fidelity import _channels_for

    grey = torch.randint(0, 255, (2, 1, 4, 4), dtype=torch.uint8)
    rgb = _channels_for(Extractor("x", "x", None, rgb=True), grey)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], grey[:, 0])
    assert _channels_for(Extractor("x", "x", None), grey) is grey


def test_precision_recall_against_an_equal_size_reference(mnist_like):
    train, test, _, extractor = mnist_like
    real = samples_to_metrics(test.x, train, extractor, ("prc",))
    noise = samples_to_metrics(torch.rand_like(test.x) * 2 - 1, train, extractor, ("prc",))
    assert set(real) == {"precision", "recall"}
    assert real["precision"] > 0.5 and real["recall"] > 0.5
    assert noise["precision"] < 0.1


def test_a_pinned_classifier_is_used_without_training(mnist_like, tmp_path, monkeypatch):
    """A classifier that ships with rfbench is taken as it is (no training, whatever the
    cache holds), by its sha256; a pinned file that does not match is one clear error."""
    import hashlib
    import shutil
    from pathlib import Path

    from rfbench.errors import UserError
    from rfbench.metrics import classifier

    train, test, info, _ = mnist_like
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    name = Path(info.path).name
    shutil.copyfile(info.path, pinned / name)
    sha = hashlib.sha256((pinned / name).read_bytes()).hexdigest()
    monkeypatch.setattr(classifier, "PINNED_DIR", pinned)
    monkeypatch.setattr(classifier, "PINNED", {name: sha})
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "empty-cache"))
    got = get_classifier(train, test, progress=False)
    assert got.name == info.name and got.path == str(pinned / name)
    data = bytearray((pinned / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pinned / name).write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its sha256"):
        get_classifier(train, test, progress=False)


def test_the_fashion_mnist_classifier_ships_with_rfbench():
    """The committed file is the one PINNED names, and the Debian package's Fashion-MNIST
    (when installed, as in CI) maps to it: the same extractor on every machine."""
    import hashlib

    from rfbench.metrics import classifier

    for name, sha in classifier.PINNED.items():
        assert hashlib.sha256((classifier.PINNED_DIR / name).read_bytes()).hexdigest() == sha
    try:
        train = load_split("fashion-mnist", "train")
    except Exception:  # noqa: BLE001 - not installed here
        pytest.skip("Fashion-MNIST is not installed")
    assert classifier.classifier_path(train).name in classifier.PINNED
    info = get_classifier(train, train, progress=False)
    assert info.name == "classifier-426cd998" and info.test_accuracy > 0.9


def test_both_metrics_follow_the_metric_protocol(mnist_like):
    from rfbench.metrics.fidelity import FidelityMetrics
    from rfbench.metrics.quality import QualityMetric, SampleStream, build_quality

    train, _, _, extractor = mnist_like
    toy = build_quality("toy2d", None, None, (), torch.device("cpu"), 10).metric
    images = FidelityMetrics(train, extractor, ("fid",))
    for metric in (toy, images):
        assert isinstance(metric, QualityMetric)
        assert isinstance(metric.stream(10), SampleStream)
