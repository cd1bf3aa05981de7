"""The offline feature extractor for MNIST-like data: a small CNN trained once per dataset.

It is cached under the content hash of its training data, and identified in every
results row as ``classifier-<first 8 hex of the sha256 of its weights>``. For Fashion-MNIST
the classifier ships with rfbench (``PINNED``), so every machine uses the same weights
under the same name; its features, and FIDs, then differ between machines only by the
floating-point rounding of their kernels. Features are the 128-d penultimate layer
("feature", for FID/KID/PRC) and the class logits ("logits", IS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from tqdm.auto import tqdm

from rfbench.atomic import atomic_torch_save, sha256_of
from rfbench.config import cache_dir
from rfbench.data import DataSplit, content_hash, from_uint8
from rfbench.errors import UserError
from rfbench.safeload import load_dict

CLASSIFIER_FORMAT = "rfbench-classifier-v2"  # bump when the network or its training changes
FEATURE_DIM = 128


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks, a 128-d feature layer with dropout, and the class logits."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (128-d features, logits)."""
        f = F.relu(self.fc(self.conv(x).flatten(1)))
        return f, self.out(self.dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


@dataclass(frozen=True)
class ClassifierInfo:
    path: str
    weights_sha256: str
    test_accuracy: float

    @property
    def name(self) -> str:
        return f"classifier-{self.weights_sha256[:8]}"


def train_classifier(
    train: DataSplit,
    test: DataSplit,
    *,
    epochs: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> tuple[SmallCNN, float]:
    """Adam with a one-cycle schedule (peak 3e-3), batch 128; returns the net and its test accuracy.

    On Fashion-MNIST this reaches about 92% test accuracy (the slow test asserts >= 90%).
    """
    if train.labels is None:
        raise UserError(
            f"dataset {train.name!r} has no labels: the classifier extractor needs them"
        )
    torch.manual_seed(seed)
    c, h, _ = train.sample_shape
    num_classes = int(train.labels.max()) + 1
    net = SmallCNN(c, h, num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = (len(train.x) + 127) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * batches)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(train.x), generator=g)
        bar = tqdm(
            perm.split(128),
            desc=f"classifier {train.name} epoch {epoch + 1}/{epochs}",
            disable=None if progress is None else not progress,
            leave=False,
        )
        net.train()
        for idx in bar:
            loss = F.cross_entropy(net(train.x[idx].to(device)), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        correct = sum(
            (net(x.to(device)).argmax(1).cpu() == y).sum().item()
            for x, y in zip(test.x.split(1000), test.labels.split(1000))
        )
    return net, correct / len(test.x)


def classifier_path(train: DataSplit) -> Path:
    version = CLASSIFIER_FORMAT.rsplit("-", 1)[1]
    return cache_dir() / "classifiers" / f"{train.name}-{train.content_hash[:16]}-{version}.pt"


# Classifiers that ship with rfbench, by the file name classifier_path gives them, with the
# sha256 of each file. Trained once (scripts/pin_classifier.py), they make a dataset's
# default feature extractor the same on every machine: a classifier trained anew on another
# machine has other weights (the CPU's kernels round differently), hence another name, and
# its FIDs cannot be compared with a committed baseline's.
PINNED_DIR = Path(__file__).parent / "pinned"
PINNED = {
    # Fashion-MNIST as the Debian package dataset-fashion-mnist (and torchvision) hold it.
    "fashion-mnist-261d33572702535f-v2.pt": (
        "426cd998a4607c86f0c085a0535d77377df7474865c0c60c3c23ec3dd5b46b35"
    ),
}


def get_classifier(
    train: DataSplit,
    test: DataSplit,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> ClassifierInfo:
    """The classifier for this training data: the pinned one that ships with rfbench where
    there is one (PINNED), else the cached one, trained on first use."""
    path = classifier_path(train)
    if path.name in PINNED:
        return _pinned(PINNED_DIR / path.name, PINNED[path.name])
    if not path.exists():
        net, acc = train_classifier(train, test, device=device, progress=progress)
        c, h, _ = train.sample_shape
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "format": CLASSIFIER_FORMAT,
                "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                "in_channels": c,
                "image_size": h,
                "num_classes": net.out.out_features,
                "data_hash": train.content_hash,
                "test_accuracy": acc,
                "state_sha256": _state_sha256(net.state_dict()),
            },
            path,
        )
    payload = load_classifier_payload(path)
    return ClassifierInfo(str(path), sha256_of(path), float(payload["test_accuracy"]))


def _pinned(path: Path, sha256: str) -> ClassifierInfo:
    try:
        actual = sha256_of(path)
    except OSError as e:
        raise UserError(
            f"the classifier pinned with rfbench, {path}, is unreadable "
            f"({e.strerror}); reinstall rfbench"
        ) from None
    if actual != sha256:
        raise UserError(
            f"the classifier pinned with rfbench, {path}, does not match its sha256 "
            f"{sha256[:12]}...; reinstall rfbench"
        )
    payload = load_classifier_payload(path)
    return ClassifierInfo(str(path), sha256, float(payload["test_accuracy"]))


def load_classifier_payload(path: str | os.PathLike) -> dict:
    payload = load_dict(
        path, "cached classifier", CLASSIFIER_FORMAT, "; delete it and rfbench retrains it"
    )
    recorded = payload.get("state_sha256")
    if recorded is not None and _state_sha256(payload["state_dict"]) != recorded:
        raise UserError(
            f"cached classifier {path} does not match the sha256 recorded in it; delete it "
            "and rfbench retrains it"
        )
    return payload


def _state_sha256(state: dict) -> str:
    return content_hash(*(v.detach().cpu().numpy() for _, v in sorted(state.items())))


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter: uint8 images [B, C, H, W] -> ("feature", "logits")."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **_kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError("the rfbench classifier needs feature_extractor_weights_path")
        payload = load_classifier_payload(feature_extractor_weights_path)
        self.net = SmallCNN(payload["in_channels"], payload["image_size"], payload["num_classes"])
        self.net.load_state_dict(payload["state_dict"])
        self.net.eval()

    @staticmethod
    def get_provided_features_list():
        return ("feature", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feature", "kid": "feature", "prc": "feature"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature, logits = self.net.features(from_uint8(x))
        out = {"feature": feature, "logits": logits}
        return tuple(out[name] for name in self.features_list)
