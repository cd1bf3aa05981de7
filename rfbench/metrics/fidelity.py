"""FID, KID, precision/recall and IS, computed by torch-fidelity's own metric functions.

Generated samples stream through the feature extractor batch by batch as they are made:
only their feature matrix is kept, never the images, so a 50k-sample FID holds 50k
feature rows and one batch of images (measured in results/feature-memory.md). The
reference split's features are extracted once, the same way, and cached
under a name that holds the data's content hash and the extractor's weights hash, so a
changed dataset or extractor can never reuse stale statistics. The cache holds plain
tensors, loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor
from tqdm.auto import tqdm

from rfbench.atomic import atomic_torch_save
from rfbench.config import cache_dir
from rfbench.data import DataSplit, content_hash, to_uint8
from rfbench.errors import UserError
from rfbench.metrics.classifier import ClassifierFeatureExtractor
from rfbench.metrics.refstats import STATS_ONLY_METRICS, ReferenceStats
from rfbench.safeload import load_dict

CLASSIFIER_EXTRACTOR = "rfbench-classifier"
if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatureExtractor)

FIDELITY_METRICS = ("fid", "kid", "prc", "isc")
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; lowered to n for smaller sample sets
PRC_SUBSET_SEED = 0
PRC_NEIGHBOURS = 3  # torch-fidelity's prc_neighborhood: precision/recall need n > this
FEATURES_FORMAT = "rfbench-features-v1"


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
    batch_size: int = 500  # images per extractor call


class FidelityMetrics:
    """The image metrics of one reference split and extractor, for any number of sample sets.

    ``stream(n)`` returns a ``FeatureStream`` that takes samples in batches. The reference's
    features and FID statistics are computed (or read from the cache) once per object.
    With ``stats`` (a file's mu and sigma) in place of a reference split, FID is the one
    metric: its FID statistics are those. With no metric (``--metrics inversion`` alone)
    the streams only count their samples, and ``extractor`` may be None.
    """

    def __init__(
        self,
        reference: DataSplit | None,
        extractor: Extractor | None,
        metrics: tuple[str, ...] = ("fid", "kid"),
        *,
        device: str | torch.device = "cpu",
        stats: ReferenceStats | None = None,
    ):
        if (reference is None) == (stats is None):
            raise ValueError("give a reference split or reference statistics, one of the two")
        self.reference, self.extractor, self.stats = reference, extractor, stats
        self.metrics = tuple(m for m in FIDELITY_METRICS if m in metrics)
        if stats is not None and set(self.metrics) - set(STATS_ONLY_METRICS):
            raise ValueError(f"reference statistics give {', '.join(STATS_ONLY_METRICS)} only")
        self.device = torch.device(device)
        self.layers = {}  # metric -> feature layer
        for m in self.metrics:
            cls = FEATURE_EXTRACTORS_REGISTRY[extractor.registry_name]
            self.layers[m] = cls.get_default_feature_layer_for_metric(m)
        self._net = None
        self._reference_features: dict[str, torch.Tensor] | None = None
        self._reference_fid_stats: dict | None = None

    @property
    def net(self):
        """The torch-fidelity feature extractor, built on first use."""
        if self._net is None:
            self._net = create_feature_extractor(
                self.extractor.registry_name,
                sorted(set(self.layers.values())),
                cuda=False,
                feature_extractor_weights_path=self.extractor.weights_path,
                verbose=False,
            ).to(self.device)
        return self._net

    def kwargs(self, n: int) -> dict:
        """The torch-fidelity options of a set of n samples (its defaults otherwise)."""
        reference_rows = n if self.reference is None else len(self.reference.x)
        return dict(
            kid_subset_size=min(KID_SUBSET_SIZE, n, reference_rows),
            save_cpu_ram=True,
            verbose=False,
        )

    @torch.no_grad()
    def features(self, images: torch.Tensor, desc: str | None = None) -> dict[str, torch.Tensor]:
        """Features of uint8 images, one extractor call per ``extractor.batch_size`` images;
        with ``desc``, a progress bar (on a terminal)."""
        out: dict[str, list[torch.Tensor]] = {}
        chunks = _channels_for(self.extractor, images).split(self.extractor.batch_size)
        for chunk in tqdm(chunks, desc=desc, leave=False, disable=None if desc else True):
            feats = self.net.convert_features_tuple_to_dict(self.net(chunk.to(self.device)))
            for k, v in feats.items():
                out.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def reference_features(self) -> dict[str, torch.Tensor]:
        """The reference split's features for the binary metrics, from the cache if there."""
        if self._reference_features is None:
            layers = sorted({self.layers[m] for m in self.metrics if m != "isc"})
            self._reference_features = self._cached_reference_features(layers)
        return self._reference_features

    def _cached_reference_features(self, layers: list[str]) -> dict[str, torch.Tensor]:
        root = cache_dir() / "fidelity"
        name = reference_cache_name(self.reference, self.extractor)
        paths = {layer: root / f"{name}-{layer}.pt" for layer in layers}
        out = {layer: _load_features(p, len(self.reference.x)) for layer, p in paths.items()}
        missing = [layer for layer, f in out.items() if f is None]
        if missing:
            ref = self.reference
            fresh = self.features(to_uint8(ref.x), desc=f"features of {ref.name} {ref.split}")
            root.mkdir(parents=True, exist_ok=True)
            for layer in missing:
                out[layer] = fresh[layer]
                features = fresh[layer]
                payload = {
                    "format": FEATURES_FORMAT,
                    "features": features,
                    "sha256": content_hash(features.numpy()),
                }
                atomic_torch_save(payload, paths[layer])
        return out

    def reference_fid_statistics(self) -> dict:
        if self.stats is not None:
            return self.stats.as_fidelity()
        if self._reference_fid_stats is None:
            feats = self.reference_features()[self.layers["fid"]]
            self._reference_fid_stats = fid_features_to_statistics(feats)
        return self._reference_fid_stats

    def stream(self, n: int) -> FeatureStream:
        return FeatureStream(self, n)


@dataclass
class FeatureStream:
    """Takes n generated samples in batches (in [-1, 1]); keeps only their features."""

    metrics: FidelityMetrics
    n: int
    _filled: int = 0
    _features: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, x: torch.Tensor) -> None:
        self.add_uint8(to_uint8(x))

    def add_uint8(self, images: torch.Tensor) -> None:
        """The next batch as uint8 images [B, C, H, W] (samples read from files)."""
        if not self.metrics.metrics:
            self.add_rows({}, len(images))
            return
        self.add_rows(self.metrics.features(images), len(images))

    def add_rows(self, rows: dict[str, torch.Tensor], count: int) -> None:
        """Append the features of ``count`` samples computed elsewhere (another process)."""
        if self._filled + count > self.n:
            raise ValueError(f"more than the {self.n} samples announced")
        for layer, f in rows.items():
            if layer not in self._features:
                self._features[layer] = torch.empty(self.n, *f.shape[1:], dtype=f.dtype)
            self._features[layer][self._filled : self._filled + count] = f
        self._filled += count

    def rows(self) -> dict[str, torch.Tensor]:
        """The features added so far, in the order they came."""
        return {layer: f[: self._filled] for layer, f in self._features.items()}

    def result(self) -> dict:
        """Schema-named metric values of the n samples.

        Precision and recall (Kynkaenniemi et al. 2019) compare equal-size sets: the
        reference is a fixed random subset of n images (its k-NN radii cost O(n^2), which
        the whole training split would make prohibitive on a CPU).
        """
        if self._filled != self.n:
            raise ValueError(f"{self._filled} samples streamed, {self.n} announced")
        fm, row = self.metrics, {}
        kwargs = fm.kwargs(self.n)
        if "fid" in fm.metrics:
            stats = fid_features_to_statistics(self._features[fm.layers["fid"]])
            if fm.stats is not None:  # a file's float64 statistics: compare in float64
                stats = {k: v.astype("float64") for k, v in stats.items()}
            out = fid_statistics_to_metric(stats, fm.reference_fid_statistics(), verbose=False)
            row["fid"] = out[KEY_METRIC_FID]
        if "kid" in fm.metrics:
            layer = fm.layers["kid"]
            out = kid_featuresdict_to_metric(
                self._features, fm.reference_features(), layer, **kwargs
            )
            row["kid_mean"] = out["kernel_inception_distance_mean"]
            row["kid_std"] = out["kernel_inception_distance_std"]
        if "isc" in fm.metrics:
            out = isc_featuresdict_to_metric(self._features, fm.layers["isc"], **kwargs)
            row["isc_mean"] = out["inception_score_mean"]
            row["isc_std"] = out["inception_score_std"]
        if "prc" in fm.metrics:
            layer = fm.layers["prc"]
            ref = fm.reference_features()[layer]
            subset = {layer: ref[_subset_indices(len(ref), self.n)]}
            out = prc_featuresdict_to_metric(self._features, subset, layer, **kwargs)
            row["precision"], row["recall"] = out["precision"], out["recall"]
        return row


def samples_to_metrics(
    samples: torch.Tensor,
    reference: DataSplit,
    extractor: Extractor,
    metrics: tuple[str, ...] = ("fid", "kid"),
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
) -> dict:
    """Compare samples in [-1, 1] with a reference split; returns schema-named values."""
    stream = FidelityMetrics(reference, extractor, metrics, device=device).stream(len(samples))
    for chunk in samples.split(batch_size):
        stream.add(chunk)
    return stream.result()


def _subset_indices(size: int, n: int) -> torch.Tensor:
    """A fixed random subset of n of ``size`` reference rows, in order."""
    if n >= size:
        return torch.arange(size)
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(PRC_SUBSET_SEED))
    return idx[:n].sort().values


def _load_features(path, rows: int) -> torch.Tensor | None:
    """Cached reference features, or None when absent; a bad file is a clear error."""
    if not path.exists():
        return None
    payload = load_dict(
        path, "cached reference features", FEATURES_FORMAT, "; delete it and rfbench recomputes it"
    )
    features = payload.get("features")
    if not isinstance(features, torch.Tensor):
        raise UserError(f"{path} is not an rfbench feature cache; delete it")
    recorded = payload.get("sha256")
    if recorded is not None and content_hash(features.numpy()) != recorded:
        raise UserError(
            f"cached reference features {path} do not match the sha256 recorded in them; "
            "delete it and rfbench recomputes it"
        )
    if features.dim() != 2 or len(features) != rows:
        raise UserError(
            f"cached reference features {path} have shape {list(features.shape)}, not "
            f"{rows} rows; delete it and rfbench recomputes it"
        )
    return features


def _channels_for(extractor: Extractor, images: torch.Tensor) -> torch.Tensor:
    if extractor.rgb and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images


def reference_cache_name(reference: DataSplit, extractor: Extractor) -> str:
    """The cache key: dataset, split, data content hash and extractor weights hash."""
    ref = reference
    return f"rfbench-{ref.name}-{ref.split}-{ref.content_hash[:16]}-{extractor.label}"
