"""A solve's setting: what one solve needs besides the model and the noise.

A ``Setting`` is made once, from the command line, a grid, a results row or the API, and
checked once, against its solver's ``SolverSpec``, when it is made. Everything downstream
takes it as it is: the solvers, the sampler, the grid runner, the results' cell identity,
the tables and the regression gate.

>>> Setting("euler", steps=4).label()
'4 steps'
>>> Setting("rk45", rtol=1e-5).key()
('rk45', None, None, None, 1e-05, 1e-05, 'batched', 0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rfbench.errors import UserError
from rfbench.solvers.base import SolverSpec, get_solver

STEPPING_MODES = ("batched", "per-sample")  # adaptive solvers: one error norm, or one each
DEFAULT_GRID = "uniform"
LABEL_PARTS = ("grid", "atol", "stepping")  # what Setting.label may add to steps or rtol
# The results columns of Setting.key(), in its order: what identifies a solve in results.py
# (cells, resume), compare.py and report.py. A solver's options follow them by their own
# names; no registered solver declares any yet (tests check the two agree).
KEY_COLUMNS = (
    "solver",
    "steps",
    "grid",
    "grid_times",
    "rtol",
    "atol",
    "stepping",
    "t_start",
    "t_end",
)


class InvalidSetting(UserError, ValueError):
    """A setting that its solver cannot take (one line for the CLI, a ValueError for code)."""


@dataclass(frozen=True)
class Setting:
    """Solver, steps and time grid (fixed-step), or tolerances and stepping (adaptive).

    Fixed-step solvers take ``steps`` >= 1 and a named ``grid`` (uniform by default);
    adaptive ones take ``rtol`` > 0, ``atol`` (rtol by default) and ``stepping`` (batched:
    the batch is one state with one error norm; per-sample: each sample alone).
    ``options`` holds what new solver families need beyond these, as sorted (name, value)
    pairs, so that the setting stays hashable.
    """

    solver: str
    steps: int | None = None
    grid: str | None = None
    rtol: float | None = None
    atol: float | None = None
    stepping: str = "batched"
    options: tuple[tuple[str, object], ...] = ()
    grid_times: tuple[float, ...] | None = None  # the "times" grid's own times
    t_start: float = 0.0  # the solve's interval: from t_start (noise side) to t_end
    t_end: float = 1.0

    def __post_init__(self) -> None:
        spec = get_solver(self.solver)
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        self._check_interval(put)
        if self.stepping not in STEPPING_MODES:
            raise InvalidSetting(
                f"stepping must be one of {', '.join(STEPPING_MODES)}, got {self.stepping!r}"
            )
        if spec.adaptive:
            if self.steps is not None:
                raise InvalidSetting(f"{self.solver} is adaptive: it takes tolerances, not steps")
            if self.grid not in (None, DEFAULT_GRID):
                raise InvalidSetting(
                    f"time grids apply to fixed-step solvers, not to {self.solver}"
                )
            if self.grid_times is not None:
                raise InvalidSetting(
                    f"--grid-times apply to fixed-step solvers, not to {self.solver}"
                )
            if self.rtol is None:
                raise InvalidSetting(f"solver {self.solver} needs rtol and atol")
            rtol = _tolerance(self.rtol, "rtol")
            put("rtol", rtol)
            put("atol", rtol if self.atol is None else _tolerance(self.atol, "atol"))
            put("grid", None)
        else:
            if self.grid_times is not None:
                self._take_times(put)
            if self.steps is None:
                raise InvalidSetting(f"solver {self.solver} needs steps")
            if self.rtol is not None or self.atol is not None:
                raise InvalidSetting(
                    f"{self.solver} is a fixed-step solver: it takes steps, not tolerances"
                )
            if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
                raise InvalidSetting(f"steps must be an integer >= 1, got {self.steps!r}")
            put("steps", int(self.steps))
            from rfbench.solvers.fixed import CUSTOM_GRID, canonical_grid

            grid = DEFAULT_GRID if self.grid is None else self.grid
            try:
                grid = canonical_grid(grid)
            except UserError as e:
                raise InvalidSetting(str(e)) from None
            if grid == CUSTOM_GRID and self.grid_times is None:
                raise InvalidSetting(f"the {CUSTOM_GRID} grid needs its times (--grid-times)")
            put("grid", grid)
            if self.grid_times is None:
                self._check_schedule()
            put("stepping", "batched")  # one step size for all: nothing to couple
        options = dict(self.options)
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            takes = ", ".join(spec.options) or "none"
            raise InvalidSetting(
                f"{self.solver} takes no option {', '.join(unknown)} (its options: {takes})"
            )
        put("options", tuple(sorted(options.items())))

    def _check_interval(self, put) -> None:
        for name in ("t_start", "t_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise InvalidSetting(
                    f"{name.replace('_', '-')} must be a number in [0, 1], got {value!r}"
                )
            put(name, float(value))
        if not self.t_start < self.t_end:
            raise InvalidSetting(
                f"t-start ({self.t_start:g}) must be below t-end ({self.t_end:g}): the solve "
                "runs from noise (t = 0) to data (t = 1)"
            )

    def _check_schedule(self) -> None:
        """A schedule's times must be finite and increase strictly at this step count (an
        extreme parameter can make steps of length 0, which would be fewer steps than the
        row says)."""
        from rfbench.solvers.fixed import time_grid

        try:
            ts = time_grid(self.steps, self.t_start, self.t_end, self.grid)
        except (OverflowError, ZeroDivisionError):
            ts = torch.tensor([math.nan])
        if not bool(torch.isfinite(ts).all()) or not bool((ts.diff() > 0).all()):
            raise InvalidSetting(
                f"time grid {self.grid} at {self.steps} steps has steps of length 0 or "
                "non-finite times; choose a milder parameter"
            )

    def _take_times(self, put) -> None:
        """The custom grid: its times set steps and must span [t_start, t_end]."""
        from rfbench.solvers.fixed import CUSTOM_GRID

        times = tuple(float(t) for t in self.grid_times)
        if len(times) < 2 or any(not math.isfinite(t) for t in times):
            raise InvalidSetting("--grid-times needs at least two finite times")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise InvalidSetting(f"--grid-times must increase strictly, got {_times_text(times)}")
        if (times[0], times[-1]) != (self.t_start, self.t_end):
            raise InvalidSetting(
                f"--grid-times run from {times[0]:g} to {times[-1]:g}; they must run from "
                f"t-start {self.t_start:g} to t-end {self.t_end:g}"
            )
        if self.steps is not None and self.steps != len(times) - 1:
            raise InvalidSetting(
                f"{len(times)} grid times make {len(times) - 1} steps, not {self.steps}"
            )
        if self.grid not in (None, CUSTOM_GRID):
            raise InvalidSetting(f"--grid-times make the {CUSTOM_GRID} grid, not {self.grid}")
        put("grid_times", times)
        put("steps", len(times) - 1)
        put("grid", CUSTOM_GRID)

    @property
    def spec(self) -> SolverSpec:
        return get_solver(self.solver)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def adaptive(self) -> bool:
        return self.spec.adaptive

    @property
    def per_sample(self) -> bool:
        """Whether each sample is integrated on its own (adaptive, per-sample stepping)."""
        return self.adaptive and self.stepping == "per-sample"

    def key(self) -> tuple:
        """The setting's identity: equal keys, the same solve (cells, resume, compare)."""
        return (
            self.solver,
            self.steps,
            self.grid,
            None if self.grid_times is None else _times_text(self.grid_times),
            self.rtol,
            self.atol,
            self.stepping,
            self.t_start,
            self.t_end,
            *self.options,
        )

    def columns(self) -> dict:
        """The results columns that hold the setting (``options`` by their own names)."""
        return dict(
            solver=self.solver,
            family=self.family,
            steps=self.steps,
            grid=self.grid,
            grid_times=None if self.grid_times is None else _times_text(self.grid_times),
            rtol=self.rtol,
            atol=self.atol,
            stepping=self.stepping,
            t_start=self.t_start,
            t_end=self.t_end,
            **dict(self.options),
        )

    def label(self, show: tuple[str, ...] = ()) -> str:
        """The setting for people, without the solver's name: "4 steps", "rtol 1e-05", and
        with ``show`` (any of grid, atol, stepping; ``LABEL_PARTS`` for all) those parts
        too: "1 step cosine", "rtol 0.001 atol 1e-06 per-sample". A table shows the parts
        that vary between its columns; a log line shows them all."""
        if self.steps is not None:
            text = f"{self.steps} step" + ("s" if self.steps != 1 else "")
            if self.grid_times is not None:  # given times: told apart by their hash
                text += f" {self.grid}-{_times_hash(self.grid_times)}"
            elif "grid" in show:
                text += f" {self.grid}"
        else:
            text = f"rtol {self.rtol:g}"
            text += f" atol {self.atol:g}" if "atol" in show else ""
            text += f" {self.stepping}" if "stepping" in show else ""
        if (self.t_start, self.t_end) != (0.0, 1.0):
            text += f" t={self.t_start:g}..{self.t_end:g}"
        return text + "".join(f" {k}={v}" for k, v in self.options)

    def slug(self) -> str:
        """The key as a file-name part: "steps4-uniform", "rtol1e-05-atol1e-05-batched"
        (the names of the saved samples of every run written so far)."""
        if self.steps is not None:
            text = f"steps{self.steps}-{self.grid}"
            if self.grid_times is not None:
                text += "-" + _times_hash(self.grid_times)
        else:
            text = f"rtol{self.rtol:g}-atol{self.atol:g}-{self.stepping}"
        if (self.t_start, self.t_end) != (0.0, 1.0):
            text += f"-t{self.t_start:g}-{self.t_end:g}"
        return text + "".join(f"-{k}{v}" for k, v in self.options)

    def lineage_text(self) -> str:
        """The key as checkpoints' lineage records it: "steps=16", "steps=8 grid=cosine",
        "rtol=0.001 atol=0.001"."""
        if self.steps is not None:
            text = f"steps={self.steps}" + (
                "" if self.grid == DEFAULT_GRID else f" grid={self.grid}"
            )
            if self.grid_times is not None:
                text += f" grid_times={_times_text(self.grid_times)}"
        else:
            text = f"rtol={self.rtol:g} atol={self.atol:g}"
        if (self.t_start, self.t_end) != (0.0, 1.0):
            text += f" t_start={self.t_start:g} t_end={self.t_end:g}"
        return text + "".join(f" {k}={v}" for k, v in self.options)

    @classmethod
    def from_options(cls, solver: str, steps: int | None, tol: float | None) -> Setting:
        """The setting a command's --steps and --tols give one solver: steps for a
        fixed-step solver, rtol = atol = tol for an adaptive one (the other is ignored)."""
        if get_solver(solver).adaptive:
            if tol is None:
                raise InvalidSetting(f"{solver} is adaptive: give its tolerance (--tols)")
            return cls(solver, rtol=tol)
        if steps is None:
            raise InvalidSetting(f"{solver} is a fixed-step solver: give --steps")
        return cls(solver, steps=steps)

    @classmethod
    def from_row(cls, row: Mapping) -> Setting:
        """The setting of a results row (read back from CSV: empty cells, floats for ints)."""

        def get(name):
            v = row.get(name)
            if v is None or v is _NA or (isinstance(v, float) and math.isnan(v)):
                return None
            return v.item() if hasattr(v, "item") else v

        steps = get("steps")
        solver = str(get("solver"))
        options = {k: get(k) for k in get_solver(solver).options if get(k) is not None}
        times = get("grid_times")
        t_start, t_end = get("t_start"), get("t_end")
        return cls(
            solver,
            steps=None if steps is None else int(steps),
            grid=get("grid"),
            rtol=get("rtol"),
            atol=get("atol"),
            stepping=get("stepping") or "batched",
            options=tuple(options.items()),
            grid_times=None if times is None else parse_times(str(times)),
            t_start=0.0 if t_start is None else float(t_start),
            t_end=1.0 if t_end is None else float(t_end),
        )


def _times_text(times: tuple[float, ...]) -> str:
    """The custom grid's times as a results column holds them: "0;0.05;0.5;1"."""
    return ";".join(repr(t) if t != int(t) else f"{t:g}" for t in times)


def _times_hash(times: tuple[float, ...]) -> str:
    import hashlib

    return hashlib.sha256(_times_text(times).encode()).hexdigest()[:8]


def parse_times(text: str) -> tuple[float, ...]:
    """Times from "0,0.1,1", "0;0.1;1" or whitespace-separated text (a --grid-times file)."""
    parts = [p for p in text.replace(";", ",").replace(",", " ").split()]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidSetting(f"grid times {text!r} are not numbers") from None


def _tolerance(value, name: str) -> float:
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise InvalidSetting(f"{name} must be a finite number > 0, got {value!r}")
    return v


try:  # pandas' missing value, where pandas is present
    from pandas import NA as _NA
except ImportError:  # pragma: no cover
    _NA = object()
