"""Dataset registry: every dataset becomes a float tensor in [-1, 1] (images) or R^2 (toy2d).

Where the files come from, for the IDX datasets (MNIST, Fashion-MNIST), in this order:

1. ``--data-root DIR`` (``data_root=``), when given: only there.
2. ``$RFBENCH_DATA_ROOT/<name>``.
3. The system location, for Fashion-MNIST the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist``).
4. rfbench's download cache, ``<cache>/data/<name>`` (torchvision's layout).
5. A torchvision download into (4), when online.

In each directory the IDX files may sit at the top, under ``raw/``, or under torchvision's
``MNIST/raw`` and ``FashionMNIST/raw``; each may be raw or gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rfbench.config import cache_dir, cache_path
from rfbench.errors import DataFormatError, DatasetUnavailable, UserError


@dataclass(frozen=True)
class DataSplit:
    """One split of a dataset, ready for training and metrics."""

    name: str
    split: str  # "train" or "test"
    x: torch.Tensor  # float32; images [N, C, H, W] in [-1, 1], toy2d points [N, 2]
    labels: torch.Tensor | None  # int64 [N], where the dataset has classes
    content_hash: str  # sha256 of the raw content: keys every cache built from this data
    source: str  # where it was read from

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to find it, load it, and say how to provide it."""

    name: str
    kind: str  # "image" or "toy"
    source: str  # one line for `rfbench data list`
    how_to_provide: str  # every way to provide it, for the unavailable message
    locate: Callable[[str | None], str | None]  # data_root -> where it is found, or None
    load: Callable[..., DataSplit]  # (split, data_root, **options) -> DataSplit


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_split(
    name: str, split: str = "train", data_root: str | None = None, **options
) -> DataSplit:
    """Load one split of a registered dataset.

    >>> data = load_split("toy2d", "train")
    >>> data.x.shape
    torch.Size([20000, 2])
    """
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; choose from: train, test")
    return get_dataset(name).load(split, data_root, **options)


# Conversion for metrics.


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounding to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.to(torch.float32) / 127.5 - 1.0


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over the shapes, dtypes and bytes of the arrays."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# IDX files (MNIST, Fashion-MNIST).

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), raw or gzipped, checking header and length."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"corrupt gzip in IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"not an IDX file (bad magic number): {path}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataFormatError(f"truncated IDX header: {path}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(
            f"IDX file {path} holds {len(raw) - header} data bytes, its header promises {expected} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_idx_dir(root: str | os.PathLike) -> Path | None:
    """The directory under ``root`` that holds the four IDX files, or None."""
    for sub in _IDX_SUBDIRS:
        d = Path(root) / sub
        stems = _IDX_FILES["train"] + _IDX_FILES["test"]
        if all(_idx_file(d, s) for s in stems):
            return d
    return None


@dataclass(frozen=True)
class _IdxSource:
    """An MNIST-like dataset stored as IDX files."""

    name: str
    torchvision_class: str | None  # for the download step
    system_dirs: tuple[str, ...]

    def candidate_roots(self, data_root: str | None) -> list[Path]:
        if data_root is not None:
            return [Path(data_root)]
        roots = []
        if os.environ.get("RFBENCH_DATA_ROOT"):
            roots.append(Path(os.environ["RFBENCH_DATA_ROOT"]) / self.name)
        roots += [Path(d) for d in self.system_dirs]
        roots.append(cache_dir() / "data" / self.name)
        return roots

    def locate(self, data_root: str | None) -> str | None:
        for root in self.candidate_roots(data_root):
            found = find_idx_dir(root)
            if found is not None:
                return str(found)
        return None

    def how_to_provide(self) -> str:
        ways = [
            "pass --data-root DIR holding the four IDX files (raw or .gz)",
            f"set RFBENCH_DATA_ROOT so that $RFBENCH_DATA_ROOT/{self.name} holds them",
        ]
        if self.system_dirs:
            ways.append(
                "install the Debian package dataset-fashion-mnist (as root: apt-get update "
                "&& apt-get install -y dataset-fashion-mnist)"
            )
        if self.torchvision_class:
            ways.append(
                "go online once, and torchvision downloads it to "
                f"{cache_path() / 'data' / self.name}"
            )
        return "; or ".join(ways)

    def download(self) -> None:
        import torchvision.datasets

        root = cache_dir() / "data" / self.name
        print(f"rfbench: downloading {self.name} with torchvision to {root}", file=sys.stderr)
        cls = getattr(torchvision.datasets, self.torchvision_class)
        try:
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - any network failure means "offline" here
            raise DatasetUnavailable(
                f"dataset {self.name!r} is not on this machine and the download failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}). "
                f"To provide it: {self.how_to_provide()}"
            ) from None

    def load(self, split: str, data_root: str | None, **_options) -> DataSplit:
        found = self.locate(data_root)
        if found is None and data_root is not None:
            raise DatasetUnavailable(
                f"--data-root {data_root} does not hold the {self.name} IDX files "
                f"({', '.join(_IDX_FILES['train'] + _IDX_FILES['test'])}, raw or .gz, at its top, "
                f"under raw/, MNIST/raw/ or FashionMNIST/raw/)"
            )
        if found is None and self.torchvision_class:
            self.download()
            found = self.locate(None)
        if found is None:
            raise DatasetUnavailable(
                f"dataset {self.name!r} is not on this machine. "
                f"To provide it: {self.how_to_provide()}"
            )
        images_file, labels_file = (_idx_file(Path(found), s) for s in _IDX_FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFormatError(
                f"{images_file} and {labels_file} do not form an image/label pair "
                f"(shapes {images.shape} and {labels.shape})"
            )
        x = from_uint8(torch.from_numpy(images.copy())).unsqueeze(1)
        return DataSplit(
            name=self.name,
            split=split,
            x=x,
            labels=torch.from_numpy(labels.astype(np.int64)),
            content_hash=content_hash(images, labels),
            source=found,
        )


def _register_idx(name: str, torchvision_class: str, system_dirs: tuple[str, ...], source: str):
    src = _IdxSource(name, torchvision_class, system_dirs)
    register_dataset(
        DatasetSpec(
            name=name,
            kind="image",
            source=source,
            how_to_provide=src.how_to_provide(),
            locate=src.locate,
            load=src.load,
        )
    )


_register_idx("mnist", "MNIST", (), "torchvision download (online), or IDX files via --data-root")
_register_idx(
    "fashion-mnist",
    "FashionMNIST",
    ("/usr/share/datasets/fashion-mnist",),
    "Debian package dataset-fashion-mnist; torchvision download (online); or --data-root",
)


# CIFAR-10 (torchvision's python pickle batches).


def _cifar_root(data_root: str | None) -> Path:
    return Path(data_root) if data_root else cache_dir() / "data" / "cifar10"


def _cifar_locate(data_root: str | None) -> str | None:
    d = _cifar_root(data_root) / "cifar-10-batches-py"
    return str(d) if (d / "data_batch_1").is_file() and (d / "test_batch").is_file() else None


_CIFAR_HINT = (
    "pass --data-root DIR holding cifar-10-batches-py/ (torchvision's format); or go online "
    "once, and torchvision downloads it to " + str(cache_path() / "data" / "cifar10")
)


def _cifar_load(split: str, data_root: str | None, **_options) -> DataSplit:
    import torchvision.datasets

    root = _cifar_root(data_root)
    present = _cifar_locate(data_root) is not None
    if not present and data_root is not None:
        raise DatasetUnavailable(f"--data-root {data_root} does not hold cifar-10-batches-py/")
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=not present)
    except Exception as e:  # noqa: BLE001 - a failed download, offline
        raise DatasetUnavailable(
            "dataset 'cifar10' is not on this machine and the download failed "
            f"({type(e).__name__}). "
            f"To provide it: {_CIFAR_HINT}"
        ) from None
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW uint8
    labels = np.asarray(ds.targets, dtype=np.int64)
    return DataSplit(
        name="cifar10",
        split=split,
        x=from_uint8(torch.from_numpy(images)),
        labels=torch.from_numpy(labels),
        content_hash=content_hash(images, labels),
        source=str(root / "cifar-10-batches-py"),
    )


register_dataset(
    DatasetSpec(
        name="cifar10",
        kind="image",
        source="torchvision download (online), or --data-root",
        how_to_provide=_CIFAR_HINT,
        locate=_cifar_locate,
        load=_cifar_load,
    )
)


# Image folders (AFHQ-cat and the like).

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _folder_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())


def _folder_locate(data_root: str | None) -> str | None:
    if data_root and Path(data_root).is_dir() and _folder_files(Path(data_root)):
        return data_root
    return None


def _folder_load(
    split: str, data_root: str | None, image_size: int | None = None, **_options
) -> DataSplit:
    """Every image under data_root, RGB; resized and centre-cropped when image_size is given.

    There is no held-out split: "test" returns the same images as "train".
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    if data_root is None:
        raise DatasetUnavailable("dataset 'image-folder' needs --data-root DIR, a folder of images")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetUnavailable(f"--data-root {data_root} is not a directory")
    files = _folder_files(root)
    if not files:
        raise DatasetUnavailable(
            f"--data-root {data_root} holds no images ({', '.join(sorted(_IMAGE_EXTS))})"
        )
    arrays = []
    for f in files:
        try:
            img = Image.open(f).convert("RGB")
        except OSError as e:
            raise DataFormatError(f"cannot read image {f}: {e}") from None
        if image_size is not None:
            img = TF.center_crop(TF.resize(img, image_size), image_size)
        arrays.append(np.asarray(img))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DataFormatError(
            f"images under {data_root} have mixed sizes {sorted(sizes)[:3]}...; "
            "pass --image-size N "
            "to resize and centre-crop them"
        )
    images = np.stack(arrays).transpose(0, 3, 1, 2).copy()
    return DataSplit(
        name="image-folder",
        split=split,
        x=from_uint8(torch.from_numpy(images)),
        labels=None,
        content_hash=content_hash(images),
        source=str(root),
    )


register_dataset(
    DatasetSpec(
        name="image-folder",
        kind="image",
        source="any folder of images, via --data-root (--image-size)",
        how_to_provide="pass --data-root DIR, a folder of PNG/JPEG images",
        locate=_folder_locate,
        load=_folder_load,
    )
)


# toy2d: generated 2-D distributions with a known sampler.

TOY_TRAIN_SIZE = 20_000
TOY_TEST_SIZE = 5_000


def toy2d_sample(n: int, seed: int, kind: str = "8gaussians") -> torch.Tensor:
    """n points of a 2-D distribution: "8gaussians" (ring of 8, std 0.1, radius 2) or "moons"."""
    g = torch.Generator().manual_seed(seed)
    if kind == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        angle = k.to(torch.float64) * (2 * np.pi / 8)
        centres = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
        return (centres + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    if kind == "moons":
        u = torch.rand(n, generator=g, dtype=torch.float64) * np.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, u.cos(), 1 - u.cos())
        y = torch.where(upper, u.sin(), 0.5 - u.sin())
        pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
        return (pts + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    raise UserError(f"unknown toy2d distribution {kind!r}; choose from: 8gaussians, moons")


def _toy_load(
    split: str, data_root: str | None, toy_kind: str = "8gaussians", **_options
) -> DataSplit:
    n, seed = (TOY_TRAIN_SIZE, 1) if split == "train" else (TOY_TEST_SIZE, 2)
    x = toy2d_sample(n, seed, toy_kind)
    return DataSplit(
        name="toy2d",
        split=split,
        x=x,
        labels=None,
        content_hash=content_hash(x.numpy()),
        source=f"generated ({toy_kind})",
    )


register_dataset(
    DatasetSpec(
        name="toy2d",
        kind="toy",
        source="generated 2-D mixture of 8 Gaussians (seconds on a CPU)",
        how_to_provide="always available",
        locate=lambda _root: "generated",
        load=_toy_load,
    )
)
