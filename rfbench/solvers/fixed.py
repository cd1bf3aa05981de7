"""Fixed-step explicit Runge-Kutta methods in pure torch, on a given time grid."""

from __future__ import annotations

import torch

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


def uniform_grid(steps: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """steps + 1 equally spaced times from t0 to t1, in float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64)


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
        velocity: Velocity,
        x0: torch.Tensor,
        *,
        steps: int,
        t0: float = 0.0,
        t1: float = 1.0,
        grid: torch.Tensor | None = None,
        **_ignored,
    ) -> SolveResult:
        ts = uniform_grid(steps, t0, t1) if grid is None else grid
        x = x0
        for i in range(len(ts) - 1):
            t, h = float(ts[i]), float(ts[i + 1] - ts[i])
            x = rk_step(velocity, x, t, h, tableau)
        return SolveResult(x)

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
