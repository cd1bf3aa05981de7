"""Figures from a results DataFrame (this module only reads frames; it computes nothing)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# Okabe & Ito's colour-blind-safe palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
QUALITY_LABELS = {"fid": "FID", "swd": "sliced Wasserstein-2", "energy_distance": "energy distance"}


def quality_column(frame: pd.DataFrame) -> str:
    """The quality metric the frame has: FID for images, the sliced W2 for toy2d."""
    for col in QUALITY_LABELS:
        if col in frame.columns and frame[col].notna().any():
            return col
    raise ValueError("the results hold no quality metric to plot")


def quality_vs_nfe(frame: pd.DataFrame, path: str | Path) -> Path:
    """Quality against NFE per solver, log-scaled x; error bars are the spread over seeds."""
    metric = quality_column(frame)
    ok = frame[(frame["status"] == "ok") & frame[metric].notna()]
    fig, ax = plt.subplots(figsize=(3.4, 2.6), dpi=200)
    for i, (solver, g) in enumerate(ok.groupby("solver", sort=True)):
        setting = g["steps"].fillna(g["rtol"])
        stats = (
            g.assign(setting=setting)
            .groupby("setting")
            .agg(nfe=("nfe", "mean"), q=(metric, "mean"), q_std=(metric, "std"))
            .sort_values("nfe")
        )
        ax.errorbar(
            stats["nfe"],
            stats["q"],
            yerr=stats["q_std"].fillna(0),
            label=solver,
            color=PALETTE[i % len(PALETTE)],
            marker="o",
            markersize=3,
            linewidth=1,
            capsize=2,
        )
    ax.set_xscale("log")
    ax.set_xlabel("NFE per sample")
    extractors = sorted(ok["feature_extractor"].dropna().astype(str).unique())
    suffix = f" ({', '.join(extractors)})" if metric == "fid" and extractors else ""
    ax.set_ylabel(QUALITY_LABELS[metric] + suffix, fontsize=8)
    dataset = ", ".join(sorted(ok["dataset"].astype(str).unique()))
    n = ", ".join(str(int(v)) for v in sorted(ok["n_samples"].unique()))
    ax.set_title(f"{dataset} (n={n})", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None} if path.suffix == ".png" else None)
    plt.close(fig)
    return path
