"""Peak memory of a solve with per-sample statistics on, against a bare Euler solve.

    python benchmarks/solve_memory.py --out results/solve-memory.md

Straightness and the per-sample NFE are accumulated during the solve (B numbers per network
call); the trajectories are never stored. Each variant runs in a fresh Python process on
the quick UNet (random weights: memory does not depend on them) and reports its peak
resident memory (ru_maxrss), and the increase over a baseline process that builds the
same model and noise but solves nothing. Variants:

- bare: Euler, counting wrapper only;
- stats: Euler with straightness recorded (what `rfbench run` does);
- trajectory: Euler keeping every intermediate state, the approach rfbench avoids.

On CUDA the peak is torch.cuda.max_memory_allocated instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from targets import target  # benchmarks/targets.py

from rfbench.cli import DefaultsFormatter

VARIANTS = ("baseline", "bare", "stats", "trajectory")


def _child(variant: str, batch: int, steps: int, device: str) -> dict:
    import torch

    from rfbench.config import PRESETS
    from rfbench.models import build_model
    from rfbench.sample import Batching, Measuring, integrate, noise
    from rfbench.solvers import Setting

    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = build_model(shape, PRESETS["quick"].unet, PRESETS["quick"].mlp).to(device).eval()
    x0 = noise(0, range(batch), shape)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if variant in ("bare", "stats"):
        integrate(
            model,
            Setting("euler", steps=steps),
            batch,
            lambda lo, hi: x0[lo:hi],
            device=device,
            batching=Batching(batch),
            measuring=Measuring(record=variant == "stats", progress=False),
        )
    elif variant == "trajectory":
        states = []

        def keep(x, t):  # integrate's counting wrapper calls this with t as a [B] tensor
            states.append(x.clone())
            return model(x, t)

        integrate(
            keep,
            Setting("euler", steps=steps),
            batch,
            lambda lo, hi: x0[lo:hi],
            device=device,
            batching=Batching(batch),
            measuring=Measuring(progress=False),
        )
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"variant": variant, "peak_bytes": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", default="results/solve-memory.md")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.steps, args.device)))
        return 0

    rows = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    base = rows["baseline"]
    mib = lambda b: b / 2**20  # noqa: E731
    lines = [
        "# Peak memory of a solve: statistics on, against bare Euler",
        "",
        f"Command: `python benchmarks/solve_memory.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"Quick UNet (random weights), batch {args.batch}, Euler {args.steps} steps, "
        f"device {args.device}; each variant in a fresh process.",
        "",
        "| variant | peak MiB | increase over baseline MiB | peak / bare | increase / bare |",
        "|---|---|---|---|---|",
    ]
    bare_inc = rows["bare"] - base
    for v in VARIANTS:
        inc = rows[v] - base
        lines.append(
            f"| {v} | {mib(rows[v]):.1f} | {mib(inc):.1f} | {rows[v] / rows['bare']:.3f} | "
            + (f"{inc / bare_inc:.3f} |" if v != "baseline" and bare_inc > 0 else "|")
        )
    stats_ratio = rows["stats"] / rows["bare"]
    lines += ["", target("stats peak / bare peak", stats_ratio, "<=", 1.5), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
