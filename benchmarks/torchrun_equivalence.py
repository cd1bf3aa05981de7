"""One process against two under torchrun, on real data: the same samples, NFE and FID?

Runs the same `rfbench run` grid twice on one checkpoint, once alone and once as
``torchrun --standalone --nproc-per-node=2`` (gloo on a CPU), and writes a markdown table:
per cell, NFE per batch from each, FID and KID from each with their relative difference,
whether the saved samples are identical, and each command's elapsed time.

    python benchmarks/torchrun_equivalence.py --out results/torchrun-cpu.md

Without ``--checkpoint`` it uses (and trains, if absent) the cached quick model of the
dataset, as `rfbench run` would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rfbench import candidates
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split
from rfbench.results import cell_id, environment
from rfbench.runtime import resolve_device


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoint", default=None, help="default: the cached quick model")
    p.add_argument("--solvers", default="euler,rk45,dopri5")
    p.add_argument("--steps", default="1,4")
    p.add_argument("--tols", default="1e-3")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--work", default="runs/torchrun-equivalence", help="run directories")
    p.add_argument("--out", default="results/torchrun-cpu.md")
    args = p.parse_args(argv)

    checkpoint = args.checkpoint
    if checkpoint is None:
        data = load_split(args.dataset, "train", args.data_root)
        spec = candidates.model_spec(args.dataset, "quick", data, 0)
        candidates.obtain_model(spec, data, resolve_device("cpu"))
        checkpoint = str(candidates.model_cache_path(spec))
    work = Path(args.work)
    if work.exists():
        sys.exit(f"{work} exists; remove it or pass another --work")
    grid = [
        "run",
        "--dataset",
        args.dataset,
        "--solvers",
        args.solvers,
        "--steps",
        args.steps,
        "--tols",
        args.tols,
        "--num-samples",
        str(args.num_samples),
        "--batch-size",
        str(args.batch_size),
        "--checkpoint",
        checkpoint,
        "--device",
        "cpu",
    ]
    if args.data_root:
        grid += ["--data-root", args.data_root]
    env = dict(os.environ)
    one_thread = {**env, "OMP_NUM_THREADS": "1"}  # torchrun gives each process one thread
    alone = [sys.executable, "-m", "rfbench", *grid, "--out"]
    elapsed = {
        "one": timed([*alone, str(work / "one")], env),
        "one-1t": timed([*alone, str(work / "one-1t")], one_thread),
        "two": timed(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "rfbench",
                *grid,
                "--out",
                str(work / "two"),
            ],
            one_thread,
        ),
    }

    runs = {d: pd.read_csv(work / d / "results.csv") for d in elapsed}
    one, lines = runs["one-1t"], []
    for i, a in one.iterrows():
        b, c = runs["two"].iloc[i], runs["one"].iloc[i]
        setting = f"steps={int(a['steps'])}" if pd.notna(a["steps"]) else f"rtol={a['rtol']:g}"
        name = cell_id(a.to_dict()) + ".npz"
        x = {d: np.load(work / d / "samples" / name)["x"] for d in runs}
        rel = {d: abs(r.iloc[i]["fid"] - a["fid"]) / abs(a["fid"]) for d, r in runs.items()}
        kid = abs(b["kid_mean"] - a["kid_mean"]) / abs(a["kid_mean"])
        lines.append(
            f"| {a['solver']} | {setting} | {a['nfe_per_batch']} | {b['nfe_per_batch']} | "
            f"{a['fid']:.4f} | {b['fid']:.4f} | {rel['two']:.1e} | {kid:.1e} | "
            f"{'yes' if np.array_equal(x['one-1t'], x['two']) else 'NO'} | "
            f"{rel['one']:.1e} | {int((x['one'] != x['two']).sum())} of {x['two'].size} | "
            f"{c['images_per_s']:.0f} | {b['images_per_s']:.0f} |"
        )
    env_facts = environment()
    text = "\n".join(
        [
            "# torchrun: one process against two (CPU, gloo)",
            "",
            "Command: `python benchmarks/torchrun_equivalence.py "
            f"{' '.join(argv or sys.argv[1:])}`",
            f"Machine: {os.cpu_count()}-core CPU; torch {env_facts['torch']}; git commit "
            f"{env_facts['git_commit']}. Model `{one['model_id'][0]}`, {args.num_samples} samples "
            f"per cell in batches of {args.batch_size} (so the 2 processes take "
            f"{-(-args.num_samples // args.batch_size)} batches between them, every other one), "
            f"FID and KID with `{one['feature_extractor'][0]}` against `{one['reference'][0]}`.",
            "",
            "Three runs of the same grid: A, one process with one thread; B, two processes "
            "under torchrun, one thread each (torchrun's default); C, one process with its "
            "default two threads. A and B do the same arithmetic per sample; C sums some "
            "reductions in another order.",
            "",
            "| solver | setting | NFE per batch, A | NFE per batch, B | FID, A | FID, B | FID "
            "A/B rel. diff | KID A/B rel. diff | samples A = B | FID C/A rel. diff | saved uint8 "
            "values C != B | images/s, C | images/s, B |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *lines,
            "",
            f"Elapsed, whole command: A {elapsed['one-1t']:.1f} s, B {elapsed['two']:.1f} s, "
            f"C {elapsed['one']:.1f} s. Each includes start-up, loading the data and the "
            "metric's reference features; images/s is per cell (n over the solve time, the "
            "busiest process's for B).",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
