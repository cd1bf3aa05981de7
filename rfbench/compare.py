"""Regression gates: a current run against a baseline, for CI.

Cells are matched on dataset, model, solver, setting and seed; cells on one side only are
reported, never dropped. Per setting, the matched seeds are compared pair by pair (the same
noise on both sides), on the mean of the per-seed differences d = current - baseline:

- a metric regresses when mean(d) exceeds its threshold, absolute or relative to the
  baseline's mean (``5%``);
- with two or more matched seeds, mean(d) must also exceed twice its standard error,
  std(d) / sqrt(k): a change inside the seed-to-seed noise is not called a regression;
- failed cells are regressions when the baseline's cell succeeded.

Time is judged the same way on ``wall_time_s`` (each cell already the median of its
``--repeats``). An absolute time from another machine, or another moment on a shared one,
is no gate: run the baseline beside the candidate in the same job (``rfbench run
--checkpoint base,cand``, then ``rfbench compare RUN_DIR``), which compares the two models
of one run cell by cell.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rfbench.errors import UserError
from rfbench.results import STATUS_OK

MATCH = ("dataset", "model_id", "solver", "steps", "grid", "rtol", "atol", "stepping", "seed")
# metric option name -> results column; lower is better for every one of them.
GATED = {"fid": "fid", "kid": "kid_mean", "swd": "swd", "nfe": "nfe", "time": "wall_time_s"}


@dataclass(frozen=True)
class Threshold:
    """The largest allowed increase: absolute, or relative to the baseline (``5%``)."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Threshold | None:
        """``5%`` (relative), ``2.5`` (absolute), or ``off`` (no gate: None)."""
        if str(text).strip().lower() == "off":
            return None
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(%?)\s*", str(text), re.I)
        if not m:
            raise UserError(
                f"threshold {text!r} is not a number >= 0, a percentage like 5%, or off"
            )
        value = float(m.group(1))
        if not math.isfinite(value):
            raise UserError(f"threshold {text!r} is not finite; use off for no gate")
        return cls(value / 100, True) if m.group(2) else cls(value)

    def limit(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


# Defaults, documented in the CLI help and the README.
DEFAULT_THRESHOLDS = {
    "fid": Threshold(0.05, True),
    "kid": None,  # not gated unless asked
    "swd": Threshold(0.05, True),
    "nfe": Threshold(0.0),
    "time": Threshold(0.25, True),
}
NOISE_SE = 2.0  # a regression must exceed this many standard errors of the paired mean


def _key(frame: pd.DataFrame, any_model: bool) -> list[str]:
    return [k for k in MATCH if k in frame.columns and not (any_model and k == "model_id")]


def _normalise(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Key columns as comparable text (CSV reads integers with gaps as floats)."""
    out = frame.copy()
    for k in keys:
        out[k] = out[k].map(lambda v: "" if pd.isna(v) else (f"{v:g}" if isinstance(v, float)
                                                                else str(v)))  # fmt: skip
    return out


def compare(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: dict[str, Threshold | None] | None = None,
    any_model: bool = False,
) -> dict:
    """The verdict of ``current`` against ``baseline``: a JSON-ready dict with
    ``regressions``, ``improvements``, ``checks``, ``missing`` and ``new`` cells, ``ok``."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    if any_model:
        for side, frame in (("baseline", baseline), ("current", current)):
            if frame["model_id"].nunique() > 1:
                raise UserError(f"--any-model needs one model per side; the {side} has several")
    keys = _key(baseline, any_model)
    base, cur = _normalise(baseline, keys), _normalise(current, keys)
    merged = base.merge(cur, on=keys, how="outer", suffixes=("_b", "_c"), indicator=True)
    cell = lambda r: {k: r[k] for k in keys}  # noqa: E731
    missing = [cell(r) for _, r in merged[merged["_merge"] == "left_only"].iterrows()]
    new = [cell(r) for _, r in merged[merged["_merge"] == "right_only"].iterrows()]
    both = merged[merged["_merge"] == "both"]

    regressions, improvements, checks = [], [], []
    failed = both[(both["status_b"] == STATUS_OK) & (both["status_c"] != STATUS_OK)]
    for _, r in failed.iterrows():
        regressions.append({**cell(r), "metric": "status", "error": str(r.get("error_c", ""))})
    ok = both[(both["status_b"] == STATUS_OK) & (both["status_c"] == STATUS_OK)]
    setting = [k for k in keys if k != "seed"]
    for name, column in GATED.items():
        threshold = thresholds.get(name)
        if threshold is None or f"{column}_b" not in ok or ok[f"{column}_b"].isna().all():
            continue
        for key, g in ok.groupby(setting, dropna=False, sort=True):
            pairs = g[[f"{column}_b", f"{column}_c"]].dropna()
            if pairs.empty:
                continue
            d = (pairs[f"{column}_c"] - pairs[f"{column}_b"]).to_numpy(dtype=float)
            b = float(pairs[f"{column}_b"].mean())
            mean_d = float(d.mean())
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
            allowed = max(threshold.limit(b), NOISE_SE * se)
            row = {
                **dict(zip(setting, key if isinstance(key, tuple) else (key,))),
                "metric": name, "baseline": b, "current": float(pairs[f"{column}_c"].mean()),
                "change": mean_d, "relative_change": mean_d / b if b else None,
                "seeds": len(d), "noise_se": se, "threshold": str(threshold),
                "allowed": allowed,
            }  # fmt: skip
            checks.append(row)
            if mean_d > allowed:
                regressions.append(row)
            elif mean_d < -max(threshold.limit(b), NOISE_SE * se):
                improvements.append(row)
    return {
        "ok": not regressions,
        "regressions": regressions,
        "improvements": improvements,
        "checks": checks,
        "missing": missing,
        "new": new,
        "thresholds": {k: (str(v) if v is not None else None) for k, v in thresholds.items()},
    }


def within_run(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same-job mode: the two models of one run (``run --checkpoint base,candidate``
    evaluates them cell by cell, alternating), as baseline and current, matched across
    models. The baseline is the model that comes first in the run."""
    present = list(dict.fromkeys(frame["model_id"]))
    if len(present) != 2:
        raise UserError(
            "comparing within one run needs exactly two models in it (run --checkpoint "
            f"base,candidate); it has {len(present)}: {', '.join(map(str, present))}"
        )
    return frame[frame["model_id"] == present[0]], frame[frame["model_id"] == present[1]]


def to_markdown(verdict: dict, title: str = "rfbench compare") -> str:
    """A summary fit for a pull-request comment."""
    lines = [f"### {title}: {'no regression' if verdict['ok'] else 'REGRESSION'}", ""]
    thresholds = ", ".join(f"{k} +{v}" for k, v in verdict["thresholds"].items() if v is not None)
    lines += [f"Allowed increases: {thresholds}; beyond {NOISE_SE:g} standard errors of the "
              "paired seed differences where there are two or more seeds.", ""]  # fmt: skip
    for label, rows in (("Regressions", verdict["regressions"]),
                        ("Improvements", verdict["improvements"])):  # fmt: skip
        if rows:
            lines += [f"**{label}**", "", _table(rows), ""]
    lines.append(f"{len(verdict['checks'])} checks passed or improved; "
                 f"{len(verdict['missing'])} cells missing from the current run, "
                 f"{len(verdict['new'])} new.")  # fmt: skip
    for label, cells in (("Missing", verdict["missing"]), ("New", verdict["new"])):
        if cells:
            lines += ["", f"**{label} cells**", "", _table(cells)]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows).replace("", np.nan).dropna(axis=1, how="all")
    shown = frame.astype(object).where(frame.notna(), None)
    return shown.to_markdown(index=False, floatfmt=".4g", missingval="")


def to_json(verdict: dict) -> str:
    """The verdict as strict JSON: NaN and infinities become null."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(clean(verdict), indent=2, allow_nan=False) + "\n"
