from __future__ import annotations

import numpy as np
import pytest
import torch

from rfbench import data
from rfbench.errors import DataFormatError, DatasetUnavailable, UserError

from .conftest import synthetic_digits, write_idx, write_mnist_like


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images, _ = synthetic_digits(7, seed=3)
    path = write_idx(tmp_path / "x-idx3-ubyte", images, gz=gz)
    np.testing.assert_array_equal(data.read_idx(path), images)


def test_read_idx_rejects_truncated_and_bad_magic(tmp_path):
    images, _ = synthetic_digits(5, seed=0)
    path = write_idx(tmp_path / "x", images)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="truncated"):
        data.read_idx(path)
    path.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataFormatError, match="magic"):
        data.read_idx(path)
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataFormatError, match="gzip"):
        data.read_idx(path)


@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw", "FashionMNIST/raw"])
def test_find_idx_dir_layouts(tmp_path, layout):
    write_mnist_like(tmp_path / layout, n_train=20, n_test=10, gz=layout == "raw")
    assert data.find_idx_dir(tmp_path) == tmp_path / layout


def test_load_mnist_from_data_root(mnist_root):
    train = data.load_split("mnist", "train", str(mnist_root))
    test = data.load_split("mnist", "test", str(mnist_root))
    assert train.x.shape == (600, 1, 28, 28) and test.x.shape == (200, 1, 28, 28)
    assert train.x.min() >= -1 and train.x.max() <= 1
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) <= set(range(10))
    images, labels = synthetic_digits(600, seed=0)
    np.testing.assert_array_equal(data.to_uint8(train.x).squeeze(1).numpy(), images)
    assert train.content_hash == data.content_hash(images, labels)
    assert train.content_hash != test.content_hash


def test_env_root_is_searched(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "mnist", n_train=20, n_test=10)
    monkeypatch.setenv("RFBENCH_DATA_ROOT", str(tmp_path))
    assert data.DATASETS["mnist"].locate(None) == str(tmp_path / "mnist")


def test_uint8_round_trip_is_exact():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(data.to_uint8(data.from_uint8(u)), u)


def _offline(monkeypatch):
    """Make every torchvision download fail as it does without internet."""
    import torchvision.datasets

    def fail(*_a, **_k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error>")

    for cls in ("MNIST", "FashionMNIST", "CIFAR10"):
        monkeypatch.setattr(torchvision.datasets, cls, fail)


def test_missing_mnist_names_every_way_to_provide_it(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(DatasetUnavailable) as e:
        data.load_split("mnist", "train")
    msg = str(e.value)
    assert "--data-root" in msg and "RFBENCH_DATA_ROOT" in msg and "online" in msg
    assert "\n" not in msg


def test_missing_fashion_mentions_debian_package(monkeypatch, tmp_path):
    _offline(monkeypatch)
    source = data._IdxSource("fashion-mnist", "FashionMNIST", (str(tmp_path / "not-installed"),))
    with pytest.raises(DatasetUnavailable) as e:
        source.load("train", None)
    assert "apt-get install -y dataset-fashion-mnist" in str(e.value)
    assert "--data-root" in str(e.value) and "RFBENCH_DATA_ROOT" in str(e.value)


def test_data_root_without_files_is_an_error(tmp_path):
    with pytest.raises(DatasetUnavailable, match="does not hold"):
        data.load_split("mnist", "train", str(tmp_path))


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="choose from: mnist, fashion-mnist"):
        data.load_split("svhn")


def test_toy2d_is_deterministic_and_ring_shaped():
    a, b = data.load_split("toy2d"), data.load_split("toy2d")
    assert torch.equal(a.x, b.x) and a.content_hash == b.content_hash
    radius = a.x.norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.02
    moons = data.toy2d_sample(100, 0, "moons")
    assert moons.shape == (100, 2)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    with pytest.raises(DataFormatError, match="mixed sizes"):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(
            tmp_path / "odd.png"
        )
        data.load_split("image-folder", "train", str(tmp_path))
    split = data.load_split("image-folder", "train", str(tmp_path), image_size=16)
    assert split.x.shape == (5, 3, 16, 16) and split.labels is None


def test_image_folder_empty(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no images"):
        data.load_split("image-folder", "train", str(tmp_path))
