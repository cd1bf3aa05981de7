"""How fast one model's forward pass runs with each of rfbench's speed options, side by side.

    python benchmarks/speed_options.py --checkpoint results/blog-fashion/checkpoint.pt \\
        --out results/blog-fashion/speed-options.md

Times one forward pass at --batch-size for eager fp32, --channels-last, --compile and both,
through the same ``runtime.accelerate`` that ``rfbench run`` uses, interleaved over
--repeats rounds so that a shared machine's load falls on every variant alike. It reports
the median seconds, the images x NFE per second that a study can plan with, each variant's
speed-up over eager, and the largest difference of its output from eager's.

Targets: the --choose variant is at least --min-speedup times faster than eager, and its
output differs from eager's by at most 1e-4 of the output's scale (fp32 reordering, not a
different network).
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from targets import read, target  # benchmarks/targets.py

from rfbench.cli import DefaultsFormatter
from rfbench.errors import UserError
from rfbench.runtime import Acceleration, prepared
from rfbench.sample import synchronizer
from rfbench.train import load_model

VARIANTS = {
    "eager": Acceleration(),
    "channels-last": Acceleration(channels_last=True),
    "compile": Acceleration(compile=True),
    "channels-last+compile": Acceleration(channels_last=True, compile=True),
}


def time_forward(
    trained,
    variants: dict[str, Acceleration],
    batch: int,
    repeats: int,
    backend: str,
    device: torch.device | None = None,
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor], dict[str, Acceleration]]:
    """Each variant's forward seconds over ``repeats`` interleaved rounds, after one
    untimed round, under ``no_grad`` as sampling runs (``inference_mode`` would be another
    compiled graph); its last output; and the options it really ran with (a failed
    compile runs eager)."""
    device = device or torch.device("cpu")
    sync = synchronizer(device)
    shape = tuple(trained.spec.sample_shape)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.rand(batch, generator=torch.Generator().manual_seed(1)).to(device)
    models, ran = {}, {}
    for name, options in variants.items():
        options = replace(options, compile_backend=backend)
        models[name], ran[name] = prepared(
            copy.deepcopy(trained.model), options, device, shape, [batch]
        )
    seconds = {name: [] for name in models}
    outputs = {}
    with torch.no_grad():
        for i in range(repeats + 1):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                outputs[name] = model(x, t)
                sync()
                if i:  # the first round is untimed
                    seconds[name].append(time.perf_counter() - start)
    return seconds, outputs, ran


def main(argv=None) -> int:
    try:
        return _main(argv)
    except UserError as e:  # a missing or unreadable checkpoint: one line
        raise SystemExit(f"speed_options: {e}") from None


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--choose", choices=tuple(VARIANTS), default="channels-last+compile")
    p.add_argument("--min-speedup", type=float, default=1.2)
    p.add_argument("--backend", default="inductor", help="torch.compile's backend")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        p.error("--batch-size and --repeats must be >= 1")

    trained = load_model(args.checkpoint, torch.device("cpu"))
    seconds, outputs, ran = time_forward(
        trained, VARIANTS, args.batch_size, args.repeats, args.backend
    )
    eager = statistics.median(seconds["eager"])
    scale = float(outputs["eager"].abs().max())
    lines = [
        "# Speed options on the CPU",
        "",
        "Command: `python benchmarks/speed_options.py "
        + shlex.join(sys.argv[1:] if argv is None else argv)
        + "`",
        f"({platform.machine()} CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}); "
        f"model {trained.model_id}, one forward pass of {args.batch_size} samples, "
        f"median of {args.repeats} interleaved rounds.",
        "",
        "| variant | ran as | median s | images x NFE / s | speed-up over eager | max abs diff |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in seconds:
        median = statistics.median(seconds[name])
        diff = float((outputs[name] - outputs["eager"]).abs().max())
        how = ", ".join(k for k, v in ran[name].columns().items() if v is True) or "eager"
        lines.append(
            f"| {name} | {how} | {median:.3f} | {args.batch_size / median:.1f} | "
            f"{eager / median:.2f} | {diff:.2e} |"
        )
    chosen = statistics.median(seconds[args.choose])
    diff = float((outputs[args.choose] - outputs["eager"]).abs().max())
    lines += [
        "",
        target(f"{args.choose} speed-up over eager", eager / chosen, ">=", args.min_speedup),
        target(f"{args.choose} max abs diff / output scale", diff / scale, "<=", 1e-4),
    ]
    if not ran[args.choose].compile and VARIANTS[args.choose].compile:
        lines.append(f"({args.choose}: torch.compile failed here and the variant ran eager.)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(t["met"] for t in read(text)) else 1


if __name__ == "__main__":
    sys.exit(main())
