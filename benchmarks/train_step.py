"""rfbench's training step against a bare PyTorch loop: same model, same batch, one run.

    python benchmarks/train_step.py --out results/train-step.md

The bare loop is forward, MSE to x1 - x0, zero_grad, backward, AdamW step. rfbench's
``train_step`` adds what its recipe needs: gradient clipping and the EMA update. The two
alternate, step for step, for ``--steps`` rounds after a warm-up, so that a shared
machine's drifts reach both alike; the report gives the median time per step of each and
the throughput ratio rfbench / bare (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from targets import target  # benchmarks/targets.py
from torch.nn import functional as F

from rfbench.cli import DefaultsFormatter
from rfbench.config import PRESETS
from rfbench.flow import interpolate, sample_t, target_velocity
from rfbench.models import build_model
from rfbench.results import environment
from rfbench.train import train_step

TARGET = 0.95


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--out", default="results/train-step.md")
    p.add_argument("--preset", default="quick")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps of each (alternating)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    shape = (1, 28, 28)
    g = torch.Generator().manual_seed(0)
    x1 = (torch.rand(args.batch, *shape, generator=g) * 2 - 1).to(device)
    x0 = torch.randn(args.batch, *shape, generator=g).to(device)
    t = sample_t(args.batch, generator=g).to(device)
    cfg = preset.train

    def models():
        torch.manual_seed(0)
        m = build_model(shape, preset.unet, preset.mlp).to(device).train()
        return m, torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    ours, ours_opt = models()
    ema = copy.deepcopy(ours).requires_grad_(False)
    bare, bare_opt = models()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step_ours(i: int) -> float:
        return train_step(ours, ema, ours_opt, x0, x1, t, cfg, i).item()

    def step_bare(i: int) -> float:
        loss = F.mse_loss(bare(interpolate(x0, x1, t), t), target_velocity(x0, x1))
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()
        return loss.item()

    times = {"rfbench train_step": [], "bare loop": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("rfbench train_step", step_ours), ("bare loop", step_bare)):
            sync()
            start = time.perf_counter()
            fn(i)
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["bare loop"] / med["rfbench train_step"]  # throughput ours / bare
    env = environment()
    machine = env["cuda_device"] if device.type == "cuda" else f"CPU, {env['cpu_count']} cores"
    text = [
        "# Training step: rfbench against a bare PyTorch loop",
        "",
        f"Command: `python benchmarks/train_step.py {' '.join(argv or sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {machine}, torch {env['torch']} ({env['torch_threads']} threads). The "
        f"{args.preset} UNet, batch {args.batch} of 1x28x28, {args.steps} timed steps of "
        f"each after {args.warmup} warm-up steps, alternating step for step.",
        "",
        "| loop | median s/step | images/s |",
        "| --- | ---: | ---: |",
        *(f"| {k} | {v:.4f} | {args.batch / v:.0f} |" for k, v in med.items()),
        "",
        target("throughput ratio rfbench / bare", ratio, ">=", TARGET),
        "",
        "rfbench's step adds gradient clipping and the EMA update to the bare loop's forward, "
        "backward and AdamW step.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
