"""Publication figures from a run directory (this module only reads; it computes nothing heavy).

Every figure is drawn in one style (``paper_style``), one column or the full text wide, with
one colour and marker per solver across all figures, and written as PDF, PNG and SVG files
that are byte-identical on a rerun (``save``). ``make_all`` draws every figure a run supports:

    >>> from rfbench.figures import make_all
    >>> make_all("results/quickstart-fashion", formats=("png",))  # doctest: +SKIP
    [PosixPath('results/quickstart-fashion/figures/fid_vs_nfe.png'), ...]

Each figure function takes the results frame (and the run directory where it reads saved
arrays) and an output stem, and raises ``NoDataError`` (a ValueError) when there is nothing
to draw. A stem that ends in a format's suffix (``fid_vs_nfe.png``) writes that one file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from numbers import Number
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from rfbench.config import FIGURE_FORMATS  # noqa: E402
from rfbench.results import STATUS_OK, cell_id, cell_keys  # noqa: E402

FORMATS = FIGURE_FORMATS
WIDTHS = {"single": 3.25, "double": 6.75}  # inches: one column, the full text width
# Okabe & Ito's colour-blind-safe palette (yellow last: it reads worst on white).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
FILLS = ("full", "none", "left")  # marker fill per pass through the palette
LINESTYLES = ("-", "--", ":", "-.")  # variants of one solver (model, grid, stepping)
QUALITY_LABELS = {"fid": "FID", "swd": "sliced Wasserstein-2", "energy_distance": "energy distance"}
# A setting; seeds are averaged over. VARIANT: what tells apart two lines of one solver.
SETTING = (
    "model_id",
    "solver",
    "grid",
    "grid_times",
    "stepping",
    "steps",
    "rtol",
    "atol",
    "t_start",
    "t_end",
)
VARIANT = ("model_id", "grid", "stepping")

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.linewidth": 0.3,
    "grid.alpha": 0.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "errorbar.capsize": 1.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,  # embedded TrueType: text stays text
    "svg.fonttype": "none",
    "svg.hashsalt": "rfbench",  # fixed ids: the same SVG bytes on a rerun
}
# Metadata that would change on every save (dates, versions) is dropped.
METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


class NoDataError(ValueError):
    """The results hold nothing this figure can draw."""


def paper_style():
    """A context manager that applies the paper style: ``with paper_style(): ...``."""
    return matplotlib.rc_context(STYLE)


def save(fig, stem: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as stem.pdf, stem.png, ... (the same bytes on a rerun), close it and
    return the paths. A stem ending in a format's suffix writes that one file."""
    stem = Path(stem)
    if stem.suffix[1:] in METADATA:
        stem, formats = stem.with_suffix(""), (stem.suffix[1:],)
    unknown = [f for f in formats if f not in METADATA]
    if unknown:
        plt.close(fig)
        raise ValueError(f"unknown figure format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    try:
        with paper_style():
            for path, fmt in zip(paths, formats):
                fig.savefig(path, format=fmt, metadata=METADATA[fmt])
                fig.set_layout_engine("none")  # one layout, shared by every format
    finally:
        plt.close(fig)
    return paths


def _inches(width: str) -> float:
    """The width of "single" (one column) or "double" (the full text) in inches."""
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {', '.join(WIDTHS)}, not {width!r}")
    return WIDTHS[width]


def _figure(width: str, height: float, nrows: int = 1, ncols: int = 1, **kw):
    """A figure ``width`` ("single" or "double") wide and ``height`` inches high."""
    return plt.subplots(nrows, ncols, figsize=(_inches(width), height), squeeze=False, **kw)


# Reading the frame.


def quality_column(frame: pd.DataFrame) -> str:
    """The quality metric the frame has: FID for images, the sliced W2 for toy2d."""
    for col in QUALITY_LABELS:
        if col in frame.columns and frame[col].notna().any():
            return col
    raise NoDataError("the results hold no quality metric (fid, swd, energy_distance) to plot")


def solver_styles(frame: pd.DataFrame) -> dict[str, dict]:
    """Colour, marker and marker fill per solver (plot keywords), assigned in sorted name
    order: the same in every figure. Each pass through the palette's 8 colours takes the
    next fill (full, hollow, half), so that no two of up to 24 solvers share colour and fill
    (the blog study draws 12; rfbench has 23)."""
    names = sorted(frame["solver"].dropna().astype(str).unique())
    return {
        name: dict(
            color=PALETTE[i % len(PALETTE)],
            marker=MARKERS[i % len(MARKERS)],
            fillstyle=FILLS[i // len(PALETTE) % len(FILLS)],
        )
        for i, name in enumerate(names)
    }


def _ok(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Successful rows with a value of ``column``, every SETTING column present."""
    frame = frame.assign(**{c: np.nan for c in (*SETTING, "seed", "wall_time_s") if c not in frame})
    if column not in frame or "status" not in frame:
        raise NoDataError(f"the results have no {column} column to plot")
    ok = frame[(frame["status"] == STATUS_OK) & frame[column].notna()]
    if ok.empty:
        raise NoDataError(f"no successful rows with a {column} value to plot")
    return ok.reset_index(drop=True)


def setting_means(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Successful rows averaged over seeds per setting: ``mean`` and ``std`` of ``column``,
    mean ``nfe`` and ``time`` (wall_time_s), the number of ``seeds``; sorted by solver, NFE."""
    ok = _ok(frame, column)
    ok = ok.assign(**{c: pd.to_numeric(ok[c]) for c in ("nfe", "wall_time_s", column)})
    means = ok.groupby(list(SETTING), dropna=False, sort=True).agg(
        nfe=("nfe", "mean"),
        time=("wall_time_s", "mean"),
        mean=(column, "mean"),
        std=(column, "std"),
        seeds=(column, "size"),
    )
    means = means.reset_index().sort_values(["solver", "nfe"], kind="stable")
    return means.assign(label=_labels(means)).reset_index(drop=True)


def _labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's line label: the solver, plus the model, grid or stepping where that solver
    has several."""
    labels = rows["solver"].astype(str)
    short = _short_model_names(rows["model_id"]) if "model_id" in rows else None
    for solver, g in rows.groupby("solver"):
        varying = [c for c in VARIANT if c in g and g[c].nunique(dropna=False) > 1]
        if varying:
            parts = g[varying].astype(str)
            if "model_id" in varying:
                parts["model_id"] = short[g.index]
            extra = parts.agg(", ".join, axis=1)
            labels[g.index] = f"{solver} (" + extra + ")"
    return labels


def _short_model_names(ids: pd.Series) -> pd.Series:
    """Model ids without the prefix they all share ("toy2d-quick-2rf-1a2b3c4d" -> "2rf-1a2b3c4d"
    beside "toy2d-quick-9f8e7d6c" -> "9f8e7d6c"), cut at a dash."""
    names = ids.astype(str)
    unique = names.unique()
    if len(unique) < 2:
        return names
    prefix = os.path.commonprefix(list(unique))
    prefix = prefix[: prefix.rfind("-") + 1]
    return names.str.slice(len(prefix))


def _lines(points: pd.DataFrame, styles: dict) -> Iterator[tuple[str, dict, pd.DataFrame]]:
    """(label, plot style, points by NFE) per line: colour and marker by solver, line style
    by variant; where the points hold several models, colour by model instead (the
    comparison such a figure is for), marker and line style by solver."""
    models = sorted(points["model_id"].astype(str).unique()) if "model_id" in points else []
    for s, (solver, g) in enumerate(points.groupby("solver", sort=True)):
        for i, (label, line) in enumerate(g.groupby("label", sort=True)):
            style = dict(styles[solver], linestyle=LINESTYLES[i % len(LINESTYLES)])
            if len(models) > 1:
                style["color"] = PALETTE[models.index(str(line["model_id"].iloc[0])) % len(PALETTE)]
                style["linestyle"] = LINESTYLES[s % len(LINESTYLES)]
            yield label, style, line.sort_values("nfe")


def _unique(frame: pd.DataFrame, column: str) -> list[str]:
    """The distinct values of a column as sorted text; none where the column is missing."""
    values = sorted(frame[column].dropna().unique()) if column in frame else []
    return [f"{v:g}" if isinstance(v, Number) else str(v) for v in values]


def _quality_label(frame: pd.DataFrame, metric: str) -> str:
    """The y label: the metric, with the feature extractor for FID on a second line (on
    one, "FID (classifier-426cd998)" is taller than a single-column figure's axes)."""
    extractors = _unique(frame, "feature_extractor") if metric == "fid" else []
    return QUALITY_LABELS[metric] + (f"\n({', '.join(extractors)})" if extractors else "")


def _title(frame: pd.DataFrame) -> str:
    """The dataset and the sample count: "fashion-mnist (n=1000)"."""
    dataset, n = ", ".join(_unique(frame, "dataset")), ", ".join(_unique(frame, "n_samples"))
    return f"{dataset} (n={n})" if n else dataset


# Axes helpers.


def _log_scale(ax, which: str = "x") -> None:
    """Log-scale the x or y axis, with plain-number ticks at 1, 2 and 5 times 10^k."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _auto_log_y(ax, values: pd.Series) -> None:
    """Log y where positive values span more than 4x (a wide FID range reads flat)."""
    v = values.dropna()
    if len(v) and v.min() > 0 and v.max() / v.min() > 4:
        _log_scale(ax, "y")


def _legend(fig, handles=None, labels=None) -> None:
    """One legend for the figure, below the axes in columns, never over the data."""
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    ncols = 3 if fig.get_figwidth() < 5 else 6
    if labels and max(len(t) for t in labels) > 14:  # long labels (several models) need room
        ncols -= 1 if ncols == 3 else 2
    fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(labels)))


def _plot_lines(ax, points: pd.DataFrame, x: str, styles: dict) -> None:
    """One line per solver variant: the mean over seeds, error bars the std over seeds."""
    for label, style, line in _lines(points, styles):
        ax.errorbar(line[x], line["mean"], yerr=line["std"].fillna(0), label=label, **style)


# Figures of metrics.


def quality_vs_nfe(
    frame: pd.DataFrame, path: str | Path, formats: Sequence[str] = FORMATS, width: str = "single"
) -> list[Path]:
    """Quality against NFE per solver, log-scaled x; error bars are the std over seeds."""
    metric = quality_column(frame)
    points = setting_means(frame, metric)
    with paper_style():
        fig, ((ax,),) = _figure(width, 2.6)
        _plot_lines(ax, points, "nfe", solver_styles(frame))
        _log_scale(ax)
        _auto_log_y(ax, points["mean"])
        ax.set(xlabel="NFE per sample", ylabel=_quality_label(frame, metric), title=_title(frame))
        _legend(fig)
        return save(fig, path, formats)


def pareto_front(times: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """Mask of the Pareto-optimal points: those whose value is lower than that of every
    faster point (and of every equally fast point listed with a lower value). Points with
    a missing time or value are never on the front."""
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    mask = np.zeros(len(t), dtype=bool)
    best = np.inf
    for i in np.lexsort((v, t)):  # by time, ties by value
        if np.isfinite(t[i]) and v[i] < best:
            mask[i], best = True, v[i]
    return mask


def quality_vs_time(
    frame: pd.DataFrame, path: str | Path, formats: Sequence[str] = FORMATS, width: str = "single"
) -> list[Path]:
    """Quality against wall time per solver setting (log x), with the Pareto front over all
    solvers: a step line through the settings no faster setting beats, which are ringed."""
    metric = quality_column(frame)
    points = setting_means(frame, metric).dropna(subset=["time"])
    if points.empty:
        raise NoDataError("no successful rows with a wall time to plot")
    front = points[pareto_front(points["time"], points["mean"])].sort_values("time")
    with paper_style():
        fig, ((ax,),) = _figure(width, 2.6)
        _plot_lines(ax, points, "time", solver_styles(frame))
        (step,) = ax.step(
            [*front["time"], points["time"].max()],
            [*front["mean"], front["mean"].iloc[-1]],
            where="post",
            color="0.25",
            linewidth=0.7,
            linestyle=(0, (3, 2)),
            zorder=1,
        )
        (rings,) = ax.plot(
            front["time"],
            front["mean"],
            linestyle="none",
            marker="o",
            markersize=7,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=0.7,
            zorder=3,
        )
        _log_scale(ax)
        _auto_log_y(ax, points["mean"])
        ax.set(xlabel="wall time for n samples (s)", ylabel=_quality_label(frame, metric))
        ax.set_title(_title(frame))
        handles, labels = ax.get_legend_handles_labels()
        _legend(fig, [*handles, (step, rings)], [*labels, "Pareto front"])
        return save(fig, path, formats)


def straightness_vs_nfe(
    frame: pd.DataFrame, path: str | Path, formats: Sequence[str] = FORMATS, width: str = "single"
) -> list[Path]:
    """Straightness (lower is straighter) against NFE per solver; curvature in a second
    panel where the results have it. Side by side at double width, stacked at single."""
    columns = ["straightness"]
    if _has(frame, "curvature"):
        columns.append("curvature")
    panels = [setting_means(frame, c) for c in columns]
    labels = {"straightness": "straightness S", "curvature": "curvature"}
    styles = solver_styles(frame)
    with paper_style():
        stacked = width == "single" and len(columns) > 1
        shape = (len(columns), 1) if stacked else (1, len(columns))
        fig, axes = _figure(width, 3.4 if stacked else 2.3, *shape, sharex=True)
        for ax, column, points in zip(axes.flat, columns, panels):
            _plot_lines(ax, points, "nfe", styles)
            _log_scale(ax)
            ax.set_ylabel(labels[column])
        for ax in axes[-1]:
            ax.set_xlabel("NFE per sample")
        fig.suptitle(f"{_title(frame)}\nalong each solver's own path; lower is straighter")
        _legend(fig)
        return save(fig, path, formats)


def _has(frame: pd.DataFrame, column: str) -> bool:
    """Whether any successful row has a value of ``column``."""
    return column in frame and frame.loc[frame["status"] == STATUS_OK, column].notna().any()


# Figures of saved arrays.


def _cells(frame: pd.DataFrame, run_dir: str | Path, folder: str) -> list[tuple[dict, Path]]:
    """Successful rows of the smallest seed with a saved ``folder/<cell_id>.npz``, in
    solver, variant and NFE order, each with its file: under the row's own run directory
    where the frame holds several runs (RUN_DIR_COLUMN), else under ``run_dir``."""
    ok = _ok(frame, "nfe")
    if RUN_DIR_COLUMN in ok:  # each run's own smallest seed
        first = ok[ok["seed"] == ok.groupby(RUN_DIR_COLUMN)["seed"].transform("min")]
    elif ok["seed"].notna().any():
        first = ok[ok["seed"] == ok["seed"].min()]
    else:
        first = ok
    first = first.assign(label=_labels(first.reset_index(drop=True)).to_numpy())
    first = first.sort_values(["solver", "label", "nfe"], kind="stable")
    cells = [
        (r, Path(r.get(RUN_DIR_COLUMN) or run_dir) / folder / f"{cell_id(r)}.npz")
        for r in first.to_dict("records")
    ]
    cells = [(r, p) for r, p in cells if p.exists()]
    if not cells:
        raise NoDataError(f"no saved {folder} of the results under {Path(run_dir) / folder}")
    return cells


def _panel_grid(cells: list[tuple[dict, Path]], width: str, left: float, below: float):
    """Square axes, a row per line label (solver variant) with its cells by NFE across, the
    unused ones hidden; ``left`` and ``below`` inches kept for row labels and a legend.
    Returns the figure, the axes per cell and the first axes of each row by label."""
    rows: dict[str, list] = {}
    for row, _ in cells:
        rows.setdefault(row["label"], []).append(row)
    ncols = max(len(r) for r in rows.values())
    side = (_inches(width) - left) / ncols
    fig, axes = _figure(width, len(rows) * (side + 0.15) + below, len(rows), ncols)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.06, hspace=0.02)
    per_cell = []
    for axs, items in zip(axes, rows.values()):
        per_cell += list(axs[: len(items)])
        for ax in axs[len(items) :]:
            ax.set_visible(False)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[], aspect="equal")
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig, per_cell, dict(zip(rows, axes[:, 0]))


def _row_labels(firsts: dict) -> None:
    """Label each row of panels with its solver, the variant on a second line."""
    for label, ax in firsts.items():
        ax.set_ylabel(label.replace(" (", "\n("), fontsize=7)


def _tile(x: np.ndarray, pad: int = 1) -> np.ndarray:
    """[k, C, H, W] uint8 images -> one near-square [rows, cols(, C)] image, white gaps."""
    k, c, h, w = x.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(x):
        top, left = (i // cols) * (h + pad), (i % cols) * (w + pad)
        canvas[top : top + h, left : left + w] = img.transpose(1, 2, 0)
    return canvas[..., 0] if c == 1 else canvas


def sample_grid(
    frame: pd.DataFrame,
    run_dir: str | Path,
    path: str | Path,
    formats: Sequence[str] = FORMATS,
    width: str = "single",
    per_panel: int = 16,
) -> list[Path]:
    """The first ``per_panel`` samples of each cell of the smallest seed, tiled: a row per
    solver, its settings by NFE across. Every cell starts from the same noise, so panels
    compare sample by sample. Reads run_dir/samples/<cell_id>.npz (key "x", uint8
    [k, C, H, W])."""
    cells = _cells(frame, run_dir, "samples")
    with paper_style():
        fig, axes, firsts = _panel_grid(cells, width, left=0.2, below=0.0)
        for ax, (row, file) in zip(axes, cells):
            with np.load(file) as z:
                x = z["x"][:per_panel]
            if x.ndim != 4:
                plt.close(fig)
                raise NoDataError(f"{file} holds no images (shape {x.shape})")
            ax.imshow(_tile(x), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"NFE {row['nfe']:.0f}", fontsize=7, pad=2)
        _row_labels(firsts)
        return save(fig, path, formats)


def trajectories(
    frame: pd.DataFrame,
    run_dir: str | Path,
    path: str | Path,
    formats: Sequence[str] = FORMATS,
    width: str = "single",
) -> list[Path]:
    """toy2d paths from noise (t=0) to data (t=1), a panel per cell of the smallest seed: a
    row per solver, its settings by NFE across, on shared axes. Reads
    run_dir/trajectories/<cell_id>.npz ("t" [m], "x" [m, k, 2])."""
    cells = _cells(frame, run_dir, "trajectories")
    start, end = PALETTE[5], PALETTE[3]
    with paper_style():
        fig, axes, firsts = _panel_grid(cells, width, left=0.2, below=0.2)
        for ax in axes[1:]:
            ax.sharex(axes[0])
            ax.sharey(axes[0])
        for ax, (row, file) in zip(axes, cells):
            with np.load(file) as z:
                t, x = z["t"], z["x"]
            if t[0] > t[-1]:
                x = x[::-1]
            ax.plot(x[:, :, 0], x[:, :, 1], color="0.45", linewidth=0.3, alpha=0.5)
            ax.scatter(x[0, :, 0], x[0, :, 1], s=1, color=start, linewidths=0, zorder=3)
            ax.scatter(x[-1, :, 0], x[-1, :, 1], s=1, color=end, linewidths=0, zorder=3)
            ax.set_title(f"NFE {row['nfe']:.0f}", fontsize=7, pad=2)
            for spine in ax.spines.values():
                spine.set(visible=True, color="0.8", linewidth=0.5)
        _row_labels(firsts)
        marks = [
            plt.Line2D([], [], linestyle="none", marker="o", markersize=3, color=c)
            for c in (start, end)
        ]
        fig.legend(marks, ["noise (t=0)", "data (t=1)"], loc="outside lower center", ncols=2)
        return save(fig, path, formats)


# Everything for a run.


RUN_DIR_COLUMN = "_run_dir"  # a row's run directory, where make_all reads several


def read_run_dirs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """The results of one or more run directories as one frame; with several, each row
    carries its directory (RUN_DIR_COLUMN), and a cell done in two of them is refused: a
    figure draws each cell once (``rfbench report`` keeps repeats apart)."""
    frames = []
    for run_dir in run_dirs:
        csv = Path(run_dir) / "results.csv"
        if not csv.exists():
            raise NoDataError(f"{run_dir} holds no results.csv")
        try:
            frames.append(pd.read_csv(csv))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise NoDataError(f"{csv} is not a results table: {str(e).splitlines()[0]}") from None
    if len(frames) == 1:
        return frames[0]
    for column in ("dataset", "feature_extractor", "reference", "n_samples"):
        values = {str(v) for f in frames if column in f for v in f[column].dropna().unique()}
        if len(values) > 1:
            raise NoDataError(
                f"the runs differ in {column} ({', '.join(sorted(values))}): their quality "
                "values do not share one axis"
            )
    frame = pd.concat(
        [f.assign(**{RUN_DIR_COLUMN: str(d)}) for f, d in zip(frames, run_dirs)],
        ignore_index=True,
    )
    ok = frame[frame["status"] == STATUS_OK]
    repeated = cell_keys(ok).duplicated(keep=False)
    if repeated.any():
        row = ok[repeated].iloc[0]
        raise NoDataError(
            f"cell {cell_id(row.to_dict())} ({row['solver']}) succeeded in more than one of "
            f"{', '.join(map(str, run_dirs))}; a figure draws each cell once"
        )
    return frame


def make_all(
    run_dir: str | Path | Sequence[str | Path],
    formats: Sequence[str] = FORMATS,
    width: str = "single",
    out: str | Path | None = None,
) -> list[Path]:
    """Draw every figure the run in ``run_dir`` supports into run_dir/figures (or ``out``);
    return the paths written. Figures without data are skipped; NoDataError if none has any.
    Several run directories (``out`` then required) are drawn as one run.

    >>> paths = make_all("results/quickstart-fashion", formats=("pdf",))  # doctest: +SKIP
    """
    dirs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else list(map(Path, run_dir))
    if len(dirs) > 1 and out is None:
        raise NoDataError("figures of several runs need a directory to go to (--out)")
    frame = read_run_dirs(dirs)
    run_dir = dirs[0]
    out = Path(out) if out is not None else run_dir / "figures"
    try:
        metric = quality_column(frame)
    except NoDataError:
        metric = "quality"
    jobs = {
        f"{metric}_vs_nfe": lambda p: quality_vs_nfe(frame, p, formats, width),
        f"{metric}_vs_time": lambda p: quality_vs_time(frame, p, formats, width),
        "straightness_vs_nfe": lambda p: straightness_vs_nfe(frame, p, formats, width),
        "samples": lambda p: sample_grid(frame, run_dir, p, formats, width),
        "trajectories": lambda p: trajectories(frame, run_dir, p, formats, width),
    }
    paths, skipped = [], []
    for name, draw in jobs.items():
        try:
            paths += draw(out / name)
        except NoDataError as e:
            skipped.append(f"{name}: {e}")
    if not paths:
        where = ", ".join(str(d / "results.csv") for d in dirs)
        raise NoDataError(f"no figure to draw from {where}: " + "; ".join(skipped))
    return paths
