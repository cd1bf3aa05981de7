"""rfbench's training epoch (DataLoader, shares, checkpoint-free) against a bare epoch loop.

    python benchmarks/train_epoch.py --out results/train-epoch.md

Both train the quick UNet for one epoch over the first ``--images`` training images with
the same batches, noise and times: the bare loop indexes the tensor and calls
``train_step``; rfbench's ``train()`` fetches the batches through its DataLoader (no
workers on a CPU) and does its per-step bookkeeping. They alternate for ``--rounds``
rounds; the report gives the median epoch time of each and the throughput ratio
rfbench / bare (target: >= 0.95), and checks that both ended with the same weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from targets import target  # benchmarks/targets.py

from rfbench import candidates
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split
from rfbench.flow import sample_t
from rfbench.models import build_model
from rfbench.results import environment
from rfbench.train import ModelSpec, train, train_step, weights_hash

TARGET = 0.95


def bare_epoch(spec: ModelSpec, x: torch.Tensor) -> str:
    """One epoch as train() defines it (same draws, same order), without its machinery."""
    cfg = spec.train
    torch.manual_seed(cfg.seed)
    model = build_model(spec.sample_shape, spec.unet, spec.mlp)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003)
    perm = torch.randperm(len(x), generator=g)
    model.train()
    for step, idx in enumerate(perm.split(cfg.batch_size)):
        x1 = x[idx]
        noise = torch.randn(x1.shape, generator=g)
        t = sample_t(len(idx), generator=g, dist=cfg.timesteps)
        train_step(model, ema, opt, noise, x1, t, cfg, step).item()
    return weights_hash(ema)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--out", default="results/train-epoch.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=6400, help="training images in the epoch")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    args = p.parse_args(argv)

    data = load_split(args.dataset, "train", args.data_root)
    spec = candidates.model_spec(args.dataset, "quick", data, 0, 1)
    spec = replace(spec, train=replace(spec.train, max_train_images=args.images))
    x = data.x[: args.images]
    times: dict[str, list[float]] = {"rfbench": [], "bare": []}
    hashes = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        hashes["rfbench"] = weights_hash(train(spec, data, progress=False).model)
        times["rfbench"].append(time.perf_counter() - start)
        start = time.perf_counter()
        hashes["bare"] = bare_epoch(spec, x)
        times["bare"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["bare"] / med["rfbench"]
    env = environment()
    text = "\n".join(
        [
            "# Training epoch: rfbench's train() against a bare loop",
            "",
            f"Command: `python benchmarks/train_epoch.py {' '.join(argv or sys.argv[1:])}`",
            f"Machine: 2-core CPU ({torch.get_num_threads()} torch threads); torch {env['torch']}; "
            f"git commit {env['git_commit']}. Quick UNet, {args.dataset}, the first {args.images} "
            f"training images, batch {spec.train.batch_size}, one epoch, {args.rounds} alternating "
            "rounds.",
            "",
            "| loop | epoch times (s) | median (s) |",
            "|---|---|---|",
            *(
                f"| {k} | {', '.join(f'{v:.2f}' for v in vs)} | {med[k]:.2f} |"
                for k, vs in times.items()
            ),
            "",
            target("throughput ratio rfbench / bare", ratio, ">=", TARGET),
            "",
            f"Same final EMA weights: {'yes' if hashes['rfbench'] == hashes['bare'] else 'NO'}.",
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)
    return 0 if hashes["rfbench"] == hashes["bare"] else 1


if __name__ == "__main__":
    sys.exit(main())
