"""Batched against per-sample stepping of adaptive solvers: how far NFE and samples differ.

    python benchmarks/stepping_modes.py --out results/stepping-modes.md

In batched mode (the blog's and the official code's), the whole batch is one ODE state with
one error norm, a root mean square over all its elements: the batch takes the steps that
its root-mean-square sample needs, more than the mean sample alone would need where the
samples differ much (the squares weigh the hard tail) and fewer than the hardest, unless
the hardest is limited by stability (a stiff sample). In per-sample mode each sample is
integrated alone. For each dataset's quick model and each
adaptive solver this script samples the same noise both ways and reports the NFE per
sample (mean, spread, range), the wall time, and the difference between the two sets of
final samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rfbench import candidates, runtime
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split
from rfbench.results import environment
from rfbench.sample import generate


def compare(trained, solver: str, n: int, tol: float, device) -> dict:
    shape = trained.spec.sample_shape
    kw = dict(seed=0, batch_size=n, rtol=tol, atol=tol, device=device, progress=False)
    batched = generate(trained.model, solver, n, shape, stepping="batched", **kw)
    single = generate(trained.model, solver, n, shape, stepping="per-sample", **kw)
    per = pd.Series(single.nfe_of_samples, dtype=float)
    diff = (batched.x - single.x).flatten(1).abs()
    return {
        "model": trained.model_id,
        "solver": solver,
        "tol": tol,
        "n": n,
        "nfe_batched": batched.nfe_per_sample,
        "nfe_per_sample_mean": per.mean(),
        "nfe_per_sample_std": per.std(ddof=0),
        "nfe_per_sample_min": per.min(),
        "nfe_per_sample_max": per.max(),
        "batched_over_mean": batched.nfe_per_sample / per.mean(),
        "batched_percentile": 100 * float((per <= batched.nfe_per_sample).mean()),
        "wall_batched_s": batched.wall_time_s,
        "wall_per_sample_s": single.wall_time_s,
        "mean_abs_diff": diff.mean().item(),
        "max_abs_diff": diff.max().item(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", default="results/stepping-modes.md")
    p.add_argument("--datasets", default="toy2d,fashion-mnist")
    p.add_argument("--solvers", default="rk45,dopri5")
    p.add_argument("--n", type=int, default=64, help="samples (one batch in batched mode)")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--epochs", type=int, default=None, help="override the quick preset's epochs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    device = runtime.resolve_device(args.device)
    rows = []
    for dataset in args.datasets.split(","):
        data = load_split(dataset, "train")
        trained = candidates.obtain_model(
            candidates.model_spec(dataset, "quick", data, 0, args.epochs), data, device
        )
        for solver in args.solvers.split(","):
            rows.append(compare(trained, solver, args.n, args.tol, device))
            print(rows[-1], file=sys.stderr)
    env = environment()
    frame = pd.DataFrame(rows)
    ratio, pct = frame["batched_over_mean"], frame["batched_percentile"]
    text = "\n".join(
        [
            "# Batched against per-sample stepping",
            "",
            f"Command: `python benchmarks/stepping_modes.py {' '.join(argv or sys.argv[1:])}`",
            "",
            f"- machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}; "
            f"device {runtime.device_label(device)}; git commit {env['git_commit']}",
            "- the same noise (seed 0, samples 0..n-1) in both modes; batched = one batch of n",
            "- diff: |batched - per-sample| over all elements of the final samples",
            "",
            frame.to_markdown(index=False, floatfmt=".4g"),
            "",
            "What the numbers show: the batch's one error norm is a root mean square over all its "
            "elements, so a batch steps as its root-mean-square sample needs, not as its hardest. "
            f"Here the batched NFE is {ratio.min():.2f} to {ratio.max():.2f} times the mean of the "
            f"samples solved alone, at the {pct.min():.0f}th to {pct.max():.0f}th percentile of "
            "their NFEs. The lottery is per sample: alone, samples of one batch need from "
            f"{frame['nfe_per_sample_min'].min():.0f} to {frame['nfe_per_sample_max'].max():.0f} "
            "network calls, and batched each takes the batch's count whatever it needs.",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
