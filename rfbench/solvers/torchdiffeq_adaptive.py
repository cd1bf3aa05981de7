"""torchdiffeq's adaptive solvers, torch-native on the model's device.

torchdiffeq steps the whole batch together, with one RMS error norm over all of it.
"""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from rfbench.solvers.base import SolveResult, SolverFailed, SolverSpec, Velocity, register_solver

TORCHDIFFEQ_METHODS = {
    "dopri5": "Dormand-Prince 5(4)",
    "dopri8": "Dormand-Prince 8(7)",
    "bosh3": "Bogacki-Shampine 3(2)",
    "fehlberg2": "Runge-Kutta-Fehlberg 2(1)",
    "adaptive_heun": "Heun-Euler 2(1)",
}


def _make(method: str):
    def solve(
        velocity: Velocity,
        x0: torch.Tensor,
        *,
        rtol: float,
        atol: float,
        t0: float = 0.0,
        t1: float = 1.0,
        **_ignored,
    ) -> SolveResult:
        ts = torch.tensor([t0, t1], dtype=x0.dtype, device=x0.device)
        try:
            xs = odeint(lambda t, x: velocity(x, t), x0, ts, method=method, rtol=rtol, atol=atol)
        except AssertionError as e:  # torchdiffeq signals underflow with assert
            raise SolverFailed(f"torchdiffeq {method}: {e}") from None
        return SolveResult(xs[-1])

    solve.__name__ = f"solve_torchdiffeq_{method}"
    return solve


for _name, _desc in TORCHDIFFEQ_METHODS.items():
    register_solver(
        SolverSpec(
            name=_name,
            family="torchdiffeq",
            fn=_make(_name),
            adaptive=True,
            description=f"torchdiffeq {_name}: {_desc}",
        )
    )
