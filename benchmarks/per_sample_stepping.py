"""Adaptive stepping without the batch lottery: batched, sequential and vectorised
per-sample rk45-torch, and scipy's rk45 beside rk45-torch, on one model side by side.

    python benchmarks/per_sample_stepping.py --out results/per-sample-stepping.md

On the quick Fashion-MNIST model (by default), n samples of seed 0 at one tolerance:

1. rk45-torch three ways: ``batched`` (the batch is one state with one error norm),
   ``sequential`` per-sample (one sample at a time) and ``vectorised`` per-sample (one
   batched solve, each sample its own steps). NFE per sample (mean, spread, range), wall
   time, model time; whether the two per-sample ways gave every sample the same NFE.
   Target: vectorised wall time <= 1.5x batched.
2. scipy's ``rk45`` against ``rk45-torch``, both batched, at the same tolerance: nfev,
   wall, model and overhead time (the overhead is scipy's host round trip plus its
   stepping, against the same stepping in torch).

Every configuration runs once per round, in turn, for ``--rounds`` rounds; times are the
medians over rounds and ratios are of those medians, so drift on a shared machine falls on
all of them alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import target  # noqa: E402

from rfbench import candidates, runtime  # noqa: E402
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split  # noqa: E402
from rfbench.results import environment  # noqa: E402
from rfbench.sample import generate, warm_up  # noqa: E402

MAX_VECTORISED_OVER_BATCHED = 1.5
CONFIGS = {  # name: (solver, stepping, vectorise)
    "batched": ("rk45-torch", "batched", True),
    "sequential": ("rk45-torch", "per-sample", False),
    "vectorised": ("rk45-torch", "per-sample", True),
    "scipy rk45": ("rk45", "batched", True),
}


def measure(model, shape, n: int, tol: float, device, rounds: int, batch: int) -> dict:
    """{config: [SampleRun per round]}, the runs of each configuration, rounds alternating."""
    runs: dict[str, list] = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name, (solver, stepping, vectorise) in CONFIGS.items():
            runs[name].append(
                generate(
                    model,
                    solver,
                    n,
                    shape,
                    seed=0,
                    rtol=tol,
                    atol=tol,
                    stepping=stepping,
                    vectorise=vectorise,
                    batch_size=batch,
                    device=device,
                    progress=False,
                )
            )
    return runs


def summarise(runs: dict) -> pd.DataFrame:
    rows = []
    for name, done in runs.items():
        last = done[-1]
        nfe = last.nfe_of_samples
        wall = float(np.median([r.wall_time_s for r in done]))
        model = float(np.median([r.model_time_s for r in done]))
        rows.append(
            {
                "config": name,
                "solver": CONFIGS[name][0],
                "stepping": CONFIGS[name][1],
                "impl": last.per_sample_impl or "batched",
                "nfe_mean": nfe.mean(),
                "nfe_std": nfe.std(),
                "nfe_min": nfe.min(),
                "nfe_max": nfe.max(),
                "forwards": sum(last.nfe_per_solve),
                "solver_nfe": ";".join(map(str, last.solver_nfe_per_solve))
                if len(last.solver_nfe_per_solve) <= 4
                else f"{len(last.solver_nfe_per_solve)} solves",
                "wall_s": wall,
                "model_s": model,
                "overhead_s": float(np.median([r.overhead_time_s for r in done])),
                "walls_s": " ".join(f"{r.wall_time_s:.2f}" for r in done),
            }
        )
    return pd.DataFrame(rows).set_index("config")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--out", default="results/per-sample-stepping.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n", type=int, default=256, help="samples, one batch")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the quick preset's epochs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    device = runtime.resolve_device(args.device)
    data = load_split(args.dataset, "train")
    trained = candidates.obtain_model(
        candidates.model_spec(args.dataset, "quick", data, 0, args.epochs), data, device
    )
    shape = trained.spec.sample_shape
    warm_up(trained.model, shape, args.n, device)
    runs = measure(trained.model, shape, args.n, args.tol, device, args.rounds, args.n)
    frame = summarise(runs)
    same = bool(
        np.array_equal(runs["sequential"][-1].nfe_of_samples, runs["vectorised"][-1].nfe_of_samples)
    )
    diff = (runs["sequential"][-1].x - runs["vectorised"][-1].x).abs().max().item()
    scipy_diff = (runs["batched"][-1].x - runs["scipy rk45"][-1].x).abs().max().item()
    ratio = frame.loc["vectorised", "wall_s"] / frame.loc["batched", "wall_s"]
    seq_ratio = frame.loc["sequential", "wall_s"] / frame.loc["batched", "wall_s"]
    scipy_ratio = frame.loc["scipy rk45", "wall_s"] / frame.loc["batched", "wall_s"]
    lottery = frame.loc["batched", "nfe_mean"] / frame.loc["vectorised", "nfe_mean"]
    env = environment()
    command = f"python benchmarks/per_sample_stepping.py {' '.join(argv or sys.argv[1:])}"
    text = "\n".join(
        [
            "# Per-sample stepping without the lottery, at batched speed",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"- machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}; "
            f"device {runtime.device_label(device)}; git commit {env['git_commit']}",
            f"- model {trained.model_id}; n = {args.n} samples of seed 0 in one batch; "
            f"rtol = atol = {args.tol:g}; {args.rounds} rounds, each running every "
            "configuration once in turn; times are medians over rounds (each round's wall "
            "in `walls_s`)",
            "- nfe_*: per sample, the forwards that carried it (batched: every sample takes "
            "the batch's count); forwards: network calls in all",
            "",
            frame.to_markdown(floatfmt=".4g"),
            "",
            "## Batched, sequential and vectorised per-sample",
            "",
            f"- Vectorised per-sample gave every sample the same NFE as solving it alone: "
            f"{'yes' if same else 'NO'}; largest difference of the final samples "
            f"{diff:.3g} (float32 network at batch sizes 1 and up to {args.n}).",
            f"- Batched, the batch's one error norm gives each sample "
            f"{frame.loc['batched', 'nfe_mean']:.0f} NFE; alone they need "
            f"{frame.loc['vectorised', 'nfe_min']:.0f} to "
            f"{frame.loc['vectorised', 'nfe_max']:.0f} (mean "
            f"{frame.loc['vectorised', 'nfe_mean']:.1f}): batched/mean = {lottery:.3f}.",
            f"- Wall time over batched: sequential {seq_ratio:.2f}x, vectorised {ratio:.2f}x.",
            target("vectorised per-sample wall / batched wall", ratio, "<=", 1.5),
            "",
            "## scipy rk45 against rk45-torch (both batched)",
            "",
            f"- nfev: scipy {frame.loc['scipy rk45', 'solver_nfe']}, rk45-torch "
            f"{frame.loc['batched', 'solver_nfe']}; largest difference of the final samples "
            f"{scipy_diff:.3g}.",
            f"- Wall: scipy / torch = {scipy_ratio:.3f}; overhead (wall - model) scipy "
            f"{frame.loc['scipy rk45', 'overhead_s']:.3g} s, torch "
            f"{frame.loc['batched', 'overhead_s']:.3g} s, of model time "
            f"{frame.loc['scipy rk45', 'model_s']:.3g} s and "
            f"{frame.loc['batched', 'model_s']:.3g} s.",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
