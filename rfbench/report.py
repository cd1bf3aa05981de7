"""Tables from a results DataFrame: markdown (table.md), LaTeX and CSV."""

from __future__ import annotations

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
    summary = frame_to_summary(frame)
    summary = summary.astype(object).where(summary.notna(), None)  # empty cells, not "nan"
    table = summary.to_markdown(index=False, floatfmt=".4g", missingval="")
    return "\n".join(head) + "\n\n" + table + "\n"


def frame_to_latex(frame: pd.DataFrame) -> str:
    """A booktabs table (pandas' to_latex, which needs jinja2: the `report` extra)."""
    try:
        return frame_to_summary(frame).to_latex(index=False, float_format="%.4g", na_rep="")
    except ImportError as e:
        raise UserError(f"LaTeX tables need {e.name}: pip install 'rfbench[report]'") from None


def frame_to_csv(frame: pd.DataFrame) -> str:
    return frame_to_summary(frame).to_csv(index=False)


FORMATS = {"md": frame_to_markdown, "latex": frame_to_latex, "csv": frame_to_csv}
