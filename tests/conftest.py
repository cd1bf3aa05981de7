"""Shared fixtures: an isolated cache, and small IDX datasets written by the tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test sees an empty rfbench cache of its session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RFBENCH_CACHE", str(tmp_path_factory.mktemp("rfbench-cache")))
    mp.delenv("RFBENCH_DATA_ROOT", raising=False)
    yield
    mp.undo()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write an IDX file (uint8 data) the way LeCun's MNIST files are laid out."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def synthetic_digits(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n images of 10 easily told-apart classes: class k is a bright bar in band k, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, size, size))
    band = size // 10
    for i, k in enumerate(labels):
        images[i, k * band : (k + 1) * band, 4 : size - 4] = rng.integers(180, 256)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist_like(
    root: Path, n_train: int = 600, n_test: int = 200, gz: bool = True, seed: int = 0
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = synthetic_digits(n, s)
        write_idx(root / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A small MNIST-like dataset in gzipped IDX files."""
    return write_mnist_like(tmp_path_factory.mktemp("mnist-idx"))
