"""Solver overhead: wall time spent outside the network, per solver, on the quick UNet (CPU).

    python benchmarks/solver_overhead.py --out results/solver-overhead.md

For every registered solver it samples one batch (default 256) from the trained quick
Fashion-MNIST model (trained and cached on first use), times the solve `--repeats` times and
reports medians of wall time, model time (the network forwards alone) and overhead =
wall - model. Each solver is timed twice, alternating: as a grid cell runs it, recording
the path statistics (whose bookkeeping is timed apart, `record_s`, and taken out of the
wall time), and bare, recording nothing. The reported overhead must describe the solver,
not rfbench's recording: the two overheads agree within noise. It then puts scipy's RK45
(numpy float64 round trip on every call) beside torchdiffeq's dopri5 (the same
Dormand-Prince 5(4) pair, torch-native) at equal tolerance, with both NFEs and the
largest difference between their final samples.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from targets import target  # benchmarks/targets.py

from rfbench import candidates, runtime
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split
from rfbench.results import environment
from rfbench.sample import generate, warm_up
from rfbench.solvers import SOLVERS

# scipy's implicit methods estimate a dense Jacobian by finite differences: one network call
# per state element (batch x 784 here), which no image batch can afford.
IMPLICIT = ("radau", "bdf")


def measure(model, shape, solver, options, batch, repeats, device) -> tuple[dict, torch.Tensor]:
    """One solver, timed as a cell runs it (recording) and bare, alternating per repeat."""
    runs = {"cell": [], "bare": []}
    for _ in range(repeats):
        for mode, record in (("cell", True), ("bare", False)):
            runs[mode].append(
                generate(
                    model,
                    solver,
                    batch,
                    shape,
                    seed=0,
                    batch_size=batch,
                    device=device,
                    progress=False,
                    max_nfe=2000,
                    record=record,
                    **options,
                )
            )
    med = {
        mode: {
            k: float(np.median([getattr(r, k) for r in rs]))
            for k in ("wall_time_s", "model_time_s", "record_time_s")
        }
        for mode, rs in runs.items()
    }
    for m in med.values():  # as SampleRun: the difference of the medians
        m["overhead_time_s"] = m["wall_time_s"] - m["model_time_s"]
    cell, bare = med["cell"], med["bare"]
    row = {
        "solver": solver,
        "family": SOLVERS[solver].family,
        "setting": ", ".join(f"{k}={v:g}" for k, v in options.items()),
        "nfe": runs["cell"][0].nfe_per_sample,
        "wall_s": cell["wall_time_s"],
        "model_s": cell["model_time_s"],
        "overhead_s": cell["overhead_time_s"],
        "overhead_pct_of_model": 100 * cell["overhead_time_s"] / cell["model_time_s"],
        "record_s": cell["record_time_s"],
        "bare_overhead_s": bare["overhead_time_s"],
        "overhead_over_bare": cell["overhead_time_s"] / bare["overhead_time_s"],
    }
    return row, runs["cell"][0].x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", default="results/solver-overhead.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="steps of the fixed-step solvers")
    p.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of adaptive solvers")
    p.add_argument(
        "--pair-tol", type=float, default=1e-5, help="rtol = atol of the rk45/dopri5 pair"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the quick preset's epochs")
    p.add_argument(
        "--toy-steps",
        type=int,
        default=16,
        help="Euler steps of the toy2d check, where recording once doubled overhead",
    )
    p.add_argument("--toy-batch", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    device = runtime.resolve_device(args.device)
    data = load_split(args.dataset, "train")
    spec = candidates.model_spec(args.dataset, "quick", data, 0, args.epochs)
    trained = candidates.obtain_model(spec, data, device)
    shape = trained.spec.sample_shape
    warm_up(trained.model, shape, args.batch, device)

    rows, start = [], time.perf_counter()
    for name, s in SOLVERS.items():
        if name in IMPLICIT:
            continue
        options = {"rtol": args.tol, "atol": args.tol} if s.adaptive else {"steps": args.steps}
        try:
            row, _ = measure(trained.model, shape, name, options, args.batch, args.repeats, device)
        except Exception as e:  # noqa: BLE001 - report the failure in the table
            row = {
                "solver": name,
                "family": s.family,
                "setting": str(options),
                "error": f"{type(e).__name__}: {str(e)[:80]}",
            }
        rows.append(row)
        print(row, file=sys.stderr)

    # The pair with the same Dormand-Prince 5(4) tableau, at the paper's tolerance.
    pair_options = {"rtol": args.pair_tol, "atol": args.pair_tol}
    pair, finals = {}, {}
    for name in ("rk45", "dopri5"):
        pair[name], finals[name] = measure(
            trained.model, shape, name, pair_options, args.batch, args.repeats, device
        )
        print(pair[name], file=sys.stderr)

    # toy2d: a network so small that rfbench's recording once doubled the reported overhead.
    toy_data = load_split("toy2d", "train")
    toy = candidates.obtain_model(
        candidates.model_spec("toy2d", "quick", toy_data, 0, args.epochs), toy_data, device
    )
    warm_up(toy.model, toy.spec.sample_shape, args.toy_batch, device)
    toy_row, _ = measure(
        toy.model,
        toy.spec.sample_shape,
        "euler",
        {"steps": args.toy_steps},
        args.toy_batch,
        max(args.repeats, 5),
        device,
    )
    print(toy_row, file=sys.stderr)

    import pandas as pd

    frame = pd.DataFrame(rows)
    env = environment()
    diff = (finals["rk45"] - finals["dopri5"]).abs().max().item()
    rk, dp = pd.Series(pair["rk45"]), pd.Series(pair["dopri5"])
    lines = [
        "# Solver overhead on the CPU",
        "",
        f"Command: `python benchmarks/solver_overhead.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"- machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads; device {runtime.device_label(device)}",
        f"- model: {trained.model_id} (quick preset), batch {args.batch}, "
        f"median of {args.repeats} timed solves after warm-up",
        f"- fixed-step solvers at {args.steps} steps; adaptive at rtol = atol = {args.tol:g}, "
        "batched stepping",
        f"- skipped: {', '.join(IMPLICIT)} (dense finite-difference Jacobian: one network call "
        f"per state element, {args.batch} x {int(torch.tensor(shape).prod())} here)",
        f"- total benchmark time: {time.perf_counter() - start:.0f} s",
        "- overhead_s, record_s: as a grid cell reports them (recording the path statistics, "
        "whose time is record_s and is not in wall_s); bare_overhead_s: the same solve "
        "recording nothing",
        "",
        frame.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"## toy2d: Euler at {args.toy_steps} steps, batch {args.toy_batch} ({toy.model_id})",
        "",
        pd.DataFrame([toy_row]).to_markdown(index=False, floatfmt=".4g"),
        "",
        target(
            "reported overhead / bare overhead, toy2d Euler",
            toy_row["overhead_over_bare"],
            "<=",
            1.5,
        ),
        "",
        target(
            "median over solvers of reported overhead / bare overhead",
            float(frame["overhead_over_bare"].median()),
            "<=",
            1.25,
        ),
        "",
        f"## scipy RK45 beside torchdiffeq dopri5 (both Dormand-Prince 5(4)), "
        f"rtol = atol = {args.pair_tol:g}",
        "",
        pd.DataFrame([pair["rk45"], pair["dopri5"]]).to_markdown(index=False, floatfmt=".4g"),
        "",
        f"- NFE: rk45 {rk.nfe:.0f}, dopri5 {dp.nfe:.0f}",
        f"- overhead: rk45 {rk.overhead_s:.3f} s ({rk.overhead_pct_of_model:.1f}% of model "
        f"time), dopri5 {dp.overhead_s:.3f} s ({dp.overhead_pct_of_model:.1f}%)",
        f"- wall-time ratio rk45 / dopri5: {rk.wall_s / dp.wall_s:.3f}",
        f"- largest |rk45 - dopri5| over the final samples: {diff:.3g}",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
