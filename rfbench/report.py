"""Tables from a results DataFrame: markdown (table.md), LaTeX and CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rfbench.errors import UserError

# The columns a reader of table.md wants, in order; those that are all empty are dropped.
SUMMARY_COLUMNS = (
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
    varying = {"grid", "stepping", "seed"}  # shown only where the grid varies them
    cols = [
        c
        for c in SUMMARY_COLUMNS
        if c in frame.columns
        and frame[c].notna().any()
        and (c not in varying or frame[c].nunique() > 1)
    ]
    return frame.sort_values(["solver", "nfe"], kind="stable")[cols].reset_index(drop=True)


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A markdown table headed by the protocol: dataset, model, n, extractor, reference."""
    if frame.empty:
        return "_no results_\n"
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
    return "\n".join(head) + "\n\n" + render(frame_to_summary(frame), "md")


def render(table: pd.DataFrame, fmt: str) -> str:
    """Any table as markdown, LaTeX (booktabs) or CSV; empty cells stay empty, never "nan"."""
    if fmt == "md":
        shown = table.astype(object).where(table.notna(), None)
        return shown.to_markdown(index=False, floatfmt=".4g", missingval="") + "\n"
    if fmt == "latex":
        try:  # pandas' to_latex needs jinja2: the `report` extra
            return table.to_latex(index=False, float_format="%.4g", na_rep="")
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

SETTING_KEYS = ("dataset", "model_id", "solver", "steps", "grid", "rtol", "stepping", "n_samples")


def _settings(frame: pd.DataFrame) -> list[str]:
    return [k for k in SETTING_KEYS if k in frame.columns]


def seed_summary(
    frame: pd.DataFrame, metric: str = "fid", boot: int = 2000, level: float = 0.95
) -> pd.DataFrame:
    """Per setting: the metric's mean and standard deviation over seeds, with a percentile
    bootstrap confidence interval of the mean (resampling seeds; needs >= 2 seeds)."""
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    rng = np.random.default_rng(0)
    rows = []
    for key, g in ok.groupby(_settings(ok), dropna=False, sort=True):
        values = g[metric].to_numpy(dtype=float)
        row = dict(zip(_settings(ok), key), nfe=g["nfe"].mean(), seeds=len(values))
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        if len(values) > 1:
            means = rng.choice(values, size=(boot, len(values))).mean(axis=1)
            lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(frame: pd.DataFrame, baseline: str, metric: str = "fid") -> pd.DataFrame:
    """Each setting minus the ``baseline`` solver on the same model and seed (the same noise):
    mean, standard deviation and count of the per-seed differences."""
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    base = ok[ok["solver"] == baseline]
    if base.empty:
        raise UserError(f"no successful rows of baseline solver {baseline!r} to pair with")
    if base.duplicated(["model_id", "seed"]).any():
        raise UserError(
            f"baseline {baseline!r} has several settings per seed; keep one in the run to pair"
        )
    ref = base.set_index(["model_id", "seed"])[metric]
    others = ok[ok["solver"] != baseline]
    diffs = others.assign(
        diff=others[metric].to_numpy()
        - ref.reindex(
            pd.MultiIndex.from_frame(others[["model_id", "seed"]])
        ).to_numpy()  # fmt: skip
    ).dropna(subset=["diff"])
    out = diffs.groupby(_settings(diffs), dropna=False, sort=True)["diff"].agg(
        ["mean", "std", "count"]
    )
    return out.rename(columns=lambda c: f"{metric}_minus_{baseline}_{c}").reset_index()
