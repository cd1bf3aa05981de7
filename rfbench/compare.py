"""Regression gates: a current run against a baseline, for CI.

Cells are matched on dataset, model, solver, setting and seed; cells on one side only are
reported, never dropped. Per setting, the matched seeds are compared pair by pair (the same
noise on both sides), on the mean of the per-seed differences d = current - baseline:

- a metric regresses when mean(d) exceeds its threshold, absolute or relative to the
  baseline's mean (``5%``);
- with two or more matched seeds, mean(d) must also exceed twice its standard error,
  std(d) / sqrt(k): a change inside the seed-to-seed noise is not called a regression;
- NFE is exact (the same model and noise give the same count), so it has no noise
  allowance and is judged seed by seed: any seed whose NFE grows beyond the threshold
  regresses (``--max-nfe-increase 0`` means no growth at all);
- a metric that the baseline has and the current cell lacks (missing, or NaN) regresses;
- failed cells are regressions when the baseline's cell succeeded;
- a metric is compared only between cells measured alike (``PROTOCOL``): FID, KID and
  sliced W2 at the same feature extractor, reference and sample count; NFE and time at the
  same batch size and sample count (a batched adaptive solver's NFE depends on its batch),
  time on the same device too. A matched cell where these differ is reported as
  incomparable, and that fails the gate, since no threshold can judge such a difference;
- a gate that compared nothing (no cell of the baseline in the current run) fails.

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
from rfbench.results import LATER_KEY_COLUMNS, STATUS_OK, read_runs
from rfbench.solvers import KEY_COLUMNS, Setting

MATCH = ("dataset", "model_id", *KEY_COLUMNS, "seed")
# Key columns that a results file may lack (written before they existed): the defaults.
DEFAULTED = LATER_KEY_COLUMNS
# metric option name -> results column; lower is better for every one of them.
GATED = {"fid": "fid", "kid": "kid_mean", "swd": "swd", "nfe": "nfe", "time": "wall_time_s"}
EXACT = frozenset({"nfe"})  # deterministic: judged seed by seed, with no noise allowance
# What each metric's value depends on besides the cell: cells that differ in any of these
# cannot be compared on that metric.
_QUALITY = ("feature_extractor", "reference", "n_samples")
PROTOCOL = {
    "fid": _QUALITY,
    "kid": _QUALITY,
    "swd": _QUALITY,
    "nfe": ("batch_size", "n_samples"),
    "time": ("batch_size", "n_samples", "device"),
}
PROTOCOL_COLUMNS = tuple(dict.fromkeys(c for cols in PROTOCOL.values() for c in cols))


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


def _key(any_model: bool) -> list[str]:
    return [k for k in MATCH if not (any_model and k == "model_id")]


def _normalise(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Every column compare reads, present (empty where the file lacks it), with each row's
    setting as its ``Setting`` normalises it (a fixed-step row without a grid is on the
    uniform grid; atol defaults to rtol) and the key columns as comparable text."""
    wanted = [*frame.columns, *keys, *GATED.values(), *PROTOCOL_COLUMNS, "status", "error"]
    out = frame.reindex(columns=list(dict.fromkeys(wanted))).astype({k: object for k in keys})
    for i, row in zip(out.index, out.to_dict("records")):
        for column, value in Setting.from_row(row).columns().items():
            if column in keys:
                out.at[i, column] = value
    for k in keys:
        out[k] = out[k].map(_text)
    for column in GATED.values():
        out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def _text(v) -> str:
    if pd.isna(v):
        return ""
    if isinstance(v, float | np.floating):
        return f"{v:g}"
    return str(v)


def compare(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: dict[str, Threshold | None] | None = None,
    any_model: bool = False,
    fail_on_missing: bool = False,
) -> dict:
    """The verdict of ``current`` against ``baseline``: a JSON-ready dict with
    ``regressions``, ``improvements``, ``checks``, ``incomparable``, ``missing`` and ``new``
    cells, ``ok``. The frames are typed results (``results.typed``). With
    ``fail_on_missing``, a baseline cell absent from the current run is a regression."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    keys = _key(any_model)
    _check_sides(baseline, current, keys, any_model)
    base, cur = _normalise(baseline, keys), _normalise(current, keys)
    merged = base.merge(cur, on=keys, how="outer", suffixes=("_b", "_c"), indicator=True)
    cell = lambda r: {k: r[k] for k in keys}  # noqa: E731
    missing = [cell(r) for _, r in merged[merged["_merge"] == "left_only"].iterrows()]
    new = [cell(r) for _, r in merged[merged["_merge"] == "right_only"].iterrows()]
    both = merged[merged["_merge"] == "both"]
    verdict = {"regressions": [], "improvements": [], "checks": [], "incomparable": []}
    failed = both[(both["status_b"] == STATUS_OK) & (both["status_c"] != STATUS_OK)]
    for _, r in failed.iterrows():
        verdict["regressions"].append(
            {**cell(r), "metric": "status", "error": _text(r.get("error_c"))}
        )
    ok = both[(both["status_b"] == STATUS_OK) & (both["status_c"] == STATUS_OK)]
    for name in GATED:
        if thresholds.get(name) is not None:
            _gate_metric(name, thresholds[name], ok, keys, verdict)
    if fail_on_missing:
        verdict["regressions"] += [{**c, "metric": "missing"} for c in missing]
    if both.empty:  # nothing was compared: no gate passes on that
        verdict["regressions"].append(
            {"metric": "nothing compared", "error": "no cell of the baseline is in the current run"}
        )
    return {
        "ok": not verdict["regressions"] and not verdict["incomparable"],
        **verdict,
        "missing": missing,
        "new": new,
        "thresholds": {k: (str(v) if v is not None else None) for k, v in thresholds.items()},
    }


def _check_sides(baseline: pd.DataFrame, current: pd.DataFrame, keys, any_model: bool) -> None:
    for side, frame in (("baseline", baseline), ("current", current)):
        if any_model and frame["model_id"].nunique() > 1:
            raise UserError(f"--any-model needs one model per side; the {side} has several")
        absent = [k for k in keys if k not in frame.columns and k not in DEFAULTED]
        if absent:
            raise UserError(
                f"the {side} has no {', '.join(absent)} column: cells cannot be matched (is it "
                "an rfbench results.csv of this version?)"
            )


def _gate_metric(
    name: str, threshold: Threshold, ok: pd.DataFrame, keys: list[str], verdict: dict
) -> None:
    """Gate one metric over the matched cells that succeeded on both sides: cells measured
    otherwise are incomparable, a value lost is a regression, and each setting's seeds are
    judged together (``_judge``)."""
    column = GATED[name]
    b_col, c_col = f"{column}_b", f"{column}_c"
    judged = ok[ok[b_col].notna()]
    # a value lost is a regression, whatever the other columns say (an inversion-only
    # run names no extractor, which is no reason to call its missing FID incomparable)
    differs = _protocol_differs(judged, PROTOCOL[name]) & judged[c_col].notna()
    for _, r in judged[differs].iterrows():
        sides = {
            f"{k}_{side}": _text(r[f"{k}_{suffix}"])
            for k in PROTOCOL[name]
            for side, suffix in (("baseline", "b"), ("current", "c"))
        }
        verdict["incomparable"].append({**{k: r[k] for k in keys}, "metric": name, **sides})
    judged = judged[~differs]
    for _, r in judged[judged[c_col].isna()].iterrows():
        verdict["regressions"].append(
            {
                **{k: r[k] for k in keys},
                "metric": name,
                "baseline": float(r[b_col]),
                "current": None,
                "error": f"{column} is missing or NaN",
            }
        )
    setting = [k for k in keys if k != "seed"]
    for key, g in judged[judged[c_col].notna()].groupby(setting, dropna=False, sort=True):
        row, regressed, improved = _judge(name, threshold, g[b_col], g[c_col])
        row = {**dict(zip(setting, key if isinstance(key, tuple) else (key,))), **row}
        verdict["checks"].append(row)
        if regressed:
            verdict["regressions"].append(row)
        elif improved:
            verdict["improvements"].append(row)


def _protocol_differs(pairs: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """Rows where any of ``columns`` differs between the two sides."""
    differs = pd.Series(False, index=pairs.index)
    for k in columns:
        b, c = pairs[f"{k}_b"].map(_text), pairs[f"{k}_c"].map(_text)
        differs |= b != c
    return differs


def _judge(
    name: str, threshold: Threshold, baseline: pd.Series, current: pd.Series
) -> tuple[dict, bool, bool]:
    """One setting's check: (the reported row, regressed, improved)."""
    d = (current - baseline).to_numpy(dtype=float)
    b = float(baseline.mean())
    limit = threshold.limit(b)
    mean_d = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    if name in EXACT:  # no noise to allow for: the worst seed decides
        worst = float(d.max())
        allowed, regressed, improved = limit, worst > limit, float(d.min()) < -limit and worst <= 0
    else:
        allowed = max(limit, NOISE_SE * se)
        regressed, improved = mean_d > allowed, mean_d < -allowed
    row = {
        "metric": name,
        "baseline": b,
        "current": float(current.mean()),
        "change": mean_d,
        "relative_change": mean_d / b if b else None,
        "seeds": len(d),
        "worst_seed_change": float(d.max()),
        "noise_se": se,
        "threshold": str(threshold),
        "allowed": allowed,
    }
    return row, regressed, improved


def compare_runs(
    baseline: str,
    current: str | None = None,
    thresholds: dict[str, Threshold | None] | None = None,
    any_model: bool = False,
    fail_on_missing: bool = False,
) -> tuple[dict, str]:
    """``compare`` on run directories (or results.csv files): ``current`` against
    ``baseline``, or, without ``current``, the two models of the one run ``baseline``
    (``within_run``). Returns the verdict and a title for its summary."""
    if current is None:
        base, cur = within_run(read_runs([baseline]))
        verdict = compare(base, cur, thresholds, True, fail_on_missing)
        return verdict, f"rfbench compare (within {baseline})"
    base, cur = read_runs([baseline]), read_runs([current])
    verdict = compare(base, cur, thresholds, any_model, fail_on_missing)
    return verdict, f"rfbench compare {baseline} -> {current}"


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
    status = (
        "no regression"
        if verdict["ok"]
        else ("REGRESSION" if verdict["regressions"] else "NOT COMPARABLE")
    )
    lines = [f"### {title}: {status}", ""]
    thresholds = ", ".join(f"{k} +{v}" for k, v in verdict["thresholds"].items() if v is not None)
    lines += [
        f"Allowed increases: {thresholds}; for quality and time, beyond {NOISE_SE:g} "
        "standard errors of the paired seed differences where there are two or more seeds; "
        "NFE exactly, seed by seed.",
        "",
    ]
    for label, rows in (
        ("Regressions", verdict["regressions"]),
        ("Improvements", verdict["improvements"]),
    ):
        if rows:
            lines += [f"**{label}**", "", _table(rows), ""]
    passed = sum(not any(r is x for x in verdict["regressions"]) for r in verdict["checks"])
    lines.append(
        f"{passed} of {len(verdict['checks'])} checks passed or improved, "
        f"{len(verdict['regressions'])} regressed; "
        f"{len(verdict['missing'])} cells missing from the current run, "
        f"{len(verdict['new'])} new."
    )
    if verdict.get("incomparable"):
        lines += [
            "",
            "**Not comparable**: these cells were measured otherwise on each side "
            "(feature extractor, reference or sample count for quality; batch size, "
            "sample count or device for NFE and time), so the metric cannot be gated. "
            "Rerun the baseline as the current run is measured (docs/ci-recipe.md, "
            "portable baselines).",
            "",
            _table(verdict["incomparable"]),
        ]
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
