"""Tables from a results DataFrame: markdown (table.md), LaTeX and CSV.

Views: one row per cell (table.md); mean, spread and Student t CI over seeds; paired
differences against a baseline solver; a pivot of solver x setting; and the best setting
within budgets of NFE or wall time. ``read_runs`` merges the results of several runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rfbench.errors import UserError
from rfbench.results import CELL_KEY, COLUMNS, STATUS_OK, read_results_csv, typed

# The columns a reader of table.md wants, in order; those that are all empty are dropped.
SUMMARY_COLUMNS = (
    "run",
    "model_id",
    "solver",
    "steps",
    "grid",
    "rtol",
    "stepping",
    "seed",
    "nfe",
    "fid",
    "kid_mean",
    "straightness",
    "curvature",
    "inversion_rmse",
    "swd",
    "energy_distance",
    "wall_time_s",
    "overhead_time_s",
    "images_per_s",
    "status",
)


def frame_to_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The readable subset of a results frame, sorted by solver and cost."""
    varying = {"run", "model_id", "grid", "stepping", "seed"}  # shown only where they vary
    cols = [
        c
        for c in SUMMARY_COLUMNS
        if c in frame.columns
        and frame[c].notna().any()
        and (c not in varying or frame[c].nunique() > 1)
    ]
    order = [c for c in ("run", "model_id") if c in frame.columns] + ["solver", "nfe"]
    return frame.sort_values(order, kind="stable")[cols].reset_index(drop=True)


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A markdown table headed by the protocol: dataset, model, n, extractor, reference."""
    if frame.empty:
        return "_no results_\n"
    return "\n".join(protocol(frame)) + "\n\n" + render(frame_to_summary(frame), "md")


def protocol(frame: pd.DataFrame) -> list[str]:
    """Markdown list items naming what makes numbers comparable: data, model, n, extractor."""
    head = []
    for label, col in (
        ("dataset", "dataset"),
        ("model", "model_id"),
        ("samples", "n_samples"),
        ("batch size", "batch_size"),
        ("feature extractor", "feature_extractor"),
        ("reference", "reference"),
        ("seeds", "seed"),
        ("device", "device"),
    ):
        values = sorted({str(v) for v in frame[col].dropna()})
        if values:
            head.append(f"- {label}: {', '.join(values)}")
    return head


def render(table: pd.DataFrame, fmt: str) -> str:
    """Any table as markdown, LaTeX (booktabs) or CSV; empty cells stay empty, never "nan"."""
    if fmt == "md":
        shown = table.astype(object).where(table.notna(), None)
        return shown.to_markdown(index=False, floatfmt=".4g", missingval="") + "\n"
    if fmt == "latex":
        try:  # pandas' to_latex needs jinja2: the `report` extra
            text = table.to_latex(index=False, float_format="%.4g", na_rep="", escape=True)
            return text.replace("±", r"$\pm$").replace("≤", r"$\leq$")
        except ImportError as e:
            raise UserError(f"LaTeX tables need {e.name}: pip install 'rfbench[report]'") from None
    if fmt == "csv":
        return table.to_csv(index=False)
    raise ValueError(f"unknown table format {fmt!r}")


def frame_to_latex(frame: pd.DataFrame) -> str:
    return render(frame_to_summary(frame), "latex")


def frame_to_csv(frame: pd.DataFrame) -> str:
    return render(frame_to_summary(frame), "csv")


FORMATS = {"md": frame_to_markdown, "latex": frame_to_latex, "csv": frame_to_csv}


# Uncertainty over seeds.

SETTING_KEYS = (
    "run",
    "dataset",
    "model_id",
    "solver",
    "steps",
    "grid",
    "rtol",
    "atol",
    "stepping",
    "n_samples",
)


def _settings(frame: pd.DataFrame) -> list[str]:
    return [k for k in SETTING_KEYS if k in frame.columns]


def mean_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``values`` (>= 2 of them).

    Its coverage is exact for normally distributed values at any count, which a percentile
    bootstrap's is not at the 2 to 5 seeds a benchmark has (it covers about 50% of the
    time at 2 seeds and 72% at 3; tests/test_report.py simulates both). At 2 seeds the
    interval is wide, as it should be: t(0.975, 1) = 12.7.
    """
    from scipy.stats import t as student_t

    n = len(values)
    if n < 2:
        raise ValueError("an interval of the mean needs at least 2 values")
    mean = float(np.mean(values))
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * float(np.std(values, ddof=1)) / n**0.5
    return mean - half, mean + half


def seed_summary(frame: pd.DataFrame, metric: str = "fid", level: float = 0.95) -> pd.DataFrame:
    """Per setting: the metric's mean and standard deviation over seeds, with a Student t
    confidence interval of the mean (``mean_interval``; needs >= 2 seeds), and the mean NFE
    per sample and wall time."""
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    rows = []
    for key, g in ok.groupby(_settings(ok), dropna=False, sort=True):
        values = g[metric].to_numpy(dtype=float)
        row = dict(zip(_settings(ok), key), nfe=g["nfe"].mean(), seeds=len(values))
        row["wall_time_s"] = g["wall_time_s"].mean()
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        if len(values) > 1:
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = mean_interval(values, level)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(frame: pd.DataFrame, baseline: str, metric: str = "fid") -> pd.DataFrame:
    """Each setting minus the ``baseline`` solver on the same model and seed (the same noise):
    mean, standard deviation and count of the per-seed differences."""
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    base = ok[ok["solver"] == baseline]
    if base.empty:
        raise UserError(f"no successful rows of baseline solver {baseline!r} to pair with")
    pair = [k for k in ("run", "model_id") if k in ok.columns] + ["seed"]
    if base.duplicated(pair).any():
        raise UserError(
            f"baseline {baseline!r} has several settings per seed; keep one in the run to pair"
        )
    ref = base.set_index(pair)[metric]
    others = ok[ok["solver"] != baseline]
    diffs = others.assign(
        diff=others[metric].to_numpy()
        - ref.reindex(pd.MultiIndex.from_frame(others[pair])).to_numpy()
    ).dropna(subset=["diff"])
    out = diffs.groupby(_settings(diffs), dropna=False, sort=True)["diff"].agg(
        ["mean", "std", "count"]
    )
    return out.rename(columns=lambda c: f"{metric}_minus_{baseline}_{c}").reset_index()


# Several runs in one table.


def read_runs(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The results of several runs (run directories, or results.csv files) as one frame.

    A cell (model, solver, setting, seed) that succeeded in more than one run is never
    pooled: the frame then gets a ``run`` column (each run directory's name), which every
    view keys on. Without such repeats there is no ``run`` column.

    >>> read_runs(["results/quickstart-fashion"])["solver"].unique().tolist()
    ['euler', 'rk45']
    """
    if not paths:
        raise UserError("no run directory given")
    frames, names, seen = [], [], set()
    for given in paths:
        path = Path(given)
        csv = path / "results.csv" if path.is_dir() else path
        if not csv.is_file():
            raise UserError(f"{given} holds no results.csv: not a run directory")
        if csv.resolve() in seen:
            raise UserError(f"{given} is given twice")
        seen.add(csv.resolve())
        frame = read_results_csv(csv)
        missing = [c for c in ("model_id", "solver", "seed", "nfe", "status") if c not in frame]
        if missing:
            raise UserError(f"{csv} is not an rfbench results.csv: no {', '.join(missing)}")
        frames.append(frame)
        names.append(csv.resolve().parent.name)
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    runs = [f.assign(run=n) for f, n in zip(frames, names) if len(f)]  # empty: no dtypes
    merged = typed(pd.concat(runs or [frames[0].assign(run=names[0])], ignore_index=True))
    merged = merged.reindex(columns=[*COLUMNS, *(c for c in merged if c not in COLUMNS)])
    ok = merged[merged["status"] == STATUS_OK]
    if not ok.duplicated([k for k in CELL_KEY if k in ok.columns]).any():
        merged = merged.drop(columns="run")
    return merged


# Pivot and budget views: one row per setting, pooled over seeds.

# Numeric columns a view can summarise; those with values are offered in error messages.
METRICS = (
    "fid",
    "kid_mean",
    "precision",
    "recall",
    "isc_mean",
    "swd",
    "energy_distance",
    "straightness",
    "curvature",
    "inversion_rmse",
    "nfe",
    "wall_time_s",
    "model_time_s",
    "overhead_time_s",
    "images_per_s",
)
HIGHER_IS_BETTER = frozenset({"precision", "recall", "isc_mean", "images_per_s"})


def check_metric(frame: pd.DataFrame, metric: str) -> None:
    """A UserError unless ``metric`` is a numeric column with values in some row."""
    numeric = metric in frame and pd.api.types.is_numeric_dtype(frame[metric])
    if numeric and frame[metric].notna().any():
        return
    have = [m for m in METRICS if m in frame and frame[m].notna().any()]
    raise UserError(
        f"the results have no values of {metric!r}; they have: {', '.join(have) or 'none'}"
    )


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """A label per row's setting: "4 steps" (and the grid, where grids vary) for fixed-step
    solvers, "rtol 1e-05" (and atol and stepping, where they vary) for adaptive ones."""
    get = lambda c: frame[c] if c in frame else pd.Series(np.nan, index=frame.index)
    fixed, adaptive = frame["steps"].notna(), frame["steps"].isna() & frame["rtol"].notna()
    show_grid = get("grid")[fixed].nunique() > 1
    show_atol = frame[adaptive].groupby("rtol")["atol"].nunique().gt(1).any()
    show_stepping = get("stepping")[adaptive].nunique() > 1

    def label(steps, grid, rtol, atol, stepping) -> str:
        if pd.notna(steps):
            n = int(steps)
            text = f"{n} step" + ("s" if n != 1 else "")
            return text + (f" {grid}" if show_grid and pd.notna(grid) else "")
        if pd.isna(rtol):
            return "default"
        text = f"rtol {rtol:g}" + (f" atol {atol:g}" if show_atol else "")
        return text + (f" {stepping}" if show_stepping and pd.notna(stepping) else "")

    cols = zip(frame["steps"], get("grid"), frame["rtol"], frame["atol"], get("stepping"))
    return pd.Series([label(*c) for c in cols], index=frame.index, dtype=object)


def _model_keys(stats: pd.DataFrame) -> list[str]:
    """Row keys above the solver: the run where runs repeat cells, the model where several."""
    return [k for k in ("run", "model_id") if k in stats and (k == "run" or stats[k].nunique() > 1)]


def setting_stats(frame: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """``seed_summary`` with a ``setting`` label and an ``order`` (fixed steps ascending,
    then tolerances from loose to tight) for columns; only successful cells count."""
    stats = seed_summary(frame, metric)
    if stats.empty:
        raise UserError(f"no successful cells with values of {metric!r}")
    stats["setting"] = setting_labels(stats)
    fixed = stats["steps"].notna()
    stats["order"] = list(zip(~fixed, stats["steps"].fillna(0), -stats["rtol"].fillna(0)))
    return stats


def _cell_text(mean: float, std: float, nfe: float) -> str:
    """ "184.2 ± 3.1 (86)": mean ± std over seeds (no std for one seed), NFE per sample."""
    text = f"{mean:.4g}" + (f" ± {std:.2g}" if pd.notna(std) else "")
    return text + (f" ({nfe:.0f})" if pd.notna(nfe) else "")


def pivot_table(frame: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """Rows: solver (model x solver for several models); columns: settings ("1 step",
    "rtol 1e-05"); cells: ``metric`` mean ± std over seeds with the mean NFE per sample.

    >>> pivot_table(read_runs(["results/quickstart-fashion"])).columns[:3].tolist()
    ['solver', '1 step', '2 steps']
    """
    stats = setting_stats(frame, metric)
    stats["cell"] = [
        _cell_text(*v) for v in zip(stats[f"{metric}_mean"], stats[f"{metric}_std"], stats["nfe"])
    ]
    keys = _model_keys(stats) + ["solver"]
    try:
        table = stats.pivot(index=keys, columns="setting", values="cell")
    except ValueError:
        raise UserError("several settings share a label: report the runs separately") from None
    columns = stats.sort_values("order", kind="stable")["setting"].unique()
    adaptive = stats.groupby("solver")["steps"].apply(lambda s: s.isna().all())
    table = table[columns].reset_index()
    table = table.assign(_adaptive=table["solver"].map(adaptive))
    table = table.sort_values([*keys[:-1], "_adaptive", "solver"]).drop(columns="_adaptive")
    table.columns.name = None
    return table.rename(columns={"model_id": "model"}).reset_index(drop=True)


def default_nfe_budgets(nfe: pd.Series) -> list[int]:
    """Powers of two from the first that some setting fits to the first that all fit."""
    budgets, k = [], 1
    while True:
        if k >= nfe.min():
            budgets.append(k)
        if k >= nfe.max():
            return budgets
        k *= 2


def budget_table(
    frame: pd.DataFrame,
    metric: str = "fid",
    nfe_budgets: Sequence[int] | None = None,
    time_budgets: Sequence[float] = (),
) -> pd.DataFrame:
    """Per model, the best seed-mean ``metric`` among settings with mean NFE per sample
    <= each budget (the budget itself included; default ``default_nfe_budgets``) and with
    mean ``wall_time_s`` <= each time budget (seconds), with the solver and setting that
    reach it. Lowest is best, except for ``HIGHER_IS_BETTER``; ties go to the cheaper.
    A budget that no setting fits gives a row with empty cells.

    >>> run = read_runs(["results/quickstart-fashion"])
    >>> budget_table(run, nfe_budgets=[4, 100])[["budget", "solver", "setting"]].values.tolist()
    [['NFE ≤ 4', 'euler', '4 steps'], ['NFE ≤ 100', 'rk45', 'rtol 1e-05']]
    """
    stats = setting_stats(frame, metric)
    if nfe_budgets is None:
        nfe_budgets = default_nfe_budgets(stats["nfe"])
    mean, std = f"{metric}_mean", f"{metric}_std"
    stats["score"] = -stats[mean] if metric in HIGHER_IS_BETTER else stats[mean]
    group, keys = [k for k in ("run", "model_id") if k in stats], _model_keys(stats)
    budgets = [("nfe", k, f"NFE ≤ {k:g}") for k in nfe_budgets]
    budgets += [("wall_time_s", s, f"time ≤ {s:g} s") for s in time_budgets]
    rows = []
    for key, g in stats.groupby(group, sort=True, dropna=False):
        head = {k: v for k, v in zip(group, key) if k in keys}
        g = g.sort_values(["score", "nfe", "wall_time_s"], kind="stable")
        for col, limit, label in budgets:
            fit = g[g[col] <= limit * (1 + 1e-9)]
            row = dict(head, budget=label)
            if not fit.empty:
                best = fit.iloc[0]
                row.update(solver=best["solver"], setting=best["setting"], nfe=best["nfe"])
                row.update({"wall_time_s": best["wall_time_s"], metric: best[mean], std: best[std]})
            rows.append(row)
    columns = [*keys, "budget", "solver", "setting", "nfe", "wall_time_s", metric, std]
    table = pd.DataFrame(rows).reindex(columns=columns)
    if table[std].isna().all():
        table = table.drop(columns=std)
    return table.rename(columns={"model_id": "model"})


# A view with its context.


def caption(view: str, metric: str, baseline: str | None = None) -> str:
    """One line saying what a view's numbers are."""
    best = "highest" if metric in HIGHER_IS_BETTER else "lowest"
    return {
        "seeds": f"{metric} over seeds: mean, standard deviation, 95% Student t CI of the mean",
        "paired": f"{metric} minus {baseline} on the same seeds (the same noise)",
        "pivot": f"{metric}: mean ± std over seeds (mean NFE per sample)",
        "budget": f"best ({best}) {metric}, mean over seeds, within each budget of NFE per "
        "sample or wall time (wall_time_s, seconds)",
    }[view]


def notes(frame: pd.DataFrame) -> list[str]:
    """What a view leaves out or mixes: cells that did not succeed, and models whose cells
    differ in sample count, feature extractor or reference (their FIDs do not compare)."""
    out = []
    bad = frame[frame["status"] != STATUS_OK]
    if not bad.empty:
        cells = [
            f"{r.solver} {label} seed {r.seed:g} ({r.status})"
            for r, label in zip(bad.itertuples(), setting_labels(bad))
        ]
        shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
        out.append(f"left out {len(bad)} cell(s) that did not succeed: {shown}")
    for col in ("n_samples", "feature_extractor", "reference"):
        for model, values in frame.groupby("model_id")[col]:
            if values.nunique() > 1:
                shown = ", ".join(sorted(str(v) for v in values.dropna().unique()))
                out.append(f"model {model} has cells with {col} {shown}: they do not compare")
    return out


def render_view(frame: pd.DataFrame, table: pd.DataFrame, fmt: str, title: str) -> str:
    """A view's table with its context: in markdown the protocol and ``title`` above and the
    notes below; in LaTeX the same as % comments; CSV is the bare table."""
    text = render(table, fmt)
    if fmt == "md":
        below = "".join(f"\n_{n}_\n" for n in notes(frame))
        return "\n".join([*protocol(frame), f"- {title}"]) + "\n\n" + text + below
    if fmt == "latex":
        return "".join(f"% {line}\n" for line in [title, *notes(frame)]) + text
    return text
