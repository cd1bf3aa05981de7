"""Fixed-step explicit Runge-Kutta methods in pure torch, on a given time grid."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rfbench.errors import UserError
from rfbench.solvers.base import SolveResult, SolverSpec, Velocity, register_solver

# Butcher tableaux (c, A, b) of the classical methods (Hairer, Norsett & Wanner, Vol. I, II.1).
TABLEAUX: dict[str, tuple[list[float], list[list[float]], list[float]]] = {
    "euler": ([0.0], [[]], [1.0]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "heun": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "rk4": (
        [0.0, 0.5, 0.5, 1.0],
        [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    ),
}


# Time grids on [0, 1] in rfbench's convention (0 = noise, 1 = data): u(i / steps).
GRIDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uniform": lambda u: u,
    "dense-noise": lambda u: u**2,  # small steps near t = 0, where x is still noise
    "dense-data": lambda u: 1 - (1 - u) ** 2,  # small steps near t = 1, the data end
    "cosine": lambda u: (1 - torch.cos(torch.pi * u)) / 2,  # small steps at both ends
}


# Schedules with a parameter, named "<name>-<parameter><value>" ("edm-rho7", "sd3-shift3");
# the bare name takes the default. Each maps u = i / steps in [0, 1] to flow time.
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0  # Karras et al. 2022, Table 1 (VP/VE: EDM's own)


def _edm(u: torch.Tensor, rho: float) -> torch.Tensor:
    """EDM's rho-schedule (Karras et al. 2022, eq. 5) in flow time: the steps - 1 sigmas
    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    then sigma = 0, mapped by t = 1 / (1 + sigma) (sigma_EDM = (1 - t) / t), with the
    first point moved from sigma_max to t = 0 exactly: a flow starts from pure noise."""
    n = len(u) - 1  # steps
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else i
    a, b = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    sigma = (a + frac * (b - a)) ** rho
    t = torch.cat([1 / (1 + sigma), torch.ones(1, dtype=torch.float64)])
    t[0] = 0.0
    return t


def _sd3(u: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shifted schedule (Esser et al. 2024, eq. 23): noise level s = 1 - u becomes
    shift s / (1 + (shift - 1) s); t = 1 - that. shift > 1 puts more steps near noise."""
    s = 1 - u
    return 1 - shift * s / (1 + (shift - 1) * s)


PARAM_GRIDS: dict[str, tuple[str, float, Callable]] = {
    "edm": ("rho", 7.0, _edm),  # EDM's rho = 7
    "sd3": ("shift", 3.0, _sd3),  # SD3's shift = 3.0 at 1024 px
}
CUSTOM_GRID = "times"  # the times given by --grid-times
GRID_NAMES = (*GRIDS, *PARAM_GRIDS, CUSTOM_GRID)


def canonical_grid(name: str) -> str:
    """The grid's name as rows record it: parametrised grids with their parameter
    ("edm" -> "edm-rho7"); raises a UserError naming the choices for anything else."""
    if name in GRIDS or name == CUSTOM_GRID:
        return name
    base, _, rest = name.partition("-")
    if base in PARAM_GRIDS:
        param, default, _ = PARAM_GRIDS[base]
        value = default
        if rest:
            if not rest.startswith(param):
                example = f"{base}-{param}{default:g}"
                raise UserError(f"time grid {name!r}: write {base}-{param}<value>, e.g. {example}")
            try:
                value = float(rest[len(param) :])
            except ValueError:
                raise UserError(
                    f"time grid {name!r}: {rest[len(param) :]!r} is not a number"
                ) from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"time grid {name!r}: {param} must be a finite number > 0")
        return f"{base}-{param}{value:.15g}"  # the value the solve uses, unrounded
    raise UserError(
        f"unknown time grid {name!r}; choose from: {', '.join(GRIDS)}, "
        + ", ".join(f"{b}[-{p}<value>] ({p} {d:g})" for b, (p, d, _) in PARAM_GRIDS.items())
    )


def time_grid(steps: int, t0: float = 0.0, t1: float = 1.0, grid: str = "uniform") -> torch.Tensor:
    """steps + 1 times from t0 to t1 (float64), spaced by a named grid in absolute time.

    A grid that is dense near the noise end stays dense there when integrating backwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = canonical_grid(grid)
    if grid == CUSTOM_GRID:
        raise ValueError("the custom grid's times come with its Setting: use setting_grid")
    lo, hi = min(t0, t1), max(t0, t1)
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if grid in GRIDS:
        shape = GRIDS[grid](u)
    else:
        base, _, rest = grid.partition("-")
        param, _, fn = PARAM_GRIDS[base]
        shape = fn(u, float(rest[len(param) :]))
    ts = lo + (hi - lo) * shape
    ts[0], ts[-1] = lo, hi  # exact end points
    return ts if t0 <= t1 else ts.flip(0)


def setting_grid(setting, t0: float, t1: float) -> torch.Tensor:
    """The times a fixed-step or multistep solver steps on: its setting's grid from t0 to
    t1 (the custom grid's own times, reversed for a backward solve)."""
    if setting.grid_times is None:
        return time_grid(setting.steps, t0, t1, setting.grid)
    ts = torch.tensor(setting.grid_times, dtype=torch.float64)
    if {t0, t1} != {float(ts[0]), float(ts[-1])}:
        raise ValueError(
            f"the grid's times span {float(ts[0]):g}..{float(ts[-1]):g}, not {t0:g}..{t1:g}"
        )
    return ts if t0 <= t1 else ts.flip(0)


def rk_step(velocity: Velocity, x: torch.Tensor, t: float, h: float, tableau) -> torch.Tensor:
    """One explicit Runge-Kutta step of size h: len(b) network calls."""
    c, a, b = tableau
    ks: list[torch.Tensor] = []
    for ci, ai in zip(c, a):
        xi = x
        for aij, kj in zip(ai, ks):
            if aij:
                xi = xi + (h * aij) * kj
        ks.append(velocity(xi, t + ci * h))
    return x + h * sum(bi * ki for bi, ki in zip(b, ks) if bi)


def _make(name: str):
    tableau = TABLEAUX[name]

    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        ts = setting_grid(setting, t0, t1)
        x, weights = x0, []
        for i in range(len(ts) - 1):
            t, h = float(ts[i]), float(ts[i + 1] - ts[i])
            x = rk_step(velocity, x, t, h, tableau)
            weights += [h * bj for bj in tableau[2]]  # the step's quadrature of each call
        return SolveResult(x, weights=weights)

    solve.__name__ = f"solve_{name}"
    solve.__doc__ = f"Fixed-step {name}: {len(tableau[2])} network call(s) per step."
    return solve


_ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
_DESCRIPTIONS = {
    "euler": "explicit Euler, order 1",
    "midpoint": "explicit midpoint, order 2",
    "heun": "Heun (explicit trapezoid), order 2",
    "rk4": "classical Runge-Kutta, order 4",
}
for _name, _tab in TABLEAUX.items():
    register_solver(
        SolverSpec(
            name=_name,
            family="fixed",
            fn=_make(_name),
            adaptive=False,
            description=_DESCRIPTIONS[_name],
            nfe_per_step=len(_tab[2]),
            order=_ORDERS[_name],
        )
    )
