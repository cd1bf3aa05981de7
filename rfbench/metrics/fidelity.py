"""FID, KID, precision/recall and IS through torch-fidelity's ``calculate_metrics``.

Generated samples go in as a Dataset of uint8 tensors (never as a generator object: a
conditional generator crashes inside torch-fidelity 0.4.0). Reference features are cached
by torch-fidelity under a name that holds the data's content hash and the extractor's
weights hash, so a changed dataset or extractor can never reuse stale statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from rfbench.config import cache_dir
from rfbench.data import DataSplit, content_hash, to_uint8
from rfbench.metrics.classifier import ClassifierFeatureExtractor

CLASSIFIER_EXTRACTOR = "rfbench-classifier"
if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatureExtractor)

FIDELITY_METRICS = ("fid", "kid", "prc", "isc")
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; lowered to n for smaller sample sets


class UInt8Images(Dataset):
    """A tensor of uint8 images [N, C, H, W] as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError("UInt8Images needs uint8 images")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@dataclass(frozen=True)
class Extractor:
    """A registered torch-fidelity feature extractor and the weights it loads."""

    registry_name: str  # the name registered with torch-fidelity
    label: str  # what the feature_extractor column says, e.g. classifier-1a2b3c4d
    weights_path: str | None
    rgb: bool = False  # takes 3-channel images only: grey images are repeated to RGB


def samples_to_metrics(
    samples: torch.Tensor,
    reference: DataSplit,
    extractor: Extractor,
    metrics: tuple[str, ...] = ("fid", "kid"),
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> dict:
    """Compare samples in [-1, 1] with a reference split; returns schema-named values.

    Precision and recall (Kynkaenniemi et al. 2019) compare equal-size sets: the reference
    is a fixed random subset of n images (its k-NN radii cost O(n^2), which the whole
    training split would make prohibitive on a CPU).
    """
    wanted = {m: m in metrics for m in FIDELITY_METRICS}
    row: dict = {}
    if wanted["fid"] or wanted["kid"] or wanted["isc"]:
        out = _calculate(samples, reference, extractor, device, batch_size,
                         fid=wanted["fid"], kid=wanted["kid"], isc=wanted["isc"])  # fmt: skip
        if wanted["fid"]:
            row["fid"] = out["frechet_inception_distance"]
        if wanted["kid"]:
            row["kid_mean"] = out["kernel_inception_distance_mean"]
            row["kid_std"] = out["kernel_inception_distance_std"]
        if wanted["isc"]:
            row["isc_mean"] = out["inception_score_mean"]
            row["isc_std"] = out["inception_score_std"]
    if wanted["prc"]:
        out = _calculate(samples, _subset(reference, len(samples)), extractor, device,
                         batch_size, prc=True)  # fmt: skip
        row["precision"], row["recall"] = out["precision"], out["recall"]
    return row


def _calculate(samples, reference: DataSplit, extractor: Extractor, device, batch_size,
               **metrics) -> dict:  # fmt: skip
    n = len(samples)
    return torch_fidelity.calculate_metrics(
        input1=UInt8Images(_channels_for(extractor, to_uint8(samples))),
        input2=UInt8Images(_channels_for(extractor, to_uint8(reference.x))),
        input2_cache_name=reference_cache_name(reference, extractor),
        cache_root=str(cache_dir() / "fidelity"),
        feature_extractor=extractor.registry_name,
        feature_extractor_weights_path=extractor.weights_path,
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        kid_subset_size=min(KID_SUBSET_SIZE, n, len(reference.x)),
        save_cpu_ram=True,  # no DataLoader worker processes for in-memory tensors
        verbose=False,
        **metrics,
    )


PRC_SUBSET_SEED = 0


def _subset(reference: DataSplit, n: int) -> DataSplit:
    """A fixed random subset of n reference images, with its own content hash."""
    if n >= len(reference.x):
        return reference
    idx = torch.randperm(len(reference.x), generator=torch.Generator().manual_seed(PRC_SUBSET_SEED))
    x = reference.x[idx[:n].sort().values]
    return replace(reference, x=x, labels=None, content_hash=content_hash(to_uint8(x).numpy()))


def _channels_for(extractor: Extractor, images: torch.Tensor) -> torch.Tensor:
    if extractor.rgb and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images


def reference_cache_name(reference: DataSplit, extractor: Extractor) -> str:
    """The cache key: dataset, split, data content hash and extractor weights hash."""
    ref = reference
    return f"rfbench-{ref.name}-{ref.split}-{ref.content_hash[:16]}-{extractor.label}"
