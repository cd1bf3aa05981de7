"""Fixed-step explicit Runge-Kutta methods in pure torch, on a given time grid."""

from __future__ import annotations

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


def time_grid(steps: int, t0: float = 0.0, t1: float = 1.0, grid: str = "uniform") -> torch.Tensor:
    """steps + 1 times from t0 to t1 (float64), spaced by a named grid in absolute time.

    A grid that is dense near the noise end stays dense there when integrating backwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid not in GRIDS:
        raise UserError(f"unknown time grid {grid!r}; choose from: {', '.join(GRIDS)}")
    lo, hi = min(t0, t1), max(t0, t1)
    ts = lo + (hi - lo) * GRIDS[grid](torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = lo, hi  # exact end points
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
        ts = time_grid(setting.steps, t0, t1, setting.grid)
        x, weights = x0, []
        for i in range(len(ts) - 1):
            t, h = float(ts[i]), float(ts[i + 1] - ts[i])
            x = rk_step(velocity, x, t, h, tableau)
            weights += [h * bj for bj in tableau[2]]  # the step's quadrature of each call
        return SolveResult(x, weights=weights)

    solve.__name__ = f"solve_{name}"
    solve.__doc__ = f"Fixed-step {name}: {len(tableau[2])} network call(s) per step."
    return solve


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
        )
    )
