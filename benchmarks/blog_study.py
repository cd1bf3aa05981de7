"""A trained model through every solver family, and reflow from it: issue 19's study.

    python benchmarks/blog_study.py --out results/blog-fashion --notes results/blog-fashion/notes.md

runs, each step skipped when its output exists (an interrupted study resumes with the same
command), all through the ``rfbench`` command line:

1. ``rfbench cache add CHECKPOINT``: the trained model becomes the one ``run --preset``
   reuses (default: the blog recipe's Fashion-MNIST model, ``results/blog-fashion``);
2. ``rfbench run --preset P`` five times, the same seeds and n in every cell, each run
   saving its samples (``--save-samples npz``) for step 5:
   - ``adaptive``: scipy RK45 and torchdiffeq dopri5 at --tols;
   - ``fixed``: Euler and Heun at --fixed-steps on each of --grids;
   - ``rk4``: RK4 at --rk4-steps on each of --grids (4 NFE a step: by default no more
     than 16 NFE, like Heun's 8 steps);
   - ``euler-more``: Euler at --euler-more-steps and at the step count nearest to RK45's
     NFE at the loosest tolerance (RK45 against Euler at equal NFE), on each of --grids;
   - ``multistep``: every multistep solver at --multistep-steps on --multistep-grid;
3. ``benchmarks/reflow_study.py --parent CHECKPOINT --no-in-sample``: pairs, the 2-RF and
   the one-step distilled 2-RF, evaluated in one run with the 1-RF (cells alternate);
4. ``rfbench report`` (budget and pivot views) and ``rfbench figures`` over the five runs;
5. ``rfbench eval --feature-extractor inception`` (--frontier-extractor) of the first
   seed's samples of every cell on the budget frontier: the standard Inception FID,
   against the test split;
6. OUT/README.md: the commands with their durations, the tables, the headline numbers,
   then --notes (a written reading of them).

``--plan`` first: the cost of every stage at the network's throughput timed then, in
OUT/plan.md, and nothing run. Sampling runs with --channels-last and --compile unless told
otherwise (``benchmarks/speed_options.py`` measures what they buy on this CPU).

Step durations go to WORK/step-times.json and into the README, so that the cost of each
stage can be planned: they are wall seconds on whatever shared the machine at the time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reflow_study  # noqa: E402
from reflow_study import COUNT, TOL, _checked, _step, timed  # noqa: E402
from targets import target  # noqa: E402

from rfbench.cli import DefaultsFormatter, _seed  # noqa: E402
from rfbench.cli import main as rfbench  # noqa: E402
from rfbench.errors import UserError  # noqa: E402
from rfbench.report import best_first, setting_stats  # noqa: E402
from rfbench.results import KEY_COLUMNS, cell_id, cell_ids, read_runs  # noqa: E402
from rfbench.solvers import SOLVERS  # noqa: E402
from rfbench.train import load_model  # noqa: E402

MULTISTEP = [n for n, s in SOLVERS.items() if s.multistep]
RUNS = ("adaptive", "fixed", "rk4", "euler-more", "multistep")


def _nfe_guesses(text: str) -> dict[float, float]:
    """--adaptive-nfe: tolerance:NFE pairs, a,b."""
    out = {}
    for item in text.split(","):
        tol, _, nfe = item.partition(":")
        try:
            out[float(tol)] = float(nfe)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not TOL:NFE (e.g. 1e-3:50)") from None
    return out


def main(argv=None) -> int:
    try:
        return _main(argv)
    except UserError as e:  # a missing checkpoint, an unreadable run: one line
        raise SystemExit(f"blog_study: {e}") from None


def _main(argv=None) -> int:
    from rfbench.config import PRESETS

    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument(
        "--checkpoint", default="results/blog-fashion/checkpoint.pt", help="the trained 1-RF"
    )
    p.add_argument("--dataset", default="fashion-mnist", help="its dataset")
    p.add_argument("--preset", default="blog", choices=tuple(PRESETS), help="its preset")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/blog-fashion"),
        help="the study's tables, figures and runs",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/blog-fashion"),
        help="reflow's models and pairs, step times (not committed)",
    )
    p.add_argument("--num-samples", type=COUNT, default=2000, help="n per cell and seed")
    p.add_argument("--seeds", default="0,1", type=_checked(_seed, "seed"), help="every cell's")
    p.add_argument("--batch-size", type=COUNT, default=None, help="default: the preset's")
    p.add_argument(
        "--tols",
        default="1e-3,1e-5",
        type=_checked(float, "tolerance", True),
        help="rk45 and dopri5 rtol = atol",
    )
    p.add_argument(
        "--grids",
        default="uniform,sd3",
        type=_checked(str, "grid"),
        help="schedules of the fixed-step runs",
    )
    steps = _checked(int, "step count", True)
    p.add_argument("--fixed-steps", default="1,2,4,8", type=steps, help="Euler and Heun")
    p.add_argument("--rk4-steps", default="1,2,4", type=steps, help="RK4 (4 NFE a step)")
    p.add_argument(
        "--euler-more-steps",
        default="16",
        type=steps,
        help="Euler, beside the step count matched to rk45",
    )
    p.add_argument(
        "--multistep-steps",
        default="2,4,6,8,10",
        type=steps,
        help="every multistep solver (1 NFE a step)",
    )
    p.add_argument("--multistep-grid", default="sd3", help="their schedule")
    p.add_argument(
        "--pairs",
        type=COUNT,
        default=10_000,
        help="reflow pairs (each for the 2-RF and the distilled 2-RF)",
    )
    p.add_argument("--pair-tol", default="1e-3", type=TOL, help="the pairs' rk45 tolerance")
    p.add_argument("--reflow-epochs", type=COUNT, default=6, help="epochs of each reflow training")
    p.add_argument(
        "--reflow-eval-tol",
        default="1e-3",
        type=TOL,
        help="rk45 tolerance of the reflow evaluation",
    )
    p.add_argument(
        "--time-budgets",
        default="10,30,100,300",
        type=_checked(float, "time budget", True),
        help="the budget table's wall-time budgets, seconds per cell (n samples)",
    )
    p.add_argument(
        "--frontier-extractor",
        choices=("inception", "classifier", "none"),
        default="inception",
        help="step 5's features (none: skip it; toy2d has no images)",
    )
    p.add_argument(
        "--rescore",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step 5; --no-rescore keeps the samples, lists the frontier's sample files in "
        "OUT/frontier-samples.txt and stops before scoring them (for a machine without the "
        "extractor's weights: a later call with --rescore, same arguments, scores them)",
    )
    p.add_argument(
        "--resample-frontier",
        action="store_true",
        help="step 5 scores the frontier cells sampled again here (OUT/frontier-resampled, "
        "one `rfbench run` a cell, its first seed), for runs whose samples stayed on the "
        "machine that made them; the README sets each cell's FID here beside the run's",
    )
    p.add_argument("--reflow", action=argparse.BooleanOptionalAction, default=True, help="step 3")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every sampling step's --channels-last (benchmarks/speed_options.py)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every sampling step's --compile (benchmarks/speed_options.py)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="time the network with these options, write OUT/plan.md (the cost of every "
        "stage before it runs) and stop",
    )
    p.add_argument(
        "--adaptive-nfe",
        default="1e-3:50,1e-5:120",
        type=_nfe_guesses,
        help="--plan's guess of an adaptive solver's NFE per tolerance, until the adaptive "
        "run has measured it",
    )
    p.add_argument(
        "--inception-rate",
        type=float,
        default=4.47,
        help="--plan: Inception images/s on this CPU (results/inception-proof.md, "
        "benchmarks/inception_proof.py)",
    )
    p.add_argument(
        "--data-root", default=None, help="the dataset's files, if not where rfbench looks"
    )
    p.add_argument("--notes", type=Path, default=None, help="appended to the README")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    speed = ["--channels-last"] if args.channels_last else []
    speed += ["--compile"] if args.compile else []
    if args.plan:
        text = _plan(args, speed)
        (args.out / "plan.md").write_text(text)
        print(text)
        return 0
    log: list[str] = []
    times = args.work / "step-times.json"
    root = ["--data-root", args.data_root] if args.data_root else []

    log.append("rfbench " + shlex.join(["cache", "add", args.checkpoint, *root]))
    if rfbench(["cache", "add", args.checkpoint, *root]) != 0:
        raise SystemExit(f"rfbench cache add {args.checkpoint} failed")
    common = ["--dataset", args.dataset, "--preset", args.preset, "--seeds", args.seeds]
    common += ["--num-samples", str(args.num_samples), *root]
    common += ["--save-samples", "npz"] if args.frontier_extractor != "none" else []
    common += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    common += speed
    trained = load_model(args.checkpoint).spec.train  # the runs must ask for this model
    common += ["--epochs", str(trained.epochs), "--train-seed", str(trained.seed)]
    runs = {name: args.out / name for name in RUNS}
    _run(["--solvers", "rk45,dopri5", "--tols", args.tols], runs["adaptive"], common, log, times)
    fixed = ["--steps", args.fixed_steps, "--grids", args.grids]
    _run(["--solvers", "euler,heun", *fixed], runs["fixed"], common, log, times)
    rk4 = ["--solvers", "rk4", "--steps", args.rk4_steps, "--grids", args.grids]
    _run(rk4, runs["rk4"], common, log, times)
    matched = _matched_steps(runs["adaptive"], args.tols)
    more = {int(k) for k in args.euler_more_steps.split(",")} | {matched}
    steps = ",".join(map(str, sorted(more - {int(k) for k in args.fixed_steps.split(",")})))
    if not steps:
        raise SystemExit(
            f"--euler-more-steps {args.euler_more_steps} and the step count matched to rk45 "
            f"({matched}) are all in --fixed-steps: give --euler-more-steps another count"
        )
    more = ["--solvers", "euler", "--steps", steps, "--grids", args.grids]
    _run(more, runs["euler-more"], common, log, times)
    ms = ["--solvers", ",".join(MULTISTEP), "--steps", args.multistep_steps]
    _run([*ms, "--grids", args.multistep_grid], runs["multistep"], common, log, times)

    dirs = [str(d) for d in runs.values()]
    frame = read_runs(dirs)
    metric = "fid" if frame["fid"].notna().any() else "swd"
    frontier = _frontier(frame, metric)
    listing = args.out / "frontier-samples.txt"
    listing.unlink(missing_ok=True)
    if args.frontier_extractor != "none" and not args.resample_frontier:
        # listed before reflow, so that a study cut short there still names them
        files = _frontier_samples(frontier, runs)
        listing.write_text("".join(f"{f}\n" for f in files))

    if args.reflow:
        reflow = ["--dataset", args.dataset, "--parent", args.checkpoint]
        reflow += ["--out", str(args.out / "reflow"), "--work", str(args.work / "reflow")]
        reflow += ["--pairs", str(args.pairs), "--pair-tol", args.pair_tol]
        reflow += ["--reflow-epochs", str(args.reflow_epochs), "--eval-tol", args.reflow_eval_tol]
        reflow += ["--num-samples", str(args.num_samples), "--seeds", args.seeds]
        reflow += ["--data-root", args.data_root] if args.data_root else []
        reflow += [*speed, "--no-in-sample"]
        command = "python benchmarks/reflow_study.py " + shlex.join(reflow)
        models = [Path(args.checkpoint)]
        models += [args.work / "reflow" / k / "checkpoint.pt" for k in ("2rf", "2rf-d1")]

        def reflow_done() -> bool:  # its README, of these models where they are here
            if all(m.exists() for m in models):
                reflow_study._same_models(args.out / "reflow" / "run", models)
            return (args.out / "reflow" / "README.md").exists()

        timed(
            command,
            reflow_done,
            lambda: reflow_study.main(reflow),
            log,
            times,
            record=not (args.work / "reflow").exists(),  # a resumed study's time is partial
        )

    reports = {}
    for view, extra in (("budget", ["--time-budget", args.time_budgets]), ("pivot", [])):
        target = args.out / f"{view}-{metric}.md"
        argv_r = ["report", *dirs, "--view", view, "--metric", metric, *extra, "--out", str(target)]
        log.append("rfbench " + shlex.join(argv_r))
        if rfbench(argv_r) != 0:
            raise SystemExit(f"rfbench {shlex.join(argv_r)} failed")
        reports[view] = target.read_text()
    argv_f = ["figures", *dirs, "--format", "png,pdf", "--out", str(args.out / "figures")]
    log.append("rfbench " + shlex.join(argv_f))
    if rfbench(argv_f) != 0:
        raise SystemExit(f"rfbench {shlex.join(argv_f)} failed")

    rescored = None
    if args.frontier_extractor != "none":
        if args.resample_frontier:
            files = _resample(frontier, frame, common, args.out / "frontier-resampled", log, times)
            listing.write_text("".join(f"{f}\n" for f in files))
        if args.rescore:
            rescored = _rescore(files, args, log, times)
    _readme(frame, metric, frontier, rescored, reports, log, args)
    print((args.out / "README.md").read_text())
    return 0


TRAIN_FORWARDS = 3  # --plan: one training sample ~ forward + backward ~ 3 forwards (assumed)


def _plan(args, speed: list[str]) -> str:
    """The study's cost before it runs: images x NFE of every stage, in hours at the
    network's throughput timed here with the study's speed options (one forward pass of
    the sampling batch, median of 3), the reflow training at TRAIN_FORWARDS forwards per
    sample, and the Inception rescoring at --inception-rate."""
    import speed_options

    from rfbench.config import PRESETS
    from rfbench.runtime import Acceleration, resolve_device

    device = resolve_device("auto")  # where the study's runs will sample
    trained = load_model(args.checkpoint, device)
    batch = args.batch_size or PRESETS[args.preset].batch_size
    per_cell = args.num_samples * len(args.seeds.split(","))
    guess = args.adaptive_nfe
    measured = None
    if (args.out / "adaptive" / "results.csv").exists():
        measured = read_runs([args.out / "adaptive"])
        measured = measured[measured["status"] == "ok"]

    def adaptive(solver: str, tol: float) -> tuple[float, str]:
        if measured is not None:
            rows = measured[(measured["solver"] == solver) & (measured["rtol"] == tol)]
            if not rows.empty:
                return float(rows["nfe"].mean()), "measured"
        if tol not in guess:
            raise SystemExit(f"--adaptive-nfe has no guess for tolerance {tol:g}")
        return guess[tol], "guess"

    tols = [float(t) for t in args.tols.split(",")]
    for tol in {*tols, float(args.pair_tol), float(args.reflow_eval_tol)}:
        adaptive("rk45", tol)  # a missing guess fails here, before the timing
    options = Acceleration(channels_last=args.channels_last, compile=args.compile)
    variants = {"study": options, "eager": Acceleration()}
    seconds, _, ran = speed_options.time_forward(trained, variants, batch, 3, "inductor", device)
    rate, eager = (batch / statistics.median(seconds[k]) for k in ("study", "eager"))

    rows = []

    def add(stage: str, what: str, image_nfe: float, hours: float | None = None) -> None:
        rows.append(
            (stage, what, image_nfe, hours if hours is not None else image_nfe / rate / 3600)
        )

    for solver in ("rk45", "dopri5"):
        for tol in tols:
            nfe, how = adaptive(solver, tol)
            add("adaptive", f"{solver} {tol:g}: {nfe:.0f} NFE ({how})", nfe * per_cell)
    fixed_steps = [int(k) for k in args.fixed_steps.split(",")]
    grids = args.grids.split(",")
    for solver, stage, steps in (
        ("euler", "fixed", args.fixed_steps),
        ("heun", "fixed", args.fixed_steps),
        ("rk4", "rk4", args.rk4_steps),
    ):
        nfe = sum(int(k) for k in steps.split(",")) * SOLVERS[solver].nfe_per_step * len(grids)
        add(stage, f"{solver} {steps} steps x {len(grids)} grids", nfe * per_cell)
    matched, how = adaptive("rk45", max(tols))
    more = {int(k) for k in args.euler_more_steps.split(",")} | {max(1, round(matched))}
    more -= set(fixed_steps)
    add(
        "euler-more",
        f"euler {sorted(more)} steps x {len(grids)} grids (matched to rk45, {how})",
        sum(more) * len(grids) * per_cell,
    )
    ms = [int(k) for k in args.multistep_steps.split(",")]
    add(
        "multistep",
        f"{len(MULTISTEP)} solvers x {args.multistep_steps}",
        len(MULTISTEP) * sum(ms) * per_cell,
    )
    if args.reflow:
        pair_nfe, how = adaptive("rk45", float(args.pair_tol))
        add(
            "reflow",
            f"pairs: 2 x {args.pairs} at rk45 {args.pair_tol} (the 1-RF's NFE, {how}, for "
            "the 2-RF's too)",
            2 * args.pairs * pair_nfe,
        )
        add(
            "reflow",
            f"training: 2 models x {args.reflow_epochs} epochs x {args.pairs} pairs "
            f"x {TRAIN_FORWARDS} forwards, at the eager rate",
            2 * args.reflow_epochs * args.pairs * TRAIN_FORWARDS,
            2 * args.reflow_epochs * args.pairs * TRAIN_FORWARDS / eager / 3600,
        )
        eval_nfe, how = adaptive("rk45", float(args.reflow_eval_tol))
        steps = sum(int(k) for k in reflow_study.STEPS.split(","))
        add(
            "reflow",
            f"evaluation: 3 models x (euler {reflow_study.STEPS} + rk45 at the 1-RF's NFE, {how})",
            3 * (steps + eval_nfe) * per_cell,
        )
    if args.frontier_extractor != "none":
        adaptive_nfe = [adaptive(solver, tol)[0] for solver in ("rk45", "dopri5") for tol in tols]
        rk4_top = max(int(k) for k in args.rk4_steps.split(",")) * SOLVERS["rk4"].nfe_per_step
        heun_top = max(fixed_steps) * SOLVERS["heun"].nfe_per_step
        top = max(heun_top, rk4_top, *more, *ms, *adaptive_nfe)
        cells = math.ceil(math.log2(top)) + 1
        add(
            "frontier",
            f"at most {cells} cells x {args.num_samples} images, Inception at "
            f"{args.inception_rate:g} images/s",
            0,
            cells * args.num_samples / args.inception_rate / 3600,
        )
        add(
            "frontier",
            "Inception features of the test split (10,000 images in MNIST's and "
            "Fashion-MNIST's), unless cached",
            0,
            10_000 / args.inception_rate / 3600,
        )
    table = pd.DataFrame(rows, columns=["stage", "what", "images x NFE", "hours"])
    total = table["hours"].sum()
    how_ran = ", ".join(k for k, v in ran["study"].columns().items() if v is True) or "eager"
    return "\n".join(
        [
            "# The study's cost, planned before it runs",
            "",
            f"`python benchmarks/blog_study.py {shlex.join(args.argv)}` "
            f"({platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}).",
            "",
            f"Network throughput with {' '.join(speed) or 'no speed options'} (ran as {how_ran}): "
            f"{rate:.1f} images x NFE per second, eager {eager:.1f} (batch {batch}, median of "
            "3 interleaved, timed now, on whatever shares the machine). Adaptive NFE are "
            "measured where the adaptive run has the cell, else --adaptive-nfe's guess. "
            "Not counted: torch.compile's warm-up in each run (minutes on a CPU), and "
            "other work sharing the machine.",
            "",
            table.to_markdown(index=False, floatfmt=(".0f", ".0f", ".0f", ".2f")),
            "",
            f"Total: {total:.1f} hours.",
            "",
        ]
    )


def _run(grid: list[str], out: Path, common: list[str], log: list[str], times: Path) -> None:
    """One ``rfbench run`` of the study, resumed where its directory exists unfinished;
    one begun with other speed options, or an old layout's, is refused in one line."""
    argv = ["run", *common, *grid, "--out", str(out)]
    config = out / "config.json"
    if config.exists():
        had = json.loads(config.read_text())
        for flag in ("channels_last", "compile"):
            want = f"--{flag.replace('_', '-')}" in common
            if bool(had.get(flag)) != want:
                no = "" if had.get(flag) else "no-"
                raise SystemExit(
                    f"{out} was begun with {flag}={bool(had.get(flag))}: pass "
                    f"--{no}{flag.replace('_', '-')} to resume it, or move it aside"
                )
        solvers = grid[grid.index("--solvers") + 1].split(",")
        if set(had.get("solvers", ())) - set(solvers):
            raise SystemExit(
                f"{out} holds solvers {', '.join(had['solvers'])} and this study runs "
                f"{', '.join(solvers)} there (an older layout of the study): move it aside"
            )
    _step(argv, out / "table.md", log, times, ["--resume"] if out.exists() else [])


def _matched_steps(adaptive: Path, tols: str) -> int:
    """The Euler step count nearest RK45's mean NFE at the loosest tolerance."""
    frame = read_runs([adaptive])
    loosest = max(float(t) for t in tols.split(","))
    rows = frame[(frame["solver"] == "rk45") & (frame["rtol"] == loosest)]
    rows = rows[rows["status"] == "ok"]
    if rows.empty:
        raise SystemExit(f"no successful rk45 cell at rtol {loosest:g} in {adaptive}")
    return max(1, round(float(rows["nfe"].mean())))


def _frontier(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The budget frontier: per NFE budget (powers of two up to the largest NFE), the
    setting with the best seed mean within it, and the id of its first seed's cell; each
    setting once, in budget order."""
    stats = setting_stats(frame, metric)
    keys = [c for c in ("model_id", *KEY_COLUMNS) if c in stats]
    top = math.ceil(math.log2(max(float(stats["nfe"].max()), 1)))
    rows = []
    for budget in (2**k for k in range(top + 1)):
        fit = stats[stats["nfe"] <= budget * (1 + 1e-9)]
        if fit.empty:
            continue
        best = best_first(fit, metric).iloc[0]  # as the budget table ranks them
        cells = frame[(frame["status"] == "ok") & frame[metric].notna()]
        for k in keys:
            v = best[k]
            cells = cells[cells[k].isna()] if pd.isna(v) else cells[cells[k] == v]
        first = cells.sort_values("seed").iloc[0]
        rows.append(
            {
                "budget": f"NFE ≤ {budget}",
                "solver": best["solver"],
                "setting": best["setting"],
                "nfe": best["nfe"],
                metric: best[f"{metric}_mean"],
                "cell": cell_id(first.to_dict()),
                "seed": int(first["seed"]),
            }
        )
    return pd.DataFrame(rows)


def _frontier_samples(frontier: pd.DataFrame, runs: dict) -> list[str]:
    """The saved samples (its first seed's) of each frontier cell, once each."""
    files = []
    for cell in frontier.drop_duplicates(subset="cell")["cell"]:
        found = [d / "all-samples" / f"{cell}.npz" for d in runs.values()]
        found = [f for f in found if f.is_file()]
        if not found:
            raise SystemExit(
                f"no saved samples of frontier cell {cell} (the runs' all-samples/): "
                "--resample-frontier samples the frontier again here"
            )
        files.append(str(found[0]))
    return files


def _resample(frontier, frame, common: list[str], out: Path, log, times: Path) -> list[str]:
    """--resample-frontier: each frontier cell's first seed sampled again on this machine,
    with the study's options, by one ``rfbench run`` a cell; their saved samples."""
    ids = cell_ids(frame)
    seeds = common.index("--seeds")
    files = []
    for cell in frontier.drop_duplicates(subset="cell")["cell"]:
        row = frame[ids == cell].iloc[0]
        grid = ["--solvers", row["solver"]]
        if pd.isna(row["steps"]):  # an adaptive solver's cell
            grid += ["--tols", f"{row['rtol']:g}"]
        else:
            grid += ["--steps", str(int(row["steps"])), "--grids", str(row["grid"])]
        argv = ["run", *common[:seeds], "--seeds", str(int(row["seed"]))]
        argv += [*common[seeds + 2 :], *grid, "--out", str(out / cell)]
        resume = ["--resume"] if (out / cell).exists() else []
        _step(argv, out / cell / "table.md", log, times, resume)
        files.append(str(out / cell / "all-samples" / f"{cell}.npz"))
    return files


def _rescore(files: list[str], args, log: list[str], times: Path):
    """FID with --frontier-extractor (the standard Inception), against the test split, of
    the frontier cells' saved samples, by one ``rfbench eval``; its rows, by cell."""
    out = args.out / f"frontier-{args.frontier_extractor}"
    if (out / "results.csv").exists():
        scored = pd.read_csv(out / "results.csv")["samples"].astype(str)
        if sorted(scored) != sorted(files):
            raise SystemExit(
                f"{out} scored other samples than this frontier's ({len(scored)} files; "
                f"frontier-samples.txt lists {len(files)}): move it aside to score these"
            )
    missing = [f for f in files if not Path(f).is_file()]
    if missing and not (out / "results.csv").exists():  # not kept by git: all-samples/
        raise SystemExit(f"no samples to score at {missing[0]} (moved, or not committed?)")
    argv = ["eval", *files, "--dataset", args.dataset, "--split", "test"]
    argv += ["--feature-extractor", args.frontier_extractor, "--out", str(out)]
    argv += ["--data-root", args.data_root] if args.data_root else []
    _step(argv, out / "results.csv", log, times)
    rows = pd.read_csv(out / "results.csv")
    return rows.assign(cell=[Path(str(s)).stem for s in rows["samples"]])


def _mean_std(frame: pd.DataFrame, metric: str, **match) -> tuple[float, float, float]:
    """A setting's seed mean and std of ``metric``, and its mean NFE (NaN if absent)."""
    rows = frame[frame["status"] == "ok"]
    for k, v in match.items():
        rows = rows[rows[k] == v]
    per_seed = rows.groupby("seed")[metric].mean()
    if per_seed.empty:
        return math.nan, math.nan, math.nan
    std = per_seed.std(ddof=1) if len(per_seed) > 1 else math.nan
    return float(per_seed.mean()), float(std), float(rows["nfe"].mean())


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.4g}" + (f" ± {std:.2g}" if not math.isnan(std) else "")


def _headline(frame: pd.DataFrame, metric: str, args) -> list[str]:
    """RK45 at each tolerance against Euler at the step count nearest its NFE."""
    lines = [
        f"| solver | setting | NFE | {metric} (mean ± std over seeds) |",
        "|---|---|---:|---:|",
    ]
    grids = args.grids.split(",")
    for tol in sorted({float(t) for t in args.tols.split(",")}, reverse=True):
        for solver in ("rk45", "dopri5"):
            m, s, nfe = _mean_std(frame, metric, solver=solver, rtol=tol)
            lines.append(f"| {solver} | rtol {tol:g} | {nfe:.1f} | {_fmt(m, s)} |")
    euler = frame[(frame["solver"] == "euler") & (frame["status"] == "ok")]
    for steps in sorted(euler["steps"].dropna().unique()):
        for grid in sorted(euler["grid"].dropna().unique()):
            if not any(str(grid).startswith(g.split("-")[0]) for g in grids):
                continue
            m, s, nfe = _mean_std(frame, metric, solver="euler", steps=steps, grid=grid)
            if not math.isnan(m):
                lines.append(f"| euler | {int(steps)} steps, {grid} | {nfe:.0f} | {_fmt(m, s)} |")
    return lines


def _reflow_lines(out: Path, metric: str, eval_tol: str) -> list[str]:
    """The reflow ratios from the reflow run: one Euler step of the 2-RF and of the
    distilled 2-RF over the 1-RF's RK45, against the paper's CIFAR-10 ratios."""
    csv = out / "reflow" / "run" / "results.csv"
    if not csv.exists():
        return ["No reflow results in `reflow/` (see the notes)."]
    frame = read_runs([csv])
    ids = frame["model_id"].dropna().unique()
    by = {
        "1-RF": [i for i in ids if "rf-" not in i],
        "2-RF": [i for i in ids if "-2rf-" in i and "-d1-" not in i],
        "distilled": [i for i in ids if "-2rf-d1-" in i],
    }
    if any(len(v) != 1 for v in by.values()):
        return [f"The reflow run does not hold one model of each kind: {sorted(ids)}."]
    base, base_s, base_nfe = _mean_std(
        frame, metric, model_id=by["1-RF"][0], solver="rk45", rtol=float(eval_tol)
    )
    ok = frame[frame["status"] == "ok"]
    devices = ", ".join(sorted(ok["device"].dropna().astype(str).unique()))
    lines = [
        f"Sampled on {devices}. 1-RF, rk45 rtol {eval_tol}: {metric} {_fmt(base, base_s)} "
        f"at {base_nfe:.1f} NFE.",
        "",
    ]
    for name, paper in (("2-RF", 4.7), ("distilled", 1.9)):
        m, s, _ = _mean_std(frame, metric, model_id=by[name][0], solver="euler", steps=1)
        lines.append(
            f"- {name} one Euler step: {metric} {_fmt(m, s)}; ratio to 1-RF rk45 "
            f"**{m / base:.2f}** (Liu et al. 2023, CIFAR-10, Inception FID: {paper})."
        )
    m, _, _ = _mean_std(frame, metric, model_id=by["distilled"][0], solver="euler", steps=1)
    lines += ["", target("distilled 2-RF one-step / 1-RF rk45 " + metric, m / base, "<=", 1.5)]
    return lines


def _readme(frame, metric, frontier, rescored, reports, log, args) -> None:
    ok = frame[frame["status"] == "ok"]
    env = ok.iloc[0]
    torches = set()
    for run in RUNS:  # the software the runs sampled with (env.json: one entry per call)
        try:
            calls = json.loads((args.out / run / "env.json").read_text())["invocations"]
            torches |= {str(call.get("torch")) for call in calls}
        except (OSError, ValueError, KeyError, TypeError):
            torches.add("?")
    devices = ", ".join(sorted(ok["device"].astype(str).unique()))
    seeds = ", ".join(str(int(k)) for k in sorted(ok["seed"].unique()))
    text = [
        f"# {args.dataset}, the `{args.preset}` model: every solver family, and reflow",
        "",
        f"Made by `python benchmarks/blog_study.py {shlex.join(args.argv)}`; the runs sampled "
        f"on {devices} (torch {', '.join(sorted(torches))}), this README was written on "
        f"{platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__}). "
        "It ran, or found done (wall seconds after each command, where it ran them; other "
        "work may have shared the machine, see the notes):",
        "",
        "```",
        *log,
        "```",
        "",
        *(
            ["How the model was trained, with its loss curve and checkpoint: `training.md`.", ""]
            if (args.out / "training.md").exists()
            else []
        ),
        f"Model `{env['model_id']}`; n = {int(env['n_samples'])} per cell and seed, seeds "
        f"{seeds}; {metric} against the {env['reference']} split"
        + (f" with `{env['feature_extractor']}`" if metric == "fid" else "")
        + ".",
        "",
        "## RK45 against Euler at equal NFE",
        "",
        *_headline(frame, metric, args),
        "",
        "## The best setting at each budget",
        "",
        reports["budget"].rstrip(),
        "",
    ]
    name = args.frontier_extractor
    if rescored is not None:
        joined = frontier.merge(rescored, on="cell", how="left", suffixes=("", "_eval"))
        columns = ["budget", "solver", "setting", "nfe", metric, "seed"]
        names = {metric: f"{metric} (seed mean, the run's)"}
        if args.resample_frontier:  # the cell's own seed, in the run and sampled again here
            ids = cell_ids(frame)
            again = read_runs([args.out / "frontier-resampled" / c for c in rescored["cell"]])
            again_ids = cell_ids(again)
            joined["run_seed"] = [frame[ids == c][metric].mean() for c in joined["cell"]]
            joined["here"] = [again[again_ids == c][metric].mean() for c in joined["cell"]]
            columns += ["run_seed", "here"]
            names |= {
                "run_seed": f"{metric}, that seed, the run's ({frame['device'].iloc[0]})",
                "here": f"{metric}, that seed, sampled again here ({again['device'].iloc[0]})",
            }
        show = joined[[*columns, "fid_eval"]].rename(
            columns={**names, "fid_eval": f"FID, {name} (that seed, test split)"}
        )
        text += [
            f"## FID with the {name} features on the frontier",
            "",
            "Each frontier setting's first-seed samples"
            + (
                " (sampled again on this machine: `frontier-resampled/`)"
                if args.resample_frontier
                else ""
            )
            + ", scored by `rfbench eval "
            f"--feature-extractor {name}` against the test split"
            f" (`frontier-{name}/`):",
            "",
            show.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    elif name != "none":
        text += [
            f"## FID with the {name} features on the frontier",
            "",
            "Not scored yet (--no-rescore): `frontier-samples.txt` lists the samples; the "
            "same command with --rescore scores them.",
            "",
        ]
    text += [
        "## Reflow",
        "",
        "From `reflow/README.md` (`reflow/run`: the 1-RF, the 2-RF and the distilled 2-RF in "
        "one run, so their cells alternate):",
        "",
        *_reflow_lines(args.out, metric, args.reflow_eval_tol),
        "",
        "## Every cell",
        "",
        reports["pivot"].rstrip(),
        "",
        "Figures in `figures/` (`rfbench figures` over the five runs): "
        f"`{metric}_vs_nfe`, `{metric}_vs_time` (with its Pareto front), "
        "`straightness_vs_nfe`, `samples`.",
    ]
    if args.notes is not None and args.notes.exists():
        text += ["", args.notes.read_text().rstrip()]
    (args.out / "README.md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
