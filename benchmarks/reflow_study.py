"""1-RF against 2-RF against a distilled 2-RF, at every NFE: the whole study in one command.

    python benchmarks/reflow_study.py --dataset toy2d --out results/reflow-toy2d
    python benchmarks/reflow_study.py --dataset fashion-mnist --out results/reflow-fashion \\
        --pairs 10000 --pair-tol 1e-3 --reflow-epochs 3 --num-samples 1000 --seeds 0

Steps, each skipped when its output exists (so an interrupted study resumes), all through
the `rfbench` command line:

1. ``rfbench train`` the 1-RF (the quick preset) into WORK/1rf, unless --parent names a
   trained 1-RF checkpoint to start from (the blog model, ``results/blog-fashion``);
2. ``rfbench reflow`` it into the 2-RF (WORK/2rf), on pairs from --pair-solver;
3. ``rfbench reflow --distill 1`` the 2-RF on its own pairs (WORK/2rf-d1);
4. ``rfbench run`` the three models over Euler at 1, 2, 4, 8 steps and --eval-solver at
   --eval-tol, into OUT/run; then ``rfbench figures`` and ``rfbench report`` views;
5. OUT/README.md: the commands, and the headline numbers read from OUT/run/results.csv;
6. the in-sample check: each model's one Euler step and --eval-solver scored on the pairs'
   own starting noise (the first n of the "pairs" stream), with the run's metric and
   reference. The run itself draws from the "samples" stream, which reflow never trains
   on; the check shows how much a score on training noise flatters the reflowed models
   (the study used to be scored that way). Written to OUT/in-sample.csv; --no-in-sample
   leaves it out (it costs each model one more --eval-solver solve of n samples).

Models and pairs stay in WORK (default runs/reflow-<dataset>, not committed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from rfbench.cli import DefaultsFormatter, _list_of, _positive, _seed
from rfbench.cli import main as rfbench
from rfbench.solvers import SOLVERS

STEPS = "1,2,4,8"


def _keep_text(parse, what: str):
    """An argparse type that checks its text with ``parse`` (one-line errors) and keeps the
    text, which the study passes on to ``rfbench``."""

    def check(text: str) -> str:
        parse(text)
        return text

    check.__name__ = what
    return check


def positive_text(kind: type, what: str):
    """One number of ``kind`` > 0, kept as text."""
    return _keep_text(_positive(kind, what), what)


def _checked(kind, what: str, positive: bool = False):
    """A comma-separated list checked as ``rfbench`` does (no repeats), kept as text."""
    return _keep_text(_list_of(kind, what, positive=positive), what)


COUNT = _positive(int, "a positive integer")
TOL = positive_text(float, "a tolerance")


def _step(argv: list[str], done: Path, log: list[str], times: Path, extra=()) -> None:
    """Run one rfbench command unless ``done`` exists; its duration is kept in ``times``
    (not a resumed one's, with ``extra`` arguments: that is not the step's time)."""
    command = "rfbench " + shlex.join(argv)
    timed(command, done, lambda: rfbench([*argv, *extra]), log, times, record=not extra)


def _model_step(
    argv: list[str], checkpoint: Path, log: list[str], times: Path, epochs: int | None = None
) -> None:
    """A ``train`` or ``reflow`` step, done only once ``checkpoint`` holds every epoch it
    was asked for (``epochs``; None: the preset's, which its spec holds): both commands
    write it after each epoch, so one cut short is continued with --resume (and its time,
    not the whole step's, is not recorded)."""
    from rfbench.train import read_checkpoint

    started, finished = checkpoint.parent.exists(), _finished(checkpoint, epochs)
    extra = []
    if started and not finished:
        extra = ["--resume"]
        if checkpoint.exists() and "optimizer" not in read_checkpoint(checkpoint):
            raise SystemExit(
                f"{checkpoint} stopped after some epochs and holds no optimizer state (a "
                "stripped checkpoint?), so it cannot be continued: give another --work"
            )

    def work() -> int:
        return rfbench([*argv, *extra])

    command = "rfbench " + shlex.join(argv)
    timed(command, lambda: finished, work, log, times, record=not started)


def _finished(checkpoint: Path, epochs: int | None = None) -> bool:
    """Whether ``checkpoint`` exists and has trained all its epochs; one trained for
    another number of epochs than ``epochs`` is refused (its work directory is another
    study's)."""
    if not checkpoint.exists():
        return False
    from rfbench.train import load_model

    model = load_model(checkpoint)
    if epochs is not None and model.spec.train.epochs != epochs:
        raise SystemExit(
            f"{checkpoint} is a {model.spec.train.epochs}-epoch training, not {epochs}: "
            "give another --work"
        )
    return model.epochs_done >= model.spec.train.epochs


def timed(command: str, done, work, log: list[str], times: Path, record=True) -> None:
    """Run ``work()`` (an exit code) unless ``done`` (a path that exists, or a function
    that says so) is done, and log ``command`` with the seconds it took, which ``times``
    (a JSON file) keeps across calls."""
    recorded = json.loads(times.read_text()) if times.exists() else {}
    if done() if callable(done) else done.exists():
        print(f"skip (done): {command}", file=sys.stderr)
    else:
        print(f"run: {command}", file=sys.stderr)
        start = time.perf_counter()
        code = work()
        if code != 0:
            raise SystemExit(f"failed ({code}): {command}")
        if record:
            recorded[command] = round(time.perf_counter() - start)
            times.parent.mkdir(parents=True, exist_ok=True)
            times.write_text(json.dumps(recorded, indent=1) + "\n")
    log.append(command + (f"  # {recorded[command]} s" if command in recorded else ""))


def main(argv=None) -> int:
    from rfbench.errors import UserError

    try:
        return _main(argv)
    except UserError as e:  # an unreadable checkpoint in WORK, say: one line
        raise SystemExit(f"reflow_study: {e}") from None


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--dataset", default="toy2d", help="toy2d or an image dataset")
    p.add_argument("--out", default=None, help="default: results/reflow-<dataset>")
    p.add_argument("--work", default=None, help="models and pairs (default: runs/reflow-<dataset>)")
    p.add_argument(
        "--pairs",
        type=COUNT,
        default=10_000,
        help="pairs for the 2-RF, and again for the distilled 2-RF",
    )
    solver = {"choices": sorted(SOLVERS), "metavar": "SOLVER"}
    p.add_argument(
        "--pair-solver", default="rk45", **solver, help="the solver that makes the pairs"
    )
    p.add_argument(
        "--pair-tol",
        default="1e-5",
        type=TOL,
        help="its rtol = atol (an adaptive --pair-solver)",
    )
    p.add_argument(
        "--pair-steps",
        default=None,
        type=positive_text(int, "a step count"),
        help="for a fixed-step --pair-solver",
    )
    p.add_argument(
        "--parent", default=None, help="a trained 1-RF checkpoint (default: train the quick one)"
    )
    p.add_argument("--train-epochs", type=COUNT, default=None, help="1-RF (default: the preset's)")
    p.add_argument("--reflow-epochs", type=COUNT, default=None, help="default: the preset's")
    p.add_argument(
        "--eval-solver",
        default="rk45",
        **solver,
        help="the adaptive solver of the evaluation, beside Euler",
    )
    p.add_argument(
        "--eval-tol",
        default="1e-5",
        type=TOL,
        help="its rtol = atol",
    )
    p.add_argument(
        "--num-samples",
        type=COUNT,
        default=None,
        help="n per cell and seed (default: the preset's)",
    )
    p.add_argument(
        "--seeds", default="0,1", type=_checked(_seed, "seed"), help="the evaluation's noise seeds"
    )
    p.add_argument("--note", default=None, help="a line for the README, e.g. on the machine")
    p.add_argument("--device", default="auto", help="every step's --device")
    p.add_argument(
        "--channels-last", action="store_true", help="the pairs' and the evaluation's solves"
    )
    p.add_argument("--compile", action="store_true", help="the pairs' and the evaluation's solves")
    p.add_argument(
        "--in-sample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step 6, the in-sample check",
    )
    p.add_argument("--data-root", default=None, help="the dataset's files (train and run)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(args.out or f"results/reflow-{args.dataset}")
    work = Path(args.work or f"runs/reflow-{args.dataset}")
    log: list[str] = []
    times = work / "step-times.json"

    rf1, rf2, d1 = (work / name / "checkpoint.pt" for name in ("1rf", "2rf", "2rf-d1"))
    epochs = ["--epochs", str(args.train_epochs)] if args.train_epochs else []
    dev = ["--device", args.device]
    speed = ["--channels-last"] if args.channels_last else []
    speed += ["--compile"] if args.compile else []
    root = ["--data-root", args.data_root] if args.data_root else []
    if args.parent:
        rf1 = Path(args.parent)
    else:
        _model_step(
            ["train", "--dataset", args.dataset, *epochs, *dev, *root, "--out", str(rf1.parent)],
            rf1,
            log,
            times,
            args.train_epochs,
        )
    _same_parent(rf2, rf1, args.pairs, args.pair_solver)
    _same_parent(d1, rf2, args.pairs, args.pair_solver)
    setting = ["--steps", args.pair_steps] if args.pair_steps else ["--tols", args.pair_tol]
    pairs = ["--pairs", str(args.pairs), "--solver", args.pair_solver, *setting]
    reflow_epochs = ["--epochs", str(args.reflow_epochs)] if args.reflow_epochs else []
    _model_step(
        [
            "reflow",
            "--checkpoint",
            str(rf1),
            *pairs,
            *reflow_epochs,
            *dev,
            *speed,
            "--out",
            str(rf2.parent),
        ],
        rf2,
        log,
        times,
        args.reflow_epochs,
    )
    _model_step(
        [
            "reflow",
            "--checkpoint",
            str(rf2),
            *pairs,
            *reflow_epochs,
            "--distill",
            "1",
            *dev,
            *speed,
            "--out",
            str(d1.parent),
        ],
        d1,
        log,
        times,
        args.reflow_epochs,
    )
    run_dir = out / "run"
    n = ["--num-samples", str(args.num_samples)] if args.num_samples else []
    _same_models(run_dir, (rf1, rf2, d1))
    _step(
        [
            "run",
            "--dataset",
            args.dataset,
            "--checkpoint",
            f"{rf1},{rf2},{d1}",
            "--solvers",
            f"euler,{args.eval_solver}",
            "--steps",
            STEPS,
            "--tols",
            args.eval_tol,
            "--seeds",
            args.seeds,
            *n,
            *dev,
            *speed,
            *root,
            "--out",
            str(run_dir),
        ],
        out / "README.md",
        log,
        times,
        ["--resume"] if run_dir.exists() else [],
    )
    log.append(f"rfbench figures {run_dir}")
    rfbench(["figures", str(run_dir)])
    frame = pd.read_csv(run_dir / "results.csv")
    metric = "fid" if frame["fid"].notna().any() else "swd"
    for view, m in (("pivot", metric), ("pivot", "straightness"), ("budget", metric)):
        target = out / f"{view}-{m}.md"
        log.append(f"rfbench report {run_dir} --view {view} --metric {m} --out {target}")
        rfbench(["report", str(run_dir), "--view", view, "--metric", m, "--out", str(target)])
    in_sample = (
        _in_sample(frame, metric, (rf1, rf2, d1), work, out, args) if args.in_sample else None
    )
    _summary(frame, metric, out, log, args, in_sample)
    print((out / "README.md").read_text())
    return 0


def _same_models(run_dir: Path, checkpoints) -> None:
    """Refuse an evaluation run that holds a model other than these three (an earlier
    study's, or a model since continued: its id is its weights' hash), which would be
    reported, or mixed with these, as if it were theirs."""
    csv = run_dir / "results.csv"
    if not csv.exists():
        return
    from rfbench.train import load_model

    want = {load_model(c).model_id for c in checkpoints}
    other = set(pd.read_csv(csv)["model_id"].dropna()) - want
    if other:
        raise SystemExit(
            f"{run_dir} holds models {', '.join(sorted(other))}, not this study's "
            f"{', '.join(sorted(want))}: move {run_dir.parent} aside"
        )


def _same_parent(child: Path, parent: Path, pairs: int, solver: str) -> None:
    """Refuse a work directory whose ``child`` model was reflowed from another parent than
    ``parent``, or on another number of pairs or pair solver (a changed --parent, 1-RF,
    --pairs or --pair-solver): its steps would be skipped as done."""
    if not (child.exists() and parent.exists()):
        return
    from rfbench.train import load_model

    lineage, want = load_model(child).spec.lineage, load_model(parent).model_id
    had = (lineage.parent, lineage.pairs, lineage.pair_solver)
    if had != (want, pairs, solver):
        raise SystemExit(
            f"{child} was reflowed from {lineage.parent} on {lineage.pairs} "
            f"{lineage.pair_solver} pairs, not from {want} ({parent}) on {pairs} {solver} "
            "pairs; give another --work"
        )


def _in_sample(frame, metric: str, checkpoints, work: Path, out: Path, args) -> pd.DataFrame:
    """Each model's one Euler step and --eval-solver on the pairs' own noise (module doc,
    step 6); cached in OUT/in-sample.csv."""
    target = out / "in-sample.csv"
    if target.exists():
        return pd.read_csv(target)

    from rfbench.data import load_split
    from rfbench.metrics.quality import build_quality
    from rfbench.reflow import PairStore
    from rfbench.sample import Batching, Measuring, integrate, noise
    from rfbench.solvers import Setting
    from rfbench.train import load_model

    pairs = PairStore(work / "2rf").manifest()["spec"]
    n = int(frame["n_samples"].iloc[0])
    from rfbench.runtime import resolve_device

    device = resolve_device(args.device)
    train = load_split(args.dataset, "train", args.data_root)
    test = load_split(args.dataset, "test", args.data_root)
    quality = build_quality(args.dataset, train, test, ("fid", "kid"), device, n, False)
    rows = []
    for path in checkpoints:
        trained = load_model(path, device)
        shape = trained.spec.sample_shape
        for solver, options in (
            ("euler", {"steps": 1}),
            (args.eval_solver, {"rtol": float(args.eval_tol), "atol": float(args.eval_tol)}),
        ):
            stream = quality.metric.stream(n)
            run = integrate(
                trained.model,
                Setting(solver, **options),
                n,
                lambda lo, hi, shape=shape: noise(pairs["seed"], range(lo, hi), shape, "pairs"),
                device=device,
                batching=Batching(int(frame["batch_size"].iloc[0]), sink=stream.add),
                measuring=Measuring(progress=False),
            )
            rows.append(
                {
                    "model_id": trained.model_id,
                    "solver": solver,
                    metric: stream.result()[metric],
                    "nfe": run.nfe_per_sample,
                }
            )
            print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    table.to_csv(target, index=False)
    return table


def _summary(
    frame: pd.DataFrame,
    metric: str,
    out: Path,
    log: list[str],
    args,
    in_sample: pd.DataFrame | None,
) -> None:
    ok = frame[frame["status"] == "ok"]
    ids = sorted(ok["model_id"].unique(), key=lambda i: ("-2rf-" in i, "-d1-" in i))
    name = {
        i: ("2-RF distilled (1 step)" if "-d1-" in i else "2-RF" if "-2rf-" in i else "1-RF")
        for i in ids
    }

    def mean(model, solver, steps=None) -> pd.Series:
        g = ok[(ok.model_id == model) & (ok.solver == solver)]
        if steps is not None:
            g = g[g.steps == steps]
        return g[[metric, "nfe", "straightness"]].mean()

    rows = []
    for i in ids:
        row = {"model": name[i], "model_id": i}
        for s in (1, 2, 4, 8):
            row[f"euler {s}"] = mean(i, "euler", s)[metric]
        adaptive = mean(i, args.eval_solver)
        row[f"{args.eval_solver} {args.eval_tol}"] = adaptive[metric]
        row[f"{args.eval_solver} NFE"] = adaptive["nfe"]
        row["straightness (euler 8)"] = mean(i, "euler", 8)["straightness"]
        rows.append(row)
    table = pd.DataFrame(rows)
    by = {name[i]: i for i in ids}
    ratio = mean(by["2-RF"], "euler", 1)[metric] / mean(by["1-RF"], args.eval_solver)[metric]
    ratio_d = (
        mean(by["2-RF distilled (1 step)"], "euler", 1)[metric]
        / mean(by["1-RF"], args.eval_solver)[metric]
    )
    s1, s2 = (mean(by[k], "euler", 8)["straightness"] for k in ("1-RF", "2-RF"))

    env = ok.iloc[0]
    text = [
        f"# Reflow study: {args.dataset}",
        "",
        "Made by `python benchmarks/reflow_study.py "
        + shlex.join(args.argv)
        + "` on "
        + f"{env['device']}; it ran, in order:",
        "",
        "```",
        *log,
        "```",
        "",
        f"{metric} per model and solver setting (mean over seeds {args.seeds}; "
        f"n = {int(env['n_samples'])}, reference {env['reference']}"
        + (f", extractor {env['feature_extractor']}" if metric == "fid" else "")
        + "):",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"- 2-RF's one Euler step against 1-RF's {args.eval_solver} ({args.eval_tol}): "
        f"ratio {ratio:.2f}; the distilled 2-RF's one step: ratio {ratio_d:.2f}. (Liu et al. "
        "2023, Table 1a, CIFAR-10 with Inception FID: 12.21 / 2.58 = 4.7 without distillation, "
        "4.85 / 2.58 = 1.9 with it.)",
        f"- Straightness along 8 Euler steps: 1-RF {s1:.4g}, 2-RF {s2:.4g} (ratio {s2 / s1:.3g}).",
        "",
        *_in_sample_section(in_sample, mean, name, metric, args, ratio, ratio_d),
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        "Figures in `run/figures/` (`rfbench figures`); tables `pivot-*.md`, `budget-*.md`.",
    ]
    (out / "README.md").write_text("\n".join(text) + "\n")


def _in_sample_section(in_sample, mean, name, metric, args, ratio, ratio_d) -> list[str]:
    """The README's in-sample check (step 6), or one line saying it was left out;
    ``mean(model_id, solver, steps)`` is a setting's out-of-sample row, ``name`` the
    models' names by id."""
    if in_sample is None:
        return ["The in-sample check (step 6) was left out (--no-in-sample).", ""]
    ids = list(name)
    by = {v: k for k, v in name.items()}

    def inside(model, solver) -> float:
        g = in_sample[(in_sample.model_id == model) & (in_sample.solver == solver)]
        return float(g[metric].iloc[0])

    base_in = inside(by["1-RF"], args.eval_solver)
    ratio_in = inside(by["2-RF"], "euler") / base_in
    ratio_d_in = inside(by["2-RF distilled (1 step)"], "euler") / base_in
    check = pd.DataFrame(
        [
            {
                "model": name[i],
                "model_id": i,
                f"euler 1, seeds {args.seeds} (out of sample)": mean(i, "euler", 1)[metric],
                "euler 1, pair noise (in sample)": inside(i, "euler"),
                f"{args.eval_solver}, seeds {args.seeds}": mean(i, args.eval_solver)[metric],
                f"{args.eval_solver}, pair noise": inside(i, args.eval_solver),
            }
            for i in ids
        ]
    )
    return [
        "## In sample against out of sample",
        "",
        "The grid above draws its noise from the evaluation stream, which no model trained "
        "on. Scored instead on the first n pairs' own starting noise (the reflowed models' "
        "training noise; `in-sample.csv`, step 6 of the script):",
        "",
        check.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"- In sample, the ratios would read {ratio_in:.2f} (2-RF) and {ratio_d_in:.2f} "
        f"(distilled), against {ratio:.2f} and {ratio_d:.2f} out of sample.",
    ]


if __name__ == "__main__":
    sys.exit(main())
