"""One registry of ODE solvers behind one signature.

>>> import torch
>>> from rfbench.solvers import solve
>>> res = solve("euler", lambda x, t: -x, torch.ones(3), steps=4)
>>> res.x
tensor([0.3164, 0.3164, 0.3164])
"""

from __future__ import annotations

import torch

from rfbench.solvers import fixed, scipy_ivp, torchdiffeq_adaptive  # noqa: F401 - registers
from rfbench.solvers.base import (
    SOLVERS,
    SolveResult,
    SolverFailed,
    SolverSpec,
    Velocity,
    get_solver,
    register_solver,
)
from rfbench.solvers.fixed import GRIDS, time_grid

__all__ = [
    "GRIDS",
    "time_grid",
    "SOLVERS",
    "SolveResult",
    "SolverFailed",
    "SolverSpec",
    "Velocity",
    "get_solver",
    "register_solver",
    "solve",
]


def solve(
    name: str,
    velocity: Velocity,
    x0: torch.Tensor,
    *,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    grid: str = "uniform",
) -> SolveResult:
    """Integrate dx/dt = velocity(x, t) from t0 to t1 with a registered solver.

    Fixed-step solvers need ``steps`` (and take a named time ``grid``); adaptive ones need
    ``rtol`` and ``atol``.
    """
    spec = get_solver(name)
    if spec.adaptive:
        if grid != "uniform":
            raise ValueError(f"time grids apply to fixed-step solvers, not to {name}")
        if rtol is None or atol is None:
            raise ValueError(f"solver {name} needs rtol and atol")
        return spec.fn(velocity, x0, rtol=rtol, atol=atol, t0=t0, t1=t1)
    if steps is None:
        raise ValueError(f"solver {name} needs steps")
    return spec.fn(velocity, x0, steps=steps, t0=t0, t1=t1, grid=grid)
