"""Tables from a results DataFrame: markdown (table.md), LaTeX and CSV.

Views: one row per cell (table.md); mean, spread and Student t CI over seeds; paired
differences against a baseline solver; a pivot of solver x setting; and the best setting
within budgets of NFE or wall time. ``results.read_runs`` merges the results of several
runs into the one frame they read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from rfbench.errors import UserError
from rfbench.results import STATUS_OK
from rfbench.solvers import KEY_COLUMNS, Setting

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

SETTING_KEYS = ("run", "dataset", "model_id", *KEY_COLUMNS, "n_samples")


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
    """A label per row's setting (``Setting.label``): "4 steps" (and the grid, where grids
    vary) for fixed-step solvers, "rtol 1e-05" (and atol and stepping, where they vary) for
    adaptive ones; "default" for a row with neither."""
    settings = [_setting(r) for r in frame.to_dict("records")]
    fixed = [s for s in settings if s is not None and not s.adaptive]
    adaptive = [s for s in settings if s is not None and s.adaptive]
    show = tuple(
        part
        for part, varies in (
            ("grid", len({s.grid for s in fixed}) > 1),
            (
                "atol",
                any(
                    len({a.atol for a in adaptive if a.rtol == r}) > 1
                    for r in {a.rtol for a in adaptive}
                ),
            ),
            ("stepping", len({s.stepping for s in adaptive}) > 1),
        )
        if varies
    )
    labels = ["default" if s is None else s.label(show) for s in settings]
    return pd.Series(labels, index=frame.index, dtype=object)


def _setting(row: dict) -> Setting | None:
    """The row's setting, or None where it has neither steps nor rtol."""
    missing = lambda v: v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))  # noqa: E731
    if missing(row.get("steps")) and missing(row.get("rtol")):
        return None
    return Setting.from_row(row)


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

    >>> from rfbench.results import read_runs
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
    """Powers of two from the first that some setting fits to the first that all fit
    (settings of infinite or unknown NFE fit none)."""
    nfe = nfe[np.isfinite(nfe.astype(float))]
    if nfe.empty:
        return []
    budgets, k = [], 1
    while True:
        if k >= nfe.min():
            budgets.append(k)
        if k >= nfe.max():
            return budgets
        k *= 2


def best_first(stats: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``setting_stats`` rows, best seed mean first (lowest, except for
    ``HIGHER_IS_BETTER``). Ties go to the lower NFE, then to the solver listed first in
    the registry (Euler before the multistep solvers whose first steps are Euler's, so
    identical solves are named by the simplest), and only then to the lower wall time."""
    from rfbench.solvers import SOLVERS

    order = {name: i for i, name in enumerate(SOLVERS)}
    mean = stats[f"{metric}_mean"]
    ranked = stats.assign(
        _score=-mean if metric in HIGHER_IS_BETTER else mean,
        _simple=[order.get(v, len(order)) for v in stats["solver"]],
    )
    ranked = ranked.sort_values(["_score", "nfe", "_simple", "wall_time_s"], kind="stable")
    return ranked.drop(columns=["_score", "_simple"])


def budget_table(
    frame: pd.DataFrame,
    metric: str = "fid",
    nfe_budgets: Sequence[int] | None = None,
    time_budgets: Sequence[float] = (),
) -> pd.DataFrame:
    """Per model, the best seed-mean ``metric`` among settings with mean NFE per sample
    <= each budget (the budget itself included; default ``default_nfe_budgets``) and with
    mean ``wall_time_s`` <= each time budget (seconds), with the solver and setting that
    reach it, ranked by ``best_first`` (ties go to the lower NFE, then the simpler solver).
    A budget that no setting fits gives a row with empty cells.

    >>> from rfbench.results import read_runs
    >>> run = read_runs(["results/quickstart-fashion"])
    >>> budget_table(run, nfe_budgets=[4, 100])[["budget", "solver", "setting"]].values.tolist()
    [['NFE ≤ 4', 'euler', '4 steps'], ['NFE ≤ 100', 'rk45', 'rtol 1e-05']]
    """
    stats = setting_stats(frame, metric)
    if nfe_budgets is None:
        nfe_budgets = default_nfe_budgets(stats["nfe"])
    mean, std = f"{metric}_mean", f"{metric}_std"
    group, keys = [k for k in ("run", "model_id") if k in stats], _model_keys(stats)
    budgets = [("nfe", k, f"NFE ≤ {k:g}") for k in nfe_budgets]
    budgets += [("wall_time_s", s, f"time ≤ {s:g} s") for s in time_budgets]
    rows = []
    for key, g in stats.groupby(group, sort=True, dropna=False):
        head = {k: v for k, v in zip(group, key) if k in keys}
        g = best_first(g, metric)
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


VIEWS = ("cells", "seeds", "paired", "pivot", "budget")
_VIEW_OPTIONS = {"baseline": "paired", "nfe_budget": "budget", "time_budget": "budget"}


def check_view(name: str, baseline=None, nfe_budget=None, time_budget=None) -> None:
    """A UserError for an option given to a view that does not take it, or missing."""
    given = {"baseline": baseline, "nfe_budget": nfe_budget, "time_budget": time_budget}
    for option, owner in _VIEW_OPTIONS.items():
        if given[option] is not None and name != owner:
            raise UserError(f"--{option.replace('_', '-')} applies to --view {owner} only")
    if name == "paired" and not baseline:
        raise UserError("--view paired needs --baseline SOLVER")


def view(
    frame: pd.DataFrame,
    name: str = "cells",
    fmt: str = "md",
    metric: str = "fid",
    baseline: str | None = None,
    nfe_budget: Sequence[int] | None = None,
    time_budget: Sequence[float] | None = None,
) -> str:
    """One view of a results frame as text in ``fmt`` (md, latex, csv): "cells" (one row
    per cell), "seeds", "paired" (against the ``baseline`` solver), "pivot" or "budget"
    (within ``nfe_budget`` and ``time_budget``), each of ``metric``. An option that the
    view does not take is a UserError."""
    check_view(name, baseline, nfe_budget, time_budget)
    if name == "cells":
        return FORMATS[fmt](frame)
    check_metric(frame, metric)
    table = {
        "seeds": lambda: seed_summary(frame, metric),
        "paired": lambda: paired_differences(frame, baseline, metric),
        "pivot": lambda: pivot_table(frame, metric),
        "budget": lambda: budget_table(frame, metric, nfe_budget, time_budget or ()),
    }[name]()
    return render_view(frame, table, fmt, caption(name, metric, baseline))
