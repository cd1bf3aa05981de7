"""Few-step study: every fixed-step and multistep solver on every schedule at 1 to 10 NFE.

For toy2d (1-RF and 2-RF models, exact distances) and, given their run directories,
Fashion-MNIST (the quick model, classifier FID), it makes:

- a budget table: the best solver and schedule at each NFE budget (``rfbench report
  --view budget``);
- a table and a figure of each solver's best schedule at each exact NFE;
- the verdicts the numbers give: does a multistep solver beat Euler and Heun at 4-8 NFE,
  and by how much against the seed-to-seed spread, for each model;
- the multistep solvers' overhead (solver time outside the network) as a share of network
  time, from the rows' ``overhead_time_s`` and ``model_time_s``: target <= 5% on the image
  model (a toy2d MLP call costs microseconds, so any bookkeeping is a large share there).

    rfbench run --dataset fashion-mnist --solvers euler,ab2,ab3,ab4,dpmpp-2m,dpmpp-3m,\\
        unipc-bh1,unipc-bh2 --steps 1,2,3,4,5,6,8,10 --grids uniform,edm,sd3 --seeds 0,1 \\
        --num-samples 500 --out results/few-step-fashion/multistep
    rfbench run --dataset fashion-mnist --solvers heun --steps 1,2,3,4,5 \\
        --grids uniform,edm,sd3 --seeds 0,1 --num-samples 500 --out results/few-step-fashion/heun
    rfbench run --dataset fashion-mnist --solvers rk45 --tols 1e-5 --seeds 0,1 \\
        --num-samples 500 --out results/few-step-fashion/rk45
    rfbench run --dataset fashion-mnist --solvers midpoint --steps 1,2,3,4,5 \\
        --grids uniform,edm,sd3,dense-noise,dense-data,cosine --seeds 0,1 \\
        --num-samples 500 --out results/few-step-fashion/midpoint
    rfbench run --dataset fashion-mnist --solvers rk4 --steps 1,2 \\
        --grids uniform,edm,sd3,dense-noise,dense-data,cosine --seeds 0,1 \\
        --num-samples 500 --out results/few-step-fashion/rk4
    rfbench run --dataset fashion-mnist --solvers heun --steps 1,2,3,4,5 \\
        --grids dense-noise,dense-data,cosine --seeds 0,1 --num-samples 500 \\
        --out results/few-step-fashion/heun-more
    rfbench run --dataset fashion-mnist --solvers euler,ab2,ab3,ab4,dpmpp-2m,dpmpp-3m,\\
        unipc-bh1,unipc-bh2 --steps 1,2,3,4,5,6,8,10 --grids dense-noise,dense-data,cosine \\
        --seeds 0,1 --num-samples 500 --out results/few-step-fashion/multistep-more

The Fashion-MNIST 2-RF: the quick model above (fashion-mnist-quick-5a129f08, the model
cache's ``fashion-mnist-quick-e1-s0-*.pt``) reflowed on 10,000 RK45 pairs, then a smaller
grid, to fit one session's CPU time: the first three schedules only, 4-8 NFE for Heun and
midpoint, 2-8 for the rest, and no RK4 (which trailed midpoint on the 1-RF):

    python benchmarks/reflow_study.py --dataset fashion-mnist --parent CACHED_QUICK_MODEL \\
        --out results/reflow-fashion --work runs/reflow-fashion --pairs 10000 \\
        --pair-tol 1e-3 --reflow-epochs 3   # stopped once runs/reflow-fashion/2rf was made
    G=uniform,edm,sd3
    C=runs/reflow-fashion/2rf/checkpoint.pt  # or results/few-step-fashion/2rf-checkpoint.pt
    rfbench run --dataset fashion-mnist --checkpoint $C --solvers euler,ab2,ab3,ab4,\\
        dpmpp-2m,dpmpp-3m,unipc-bh1,unipc-bh2 --steps 2,4,6,8 --grids $G --seeds 0,1 \\
        --num-samples 500 --out results/few-step-fashion/2rf-multistep
    rfbench run --dataset fashion-mnist --checkpoint $C --solvers heun,midpoint \\
        --steps 2,3,4 --grids $G --seeds 0,1 --num-samples 500 \\
        --out results/few-step-fashion/2rf-rk2
    rfbench run --dataset fashion-mnist --checkpoint $C --solvers rk45 --tols 1e-5 \\
        --seeds 0,1 --num-samples 500 --out results/few-step-fashion/2rf-rk45

and the study over all of them:

    F=results/few-step-fashion
    python benchmarks/few_step_study.py --work runs/few-step --out results/few-step \\
        --grids uniform,edm,sd3,dense-noise,dense-data,cosine \\
        --fashion $F/multistep,$F/heun,$F/rk45,$F/midpoint,$F/rk4,$F/heun-more,\\
$F/multistep-more,$F/2rf-multistep,$F/2rf-rk2,$F/2rf-rk45 \\
        --notes results/few-step/notes.md

Only the cells on ``--grids`` (uniform, edm, sd3 by default; the committed study gives all
six) enter the tables, so that every solver picks its best schedule among the same ones.

An adaptive run among the Fashion runs (rk45 here) is the converged reference: its FID is
printed beside the tables, and every cell's saved samples are compared with its samples
of the same noise (the distance table).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reflow_study import _step  # noqa: E402
from targets import target  # noqa: E402

from rfbench.report import budget_table, setting_stats  # noqa: E402
from rfbench.results import cell_id, read_runs  # noqa: E402
from rfbench.solvers import SOLVERS  # noqa: E402
from rfbench.solvers.fixed import canonical_grid  # noqa: E402

MULTISTEP = [n for n, s in SOLVERS.items() if s.multistep]
SOLVERS_A = ["euler", *MULTISTEP]  # 1 NFE per step
RUNGE_KUTTA = ["euler", "midpoint", "heun", "rk4"]  # one-step fixed-step solvers
ORDER = [*RUNGE_KUTTA, *MULTISTEP]  # of table rows and figure lines
STEPS_A = "1,2,3,4,5,6,8,10"
STEPS_HEUN = "1,2,3,4,5"  # 2 NFE per step (Heun, midpoint): 2 to 10 NFE
STEPS_RK4 = "1,2"  # 4 NFE per step: 4 and 8 NFE
GRIDS = "uniform,edm,sd3"
BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10)
MAX_OVERHEAD = 0.05  # of model time, per solver's median and per cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/few-step"))
    ap.add_argument("--out", type=Path, default=Path("results/few-step"))
    ap.add_argument("--fashion", default=None, help="run directories of the Fashion runs, a,b")
    ap.add_argument("--toy-samples", type=int, default=1000)
    ap.add_argument("--toy-epochs", type=int, default=None, help="default: the toy recipe's")
    ap.add_argument("--pairs", type=int, default=10000, help="reflow pairs for the 2-RF model")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", default=STEPS_A, help="of Euler and the multistep solvers")
    ap.add_argument("--heun-steps", default=STEPS_HEUN)
    ap.add_argument("--grids", default=GRIDS)
    ap.add_argument(
        "--notes", type=Path, default=None, help="a written reading of the numbers, appended"
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    times = args.work / "step-times.json"
    one, two = args.work / "1rf", args.work / "2rf"
    epochs = ["--epochs", str(args.toy_epochs)] if args.toy_epochs else []
    _step(
        ["train", "--dataset", "toy2d", *epochs, "--out", str(one)],
        one / "checkpoint.pt",
        log,
        times,
    )
    reflow = ["reflow", "--checkpoint", str(one / "checkpoint.pt"), "--pairs", str(args.pairs)]
    reflow += ["--solver", "rk45", "--tols", "1e-5", *epochs, "--out", str(two)]
    _step(reflow, two / "checkpoint.pt", log, times)
    models = f"{one / 'checkpoint.pt'},{two / 'checkpoint.pt'}"
    toy_runs = []
    for name, solvers, steps in (
        ("multistep", SOLVERS_A, args.steps),
        ("heun", ["heun"], args.heun_steps),
        ("midpoint", ["midpoint"], args.heun_steps),
        ("rk4", ["rk4"], STEPS_RK4),
    ):
        out = args.out / f"toy2d-{name}"
        grid = ["run", "--dataset", "toy2d", "--checkpoint", models, "--solvers", ",".join(solvers)]
        grid += ["--steps", steps, "--grids", args.grids, "--seeds", args.seeds]
        grid += ["--num-samples", str(args.toy_samples), "--out", str(out)]
        _step(grid, out / "table.md", log, times)
        toy_runs.append(out)
    grids = [canonical_grid(g) for g in args.grids.split(",")]
    toy = _on_grids(read_runs(toy_runs), grids)
    sections = [_section("toy2d", toy, "swd", args.out, overhead=False)]
    if args.fashion:
        runs = [Path(p) for p in args.fashion.split(",")]
        fashion = _on_grids(read_runs(runs), grids)
        sections.append(_section("fashion-mnist", fashion, "fid", args.out, overhead=True))
        sections.append((_accuracy_section(runs, grids, args.out), True))
    ok = all(s[1] for s in sections)
    lines = [
        "# Few-step solvers and schedules",
        "",
        f"Command: `python benchmarks/few_step_study.py {' '.join(argv or sys.argv[1:])}` "
        f"({platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}). It ran, or found done:",
        "",
        "```",
        *log,
        "```",
        "",
        *(
            [
                "The Fashion-MNIST runs it read were made beforehand, on the same machine, by "
                "the `rfbench run` commands in the script's docstring.",
                "",
            ]
            if args.fashion
            else []
        ),
        f"Every fixed-step and multistep solver on the schedules {', '.join(grids)} (rows on "
        "other schedules in the runs are left out, so that every solver chooses among the "
        "same); Euler and the multistep solvers at 1-6, 8 and 10 steps (1 NFE each), "
        "midpoint and Heun at 1-5 steps (2 NFE each), RK4 at 1-2 steps (4 NFE each), "
        "except where a model's runs hold fewer (the Fashion-MNIST 2-RF: uniform, edm-rho7 "
        "and sd3-shift3 only, Euler and the multistep solvers at 2, 4, 6 and 8 steps, "
        "midpoint and Heun at 2-4, no RK4). "
        "Values are means over the seeds.",
        "",
        *(line for text, _ in sections for line in text),
    ]
    if args.notes is not None:
        lines += ["", args.notes.read_text().rstrip()]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


def _section(dataset: str, frame: pd.DataFrame, metric: str, out: Path, overhead: bool):
    frame = frame[frame["status"] == "ok"]
    lines = [f"## {dataset} ({metric}, lower is better)", ""]
    ok = True
    for model, g in frame.groupby("model_id", sort=True):
        adaptive = g[g["rtol"].notna()]
        g = g[g["rtol"].isna()]
        best = _best_per_nfe(g, metric)
        converged = _converged(adaptive, metric)
        slug = f"{dataset}-{model}"
        _figure(best, metric, f"{dataset}: {model}", out / f"{slug}.png", converged)
        budget = budget_table(g, metric, nfe_budgets=BUDGETS)
        budget = budget[budget["solver"].notna()]  # a budget below the model's least NFE
        lines += [
            f"### {model}",
            "",
            f"Best at each NFE budget (`rfbench report RUNS --view budget --metric {metric} "
            f"--nfe-budget {','.join(map(str, BUDGETS))}`):",
            "",
            budget.drop(columns=[c for c in ("model",) if c in budget]).to_markdown(
                index=False, floatfmt=".4g"
            ),
            "",
            f"Each solver's best schedule at exactly that NFE ({metric}; the schedule in "
            f"brackets), figure `{slug}.png`:",
            "",
            _wide(best, metric),
            "",
            *_verdicts(best, g, metric),
            "",
            *(
                f"- Converged reference, {c['solver']} rtol {c['rtol']:g}: {metric} "
                f"{c['value']:.4g} (seed std {c['std']:.2g}) at {c['nfe']:.1f} NFE."
                for c in converged
            ),
            "",
        ]
    if overhead:
        table, worst = _overhead(frame)
        cell = _largest_cell(frame)
        per_nfe = frame["model_time_s"] / frame["nfe"]
        lines += [
            "### Solver overhead",
            "",
            "Time outside the network per solve, as a share of network time (median over "
            "each solver's cells, from `overhead_time_s / model_time_s`):",
            "",
            table,
            "",
            target("largest multistep overhead / model time", worst, "<=", MAX_OVERHEAD),
            "",
            f"The largest single multistep cell: {cell['solver']} {int(cell['steps'])} "
            f"step(s) {cell['grid']} seed {int(cell['seed'])}, "
            f"{100 * cell['share']:.2f}% of its {cell['model_time_s']:.3g} s of network time.",
            target("largest multistep cell's overhead share", cell["share"], "<=", MAX_OVERHEAD),
            "",
            "The Fashion-MNIST runs shared the 2 cores with other work for much of their "
            "time (network time per NFE ranges from "
            f"{per_nfe.min():.2f} to {per_nfe.max():.2f} s over the cells): compare wall "
            "times between these rows only as the shares above, each measured within one "
            "cell.",
            "",
        ]
        ok = worst <= MAX_OVERHEAD and cell["share"] <= MAX_OVERHEAD
    return lines, ok


def _best_per_nfe(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per solver and NFE, the schedule with the lowest seed-mean metric."""
    stats = setting_stats(frame, metric)
    stats = stats[stats["nfe"].isin(BUDGETS)]
    mean, std = f"{metric}_mean", f"{metric}_std"
    rows = []
    for (solver, nfe), g in stats.groupby(["solver", "nfe"], sort=True):
        top = g.sort_values([mean, "grid"], kind="stable").iloc[0]  # ties: by name
        rows.append(
            {
                "solver": solver,
                "nfe": int(nfe),
                "grid": top["grid"],
                "value": top[mean],
                "std": top[std],
            }
        )
    return pd.DataFrame(rows)


def _wide(best: pd.DataFrame, metric: str) -> str:
    cells = best.assign(cell=[f"{v:.4g} ({_short(g)})" for v, g in zip(best.value, best.grid)])
    table = cells.pivot(index="solver", columns="nfe", values="cell").fillna("")
    table.columns = [f"NFE {c}" for c in table.columns]
    order = [s for s in ORDER if s in table.index]
    return table.loc[order].to_markdown()


def _short(grid: str) -> str:
    """A schedule's name without its default parameter: sd3-shift3 -> sd3, edm-rho7 -> edm;
    dense-noise and dense-data stay whole."""
    return grid.removesuffix("-shift3").removesuffix("-rho7")


def _verdicts(best: pd.DataFrame, frame: pd.DataFrame, metric: str) -> list[str]:
    """At 4-8 NFE, the best multistep setting against the best of Euler and Heun (best by
    seed mean), compared seed by seed: the noise is the same for both, so each seed is a
    pair. With so few seeds the verdict is only whether every pair agrees."""
    out = []
    for nfe in (4, 5, 6, 8):
        at = best[best["nfe"] == nfe]
        rk = at[at["solver"].isin(["euler", "heun"])]
        ms = at[at["solver"].isin(MULTISTEP)]
        if rk.empty or ms.empty:
            continue
        a = rk.sort_values(["value", "solver"], kind="stable").iloc[0]
        b = ms.sort_values(["value", "solver"], kind="stable").iloc[0]
        pa, pb = _per_seed(frame, a, metric), _per_seed(frame, b, metric)
        diffs = (pa - pb).dropna()  # > 0: the multistep setting is better on that seed
        if len(diffs) and (diffs > 0).all():
            word = f"beats, on each of the {len(diffs)} seeds,"
        elif len(diffs) and (diffs < 0).all():
            word = f"loses, on each of the {len(diffs)} seeds, to"
        else:
            word = "neither beats nor loses to (the seeds disagree)"
        gap = a["value"] - b["value"]
        out.append(
            f"- NFE {nfe}: the best multistep solver, {b['solver']} ({b['grid']}), {word} "
            f"the best of Euler and Heun, {a['solver']} ({a['grid']}): {b['value']:.4g} "
            f"against {a['value']:.4g} ({100 * gap / a['value']:+.1f}% of it); per-seed "
            f"differences {', '.join(f'{d:+.3g}' for d in diffs)}."
        )
    return out


def _per_seed(frame: pd.DataFrame, setting: pd.Series, metric: str) -> pd.Series:
    """A setting's metric on each seed, from its solver, schedule and NFE."""
    rows = frame[
        (frame["solver"] == setting["solver"])
        & (frame["grid"] == setting["grid"])
        & (frame["nfe"] == setting["nfe"])
    ]
    return rows.groupby("seed")[metric].mean()


def _distances(runs: list[Path]) -> pd.DataFrame:
    """Per fixed-step or multistep cell, the RMSE (pixels in [0, 1]) of its saved samples
    (the first of each seed, as uint8) from the same samples of the converged cell (an
    adaptive solver's) of the same model and seed: the solver's own error, paired by noise."""
    cells = []
    for run in runs:
        for row in read_runs([run]).to_dict("records"):
            path = run / "samples" / f"{cell_id(row)}.npz"
            if row["status"] == "ok" and path.is_file():
                cells.append((row, np.load(path)["x"].astype(np.float64) / 255))
    reference = {}  # per model and seed: the tightest adaptive cell
    for row, x in sorted(cells, key=lambda c: -c[0]["rtol"] if pd.notna(c[0]["rtol"]) else 0):
        if pd.notna(row["rtol"]):
            reference[(row["model_id"], row["seed"])] = (row, x)
    out = []
    for row, x in cells:
        ref = reference.get((row["model_id"], row["seed"]))
        if pd.isna(row["rtol"]) and ref is not None:
            k = min(len(x), len(ref[1]))
            out.append(
                {
                    "model_id": row["model_id"],
                    "solver": row["solver"],
                    "grid": row["grid"],
                    "nfe": row["nfe"],
                    "seed": row["seed"],
                    "rmse": float(np.sqrt(((x[:k] - ref[1][:k]) ** 2).mean())),
                    "samples": k,
                    "reference": f"{ref[0]['solver']} rtol {ref[0]['rtol']:g}",
                }
            )
    return pd.DataFrame(out)


def _on_grids(frame: pd.DataFrame, grids: list[str]) -> pd.DataFrame:
    """The fixed-step cells on these schedules, and every adaptive cell."""
    return frame[frame["grid"].isin(grids) | frame["rtol"].notna()]


def _accuracy_section(runs: list[Path], grids: list[str], out: Path) -> list[str]:
    """Each solver's distance from the converged solution at each NFE, best schedule. The
    distances are kept in OUT/distances.csv, since the samples they come from are not
    committed: without the samples, that file is read instead."""
    d = _distances(runs)
    kept = out / "distances.csv"
    lines = ["### Distance from the converged solution", ""]
    if kept.exists():  # cells whose samples are gone keep the distances they had
        old = pd.read_csv(kept)
        key = ["model_id", "solver", "grid", "nfe", "seed"]
        fresh = set(map(tuple, d[key].astype(str).to_numpy())) if len(d) else set()
        cells = read_runs(runs)
        cells = cells[(cells["status"] == "ok") & cells["rtol"].isna()]
        cells = set(map(tuple, cells[key].astype(str).to_numpy()))  # still in the study
        rows = [tuple(r) for r in old[key].astype(str).to_numpy()]
        old = old[[r not in fresh and r in cells for r in rows]]
        if len(old):
            lines += [
                f"({len(old)} of these distances are from `{kept.name}`: their cells' saved "
                "samples are not here.)",
                "",
            ]
        d = pd.concat([d, old], ignore_index=True) if len(d) else old
    if d.empty:
        return [*lines, "No saved samples and no distances.csv: rerun the runs to make it.", ""]
    d.sort_values(["model_id", "solver", "grid", "nfe", "seed"]).to_csv(kept, index=False)
    d = d[d["grid"].isin(grids)]
    if d.empty:
        return []
    for model, g in d.groupby("model_id", sort=True):
        mean = g.groupby(["solver", "grid", "nfe"], as_index=False)["rmse"].mean()
        mean = mean[mean["nfe"].isin(BUDGETS)].astype({"nfe": int})
        best = mean.sort_values(["rmse", "grid"], kind="stable")
        best = best.groupby(["solver", "nfe"], as_index=False).first()
        best = best.rename(columns={"rmse": "value"})
        lines += [
            f"`{model}`: RMSE (pixels in [0, 1]) of each cell's first {g['samples'].min()} "
            f"samples per seed (saved as uint8) from the same samples of "
            f"{' or '.join(sorted(g['reference'].unique()))}, same noise; mean over seeds; "
            "each solver's best "
            "schedule at that NFE in brackets:",
            "",
            _wide(best, "rmse"),
            "",
        ]
    return lines


def _converged(adaptive: pd.DataFrame, metric: str) -> list[dict]:
    """The adaptive solvers' cells (the ODE solved to tolerance): seed mean and std."""
    out = []
    for (solver, rtol), g in adaptive.groupby(["solver", "rtol"], sort=True):
        per_seed = g.groupby("seed")[metric].mean()
        out.append(
            {
                "solver": solver,
                "rtol": rtol,
                "value": per_seed.mean(),
                "std": per_seed.std(ddof=1),
                "nfe": g["nfe"].mean(),
            }
        )
    return out


def _figure(
    best: pd.DataFrame, metric: str, title: str, path: Path, converged: list[dict] = ()
) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c in converged:
        label = f"{c['solver']} rtol {c['rtol']:g} ({c['nfe']:.0f} NFE)"
        ax.axhline(c["value"], color="0.4", ls=":", lw=1, label=label)
    colours = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]
    for i, solver in enumerate(ORDER):  # one colour each: 11 solvers, 20 colours
        g = best[best["solver"] == solver].sort_values("nfe")
        if g.empty:
            continue
        style = "-" if solver in RUNGE_KUTTA else "--"
        ax.plot(g["nfe"], g["value"], style, marker="o", ms=3, color=colours[i], label=solver)
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"{metric} (best schedule)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _with_share(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells with their overhead as a share of their network time."""
    return frame.assign(share=frame["overhead_time_s"] / frame["model_time_s"])


def _overhead(frame: pd.DataFrame) -> tuple[str, float]:
    share = _with_share(frame)
    table = share.groupby("solver")["share"].median().rename("overhead / model time")
    order = [s for s in ORDER if s in table.index]
    table = table.loc[order]
    worst = float(table[[s for s in MULTISTEP if s in table.index]].max())
    return table.map(lambda v: f"{100 * v:.2f}%").to_frame().to_markdown(), worst


def _largest_cell(frame: pd.DataFrame) -> pd.Series:
    """The multistep cell with the largest overhead share."""
    cells = _with_share(frame[frame["solver"].isin(MULTISTEP)])
    return cells.sort_values("share").iloc[-1]


if __name__ == "__main__":
    sys.exit(main())
