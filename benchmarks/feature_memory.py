"""Feature throughput and peak memory of the image metrics, streamed against held.

    python benchmarks/feature_memory.py --out results/feature-memory.md

Each measurement runs in a fresh Python process. After the set-up (the reference split's
features and FID statistics, the extractor, one warm-up batch), the peak resident memory
is reset (Linux ``/proc/self/clear_refs``), and n samples are generated and measured in
one of two ways:

- stream: what ``rfbench run`` does. ``generate(..., sink=stream.add, keep=64)`` hands
  each finished batch to the metric, which keeps only its feature rows;
- hold: every sample is kept, and the metric reads them afterwards (the approach rfbench
  replaced).

The "model" is one Euler step of a zero velocity (the samples are the noise, clamped), so
that the extractor dominates the time. The peak growth is the peak resident memory of the
measured phase over the resident memory at its start; on CUDA it is the peak of
``torch.cuda.max_memory_allocated`` instead. Throughput is n over the time spent inside
the extractor's calls; each cell is the median over ``--repeats`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rfbench.cli import DefaultsFormatter

MODES = ("stream", "hold")
SIZES = (2000, 10_000)
BATCH = 500
MMAP_THRESHOLD = 65536


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(mode: str, n: int, dataset: str, device: str) -> dict:
    import torch

    from rfbench.data import load_split
    from rfbench.metrics.classifier import get_classifier
    from rfbench.metrics.fidelity import CLASSIFIER_EXTRACTOR, Extractor, FidelityMetrics
    from rfbench.runtime import resolve_device
    from rfbench.sample import generate

    dev = resolve_device(device)
    train, test = load_split(dataset, "train"), load_split(dataset, "test")
    info = get_classifier(train, test, device=dev, progress=False)
    metrics = FidelityMetrics(
        train, Extractor(CLASSIFIER_EXTRACTOR, info.name, info.path), ("fid", "kid"), device=dev
    )
    metrics.reference_fid_statistics()
    metrics.features(torch.zeros(BATCH, *train.sample_shape, dtype=torch.uint8))  # warm-up
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731 - the cheapest "model"
    stream, spent = metrics.stream(n), [0.0]

    def timed_add(x: torch.Tensor) -> None:
        start = time.perf_counter()
        stream.add(x)
        spent[0] += time.perf_counter() - start

    del train, test  # only the reference features stay
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident memory
    rss_start = _status_kib("VmRSS")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    options = dict(steps=1, batch_size=BATCH, device=dev, progress=False)
    if mode == "stream":
        generate(
            zero, "euler", n, metrics.reference.sample_shape, sink=timed_add, keep=64, **options
        )
    else:
        run = generate(zero, "euler", n, metrics.reference.sample_shape, **options)
        for chunk in run.x.split(BATCH):
            timed_add(chunk)
    row = stream.result()
    peak = (
        torch.cuda.max_memory_allocated(dev)
        if dev.type == "cuda"
        else (_status_kib("VmHWM") - rss_start) * 1024
    )
    return {
        "mode": mode,
        "n": n,
        "images_per_s": n / spent[0],
        "peak_growth_bytes": peak,
        "feature_bytes": sum(f.numel() * f.element_size() for f in stream._features.values()),
        "image_bytes": n * metrics.reference.x[0].numel() * 4,
        "fid": row["fid"],
        "peak_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "RSS growth",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--out", default="results/feature-memory.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--repeats", type=int, default=3, help="processes per cell (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.dataset, args.device)))
        return 0

    import pandas as pd

    from rfbench.results import environment

    sizes = [int(s) for s in args.sizes.split(",")]
    # Large buffers are mmapped and unmapped when freed, so that the resident peak follows
    # live memory rather than glibc's caching of freed heap blocks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    rows = []
    for n in sizes:
        for mode in MODES:
            for r in range(args.repeats):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    str(n),
                    "--dataset",
                    args.dataset,
                    "--device",
                    args.device,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{mode} n={n} repeat {r + 1}: {rows[-1]}", file=sys.stderr)
    frame = pd.DataFrame(rows)
    mib = 2**20
    table = (
        frame.groupby(["n", "mode"], sort=False)
        .agg(
            images_per_s=("images_per_s", "median"),
            peak_growth_mib=("peak_growth_bytes", lambda b: b.median() / mib),
            features_mib=("feature_bytes", lambda b: b.iloc[0] / mib),
            images_mib=("image_bytes", lambda b: b.iloc[0] / mib),
            fid=("fid", "first"),
        )
        .reset_index()
    )
    env = environment()
    device = env["cuda_device"] if args.device != "cpu" and env["cuda_available"] else "CPU"
    text = [
        "# Feature throughput and peak memory: streamed against held samples",
        "",
        f"Command: `python benchmarks/feature_memory.py --out {args.out}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + "`",
        "",
        f"Machine: {device}, {env['cpu_count']} CPU cores, torch {env['torch']} "
        f"({env['torch_threads']} threads); {args.dataset}, the offline classifier extractor "
        f"(128 features + 10 logits per image), batches of {BATCH}; median of {args.repeats} "
        f"processes per row. Peak: {frame['peak_kind'].iloc[0]} during sampling and feature "
        "extraction, over the start of that phase (set-up excluded), with "
        f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} so that freed buffers leave the resident set.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        "`features_mib` is the generated set's feature matrix (what streaming keeps);",
        "`images_mib` the float32 samples that holding keeps. Same noise, so the FID of a",
        "mode's two sizes differ only by n, and stream and hold agree exactly.",
    ]
    for n in sizes:
        s = table[(table.n == n) & (table["mode"] == "stream")].iloc[0]
        h = table[(table.n == n) & (table["mode"] == "hold")].iloc[0]
        text.append(
            f"- n = {n}: stream grows {s.peak_growth_mib:.1f} MiB, hold {h.peak_growth_mib:.1f} "
            f"MiB; FID equal: {s.fid == h.fid}."
        )
    if len(sizes) > 1:
        grow = table[table["mode"] == "stream"].set_index("n")["peak_growth_mib"]
        feats = table[table["mode"] == "stream"].set_index("n")["features_mib"]
        a, b = sizes[0], sizes[-1]
        text.append(
            f"- stream, n = {a} -> {b}: the peak grows by {grow[b] - grow[a]:.1f} MiB, the "
            f"feature matrix by {feats[b] - feats[a]:.1f} MiB."
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text) + "\n")
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
