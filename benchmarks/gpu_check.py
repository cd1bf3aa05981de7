"""The GPU check: one short, prepared script to run whenever a GPU is lent (about 8 min on an H100).

It measures, on the chosen device, and writes ``<out>/gpu_check.md`` plus the run directory:

1. the quick run (`rfbench run --preset quick`) end to end, training included;
2. the time per NFE of the quick UNet at several batch sizes (median of repeats);
3. scipy RK45 (numpy round trip every call) against torchdiffeq dopri5 (the same
   Dormand-Prince 5(4) pair, torch-native) at equal tolerance: NFE, wall time, and the
   largest difference between their final samples;
4. reflow: 10k dopri5 pairs from the quick model, a 2-RF trained on them for 3 epochs, and
   both models at 1, 2 and 4 Euler steps (FID).

It runs on the CPU too (``--smoke`` makes it small), so it is tested before a GPU is there:

    python benchmarks/gpu_check.py --out results/gpu            # on the GPU machine
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu-check # anywhere, in seconds

The lent GPU machine reaches no network: carry the Fashion-MNIST IDX files (for example a
copy of /usr/share/datasets/fashion-mnist in an ignored folder) and pass ``--data-root``,
and carry as wheels whatever Python packages it lacks (torch-fidelity, torchdiffeq).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from rfbench import bench
from rfbench.config import RunConfig
from rfbench.data import load_split
from rfbench.models import count_parameters
from rfbench.results import environment
from rfbench.sample import generate, synchronizer, warm_up


def time_per_nfe(model, shape, batch_sizes, device, repeats: int) -> list[dict]:
    """Median wall time of one network forward at each batch size."""
    sync, rows = synchronizer(device), []
    for b in batch_sizes:
        warm_up(model, shape, b, device)
        x = torch.randn(b, *shape, device=device)
        t = torch.full((b,), 0.5, device=device)
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                model(x, t)
                sync()
                times.append(time.perf_counter() - start)
        med = statistics.median(times)
        rows.append({"batch": b, "ms_per_nfe": 1e3 * med, "images_per_s_per_nfe": b / med})
    return rows


def scipy_vs_dopri5(model, shape, n, batch, tol, device) -> list[dict]:
    rows, samples = [], {}
    for solver in ("rk45", "dopri5"):
        run = generate(
            model,
            solver,
            n,
            shape,
            seed=0,
            batch_size=batch,
            rtol=tol,
            atol=tol,
            device=device,
            progress=False,
        )
        samples[solver] = run.x
        rows.append(
            {
                "solver": solver,
                "nfe": run.nfe_per_sample,
                "wall_s": run.wall_time_s,
                "model_s": run.model_time_s,
                "overhead_s": run.overhead_time_s,
            }
        )
    diff = (samples["rk45"] - samples["dopri5"]).abs().max().item()
    for r in rows:
        r["max_abs_diff_rk45_vs_dopri5"] = diff
    return rows


def _md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default="results/gpu", help="where gpu_check.md and the run go")
    p.add_argument("--device", default="auto", help="auto, cuda, cpu")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset of the quick run")
    p.add_argument("--data-root", default=None, help="where the dataset's files are")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU test")
    args = p.parse_args(argv)

    device = bench.resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = "toy2d" if args.smoke else args.dataset
    sizes = (
        dict(
            num_samples=200,
            batch_sizes=(16, 64),
            repeats=3,
            pair_n=64,
            pair_batch=32,
            epochs=2,
            reflow_pairs=256,
            reflow_epochs=1,
        )  # fmt: skip
        if args.smoke
        else dict(
            num_samples=None,
            batch_sizes=(256, 1024, 4096),
            repeats=20,
            pair_n=1000,
            pair_batch=1000,
            epochs=None,
            reflow_pairs=10_000,
            reflow_epochs=3,
        )
    )
    report = [
        "# rfbench GPU check",
        "",
        f"Command: `python benchmarks/gpu_check.py {' '.join(argv or sys.argv[1:])}`",
        "",
    ]
    env = environment()
    report += [
        f"- device: {bench.device_label(device)}",
        f"- torch: {env['torch']}",
        f"- git commit: {env['git_commit']}",
        "",
    ]

    # 1. The quick run, end to end.
    start = time.perf_counter()
    run_dir = bench.run(
        RunConfig(
            dataset=dataset,
            solvers=("euler", "rk45", "dopri5"),
            preset="quick",
            device=args.device,
            num_samples=sizes["num_samples"],
            data_root=args.data_root,
            epochs=sizes["epochs"],
            out=str(out / f"quick-{dataset}"),
            resume=True,
        ),
        progress=False,
    )
    report += [
        f"## 1. Quick run on {dataset}: {time.perf_counter() - start:.1f} s in all "
        "(training included unless the cached model was reused)",
        "",
        (run_dir / "table.md").read_text(),
        "",
    ]

    # 2. Time per NFE of the quick UNet (the run's own model, from the cache).
    data = load_split(dataset, "train", args.data_root)
    trained = bench.obtain_model(
        bench.model_spec(dataset, "quick", data, 0, sizes["epochs"]), data, device
    )
    shape = trained.spec.sample_shape
    rows = time_per_nfe(trained.model, shape, sizes["batch_sizes"], device, sizes["repeats"])
    report += [
        f"## 2. Time per NFE, quick model {trained.model_id} "
        f"({count_parameters(trained.model)} parameters), median of {sizes['repeats']}",
        "",
        _md_table(rows),
        "",
    ]

    # 3. scipy RK45 against torchdiffeq dopri5 on the same model.
    rows = scipy_vs_dopri5(trained.model, shape, sizes["pair_n"], sizes["pair_batch"], 1e-5, device)
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    report += [
        "## 3. scipy RK45 against torchdiffeq dopri5, rtol = atol = 1e-5",
        "",
        _md_table(rows),
        "",
        f"Wall-time ratio rk45 / dopri5: {ratio:.2f}",
        "",
    ]

    # 4. Reflow: pairs from the quick model, a 2-RF trained on them, both at few Euler steps.
    from dataclasses import replace

    from rfbench import reflow

    start = time.perf_counter()
    parent_path = bench.model_cache_path(trained.spec)
    trained.path = str(parent_path)
    spec = reflow.pair_spec(trained, sizes["reflow_pairs"], "dopri5", rtol=1e-3,
                            shard_size=sizes["reflow_pairs"])  # fmt: skip
    store = reflow.generate_pairs(trained, spec, out / "reflow", batch_size=1000, device=device,
                                  progress=False)  # fmt: skip
    recipe = replace(trained.spec.train, epochs=sizes["reflow_epochs"])
    two = reflow.reflow(trained, store, recipe, out / "reflow" / "checkpoint.pt", device=device,
                        resume=True, progress=False)  # fmt: skip
    reflow_s = time.perf_counter() - start
    run_dir = bench.run(
        RunConfig(
            dataset=dataset, solvers=("euler",), steps=(1, 2, 4), preset="quick",
            checkpoint=(str(parent_path), str(out / "reflow" / "checkpoint.pt")),
            device=args.device, num_samples=sizes["num_samples"], data_root=args.data_root,
            out=str(out / f"reflow-{dataset}"), resume=True,
        ),
        progress=False,
    )  # fmt: skip
    report += [
        f"## 4. Reflow: {spec.pairs} dopri5 (1e-3) pairs and a 2-RF ({two.model_id}, "
        f"{sizes['reflow_epochs']} epoch(s)) in {reflow_s:.1f} s; 1-RF against 2-RF at 1, 2, 4 "
        "Euler steps",
        "",
        (run_dir / "table.md").read_text(),
        "",
    ]

    (out / "gpu_check.md").write_text("\n".join(report))
    print(out / "gpu_check.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
