"""Samples as files: written as a cell makes them, read back for ``rfbench eval``.

Two layouts, both uint8, so that other evaluators score exactly the images rfbench scored:

- ``npz``: ADM's layout, one array ``arr_0`` [N, H, W, C] (C = 1 for grayscale data), as
  guided-diffusion's evaluator, clean-fid and dgm-eval read it. The array is written into
  the zip entry batch by batch: memory holds one batch, whatever N is.
- ``png``: a folder of ``000000.png``, ``000001.png``, ... in sample order.

Both are written beside their final name and renamed into place when the last sample is
in, so a killed cell never leaves a file that looks whole. Readers take these layouts and
image folders of PNG, JPEG, BMP or WebP files, and yield uint8 batches [B, C, H, W].
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rfbench.config import SAMPLE_LAYOUTS
from rfbench.data import to_uint8
from rfbench.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NPZ_KEY = "arr_0"


class NpzWriter:
    """Streams n uint8 images into ``path`` as ADM's ``arr_0`` [n, H, W, C]."""

    def __init__(self, path: Path, n: int, shape: tuple[int, int, int]):
        self.path, self.n, self.written = Path(path), n, 0
        c, h, w = shape
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._entry = self._zip.open(f"{NPZ_KEY}.npy", "w", force_zip64=True)
        header = {"descr": "|u1", "fortran_order": False, "shape": (n, h, w, c)}
        np.lib.format.write_array_header_1_0(self._entry, header)

    def write(self, images: torch.Tensor) -> None:
        """The next images, uint8 [B, C, H, W]."""
        if self.written + len(images) > self.n:
            raise ValueError(f"more than the {self.n} samples announced")
        self._entry.write(images.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        self.written += len(images)

    def close(self) -> Path:
        if self.written != self.n:
            raise ValueError(f"{self.written} samples written, {self.n} announced")
        self._entry.close()
        self._zip.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._entry.close()
            self._zip.close()
        except (OSError, ValueError):
            pass
        self.tmp.unlink(missing_ok=True)


class PngWriter:
    """Writes n uint8 images as ``000000.png``... into the folder ``path``."""

    def __init__(self, path: Path, n: int, shape: tuple[int, int, int]):
        self.path, self.n, self.written = Path(path), n, 0
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.digits = max(6, len(str(n - 1)))

    def write(self, images: torch.Tensor) -> None:
        from PIL import Image

        if self.written + len(images) > self.n:
            raise ValueError(f"more than the {self.n} samples announced")
        for img in images.permute(0, 2, 3, 1).numpy():
            pixels = img[..., 0] if img.shape[-1] == 1 else img
            name = f"{self.written:0{self.digits}d}.png"
            Image.fromarray(pixels).save(self.tmp / name)
            self.written += 1

    def close(self) -> Path:
        if self.written != self.n:
            raise ValueError(f"{self.written} samples written, {self.n} announced")
        if self.path.exists():  # a retried cell's earlier samples
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def sample_writer(layout: str, folder: Path, name: str, n: int, shape: tuple[int, ...]):
    """A writer of n samples of ``shape`` [C, H, W] into ``folder``, as ``name.npz`` or the
    PNG folder ``name/``."""
    if layout not in SAMPLE_LAYOUTS:
        raise ValueError(f"unknown sample layout {layout!r}")
    if len(shape) != 3:
        raise UserError("--save-samples writes images; these samples are not [C, H, W]")
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "npz":
        return NpzWriter(folder / f"{name}.npz", n, shape)
    return PngWriter(folder / name, n, shape)


class SavingStream:
    """A metric's sample stream that also writes each batch, as the uint8 the metric sees."""

    def __init__(self, inner, writer):
        self.inner, self.writer = inner, writer

    def add(self, x: torch.Tensor) -> None:
        images = to_uint8(x)
        self.writer.write(images)
        if hasattr(self.inner, "add_uint8"):
            self.inner.add_uint8(images)
        else:
            self.inner.add(x)

    def add_rows(self, rows: dict, count: int) -> None:
        self.inner.add_rows(rows, count)

    def rows(self) -> dict:
        return self.inner.rows()

    def result(self) -> dict:
        return self.inner.result()


# Section: reading.


@dataclass(frozen=True)
class SampleSource:
    """Images on disk: how many, their shape [C, H, W], and how to read them in batches."""

    path: Path
    kind: str  # "npz" or "folder"
    n: int
    shape: tuple[int, int, int]
    files: tuple[Path, ...] = ()  # a folder's images, in name order

    def content_sha256(self) -> str:
        """sha256 of the images' bytes as stored (the file, or each file in name order)."""
        import hashlib

        digest = hashlib.sha256()
        for path in (self.path,) if self.kind == "npz" else self.files:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """uint8 [B, C, H, W] batches of at most ``size`` images, in order."""
        if self.kind == "npz":
            yield from _npz_batches(self, size)
        else:
            for lo in range(0, self.n, size):
                yield torch.stack([_read_image(p, self.shape) for p in self.files[lo : lo + size]])


def open_samples(path: str | Path) -> SampleSource:
    """An ``.npz`` of ``arr_0`` [N, H, W, C] uint8, or a folder of images."""
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    return _open_npz(path)


def _open_npz(path: Path) -> SampleSource:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if f"{NPZ_KEY}.npy" not in names:
                keys = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
                raise UserError(f"{path} holds {keys}, not arr_0 (ADM's [N, H, W, C] uint8 images)")
            with z.open(f"{NPZ_KEY}.npy") as f:
                shape, fortran, dtype = _npy_header(f)
    except zipfile.BadZipFile as e:
        raise UserError(f"{path} is not a readable .npz: {e}") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path} is not a readable .npz: {e}") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or fortran:
        raise UserError(
            f"{path}: arr_0 is {dtype} of shape {list(shape)}; rfbench eval takes uint8 "
            "images [N, H, W, C] with C = 1 or 3 (ADM's layout)"
        )
    if shape[0] == 0:
        raise UserError(f"{path}: arr_0 holds no images")
    n, h, w, c = shape
    return SampleSource(path, "npz", n, (c, h, w))


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_batches(source: SampleSource, size: int) -> Iterator[torch.Tensor]:
    c, h, w = source.shape
    per_image = c * h * w
    try:
        with zipfile.ZipFile(source.path) as z, z.open(f"{NPZ_KEY}.npy") as f:
            _npy_header(f)
            for lo in range(0, source.n, size):
                count = min(size, source.n - lo)
                raw = f.read(count * per_image)
                if len(raw) != count * per_image:
                    raise UserError(f"{source.path}: arr_0 ends after {lo} images")
                arr = np.frombuffer(raw, np.uint8).reshape(count, h, w, c)
                yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).contiguous()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"{source.path} is not a readable .npz: {e}") from None


def _open_folder(path: Path) -> SampleSource:
    files = tuple(
        sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(
            f"{path} holds no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})"
        )
    shapes = {p: _header_shape(p) for p in files}  # every header read before any scoring
    first = shapes[files[0]]
    odd = next((p for p, s in shapes.items() if s != first), None)
    if odd is not None:
        raise UserError(
            f"{odd} is {list(shapes[odd])} (C, H, W), unlike the folder's first image "
            f"{list(first)}: all images must share one size and mode"
        )
    return SampleSource(path, "folder", len(files), first, files)


GREY_MODES = ("L", "1", "LA")  # one channel (LA: its alpha dropped)
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")  # three channels (alpha dropped)


def _header_shape(path: Path) -> tuple[int, int, int]:
    """An image's (C, H, W) from its header, without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode, (w, h) = img.mode, img.size
            if mode == "P":  # a palette of greys is a grey image
                mode = "L" if _grey_palette(img) else "RGB"
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if mode not in GREY_MODES + COLOUR_MODES:
        raise UserError(
            f"{path} is a {mode} image: rfbench eval takes 8-bit images (grey or colour); "
            "convert 16-bit or float images to 8 bits first"
        )
    return (1 if mode in GREY_MODES else 3, h, w)


def _grey_palette(img) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def _read_image(path: Path, shape: tuple[int, ...] | None) -> torch.Tensor:
    """One 8-bit image as uint8 [C, H, W]: grey (C = 1) or colour (C = 3), alpha dropped."""
    from PIL import Image, UnidentifiedImageError

    channels = _header_shape(path)[0]
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    x = torch.from_numpy(arr.copy())
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise UserError(
            f"{path} is {list(x.shape)} (C, H, W), unlike the folder's first image "
            f"{list(shape)}: all images must share one size and mode"
        )
    return x
