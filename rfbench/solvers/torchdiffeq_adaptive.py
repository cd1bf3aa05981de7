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
TORCHDIFFEQ_ORDERS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


class _StepCounter:
    """torchdiffeq's func(t, y), with the accept/reject callbacks it calls on every step."""

    def __init__(self, velocity: Velocity):
        self.velocity, self.accepted, self.rejected = velocity, 0, 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t)

    def callback_accept_step(self, t0, y0, dt) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.rejected += 1


def _stages(method: str) -> int:
    """Network calls per step attempt: the tableau's stages after the first (FSAL reuses it)."""
    from torchdiffeq._impl.odeint import SOLVERS as TD_SOLVERS

    return len(TD_SOLVERS[method].tableau.alpha)


def _make(method: str):
    stages = _stages(method)

    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        ts = torch.tensor([t0, t1], dtype=x0.dtype, device=x0.device)
        func = _StepCounter(velocity)
        try:
            xs = odeint(func, x0, ts, method=method, rtol=setting.rtol, atol=setting.atol)
        except AssertionError as e:  # torchdiffeq signals underflow with assert
            raise SolverFailed(f"torchdiffeq {method}: {e}") from None
        # torchdiffeq's own accounting: f(t0) and one initial-step probe, then `stages`
        # calls per attempted step, accepted or rejected.
        attempts = func.accepted + func.rejected
        return SolveResult(
            xs[-1],
            solver_nfe=2 + stages * attempts,
            message=f"{func.accepted} accepted, {func.rejected} rejected steps",
        )

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
            order=TORCHDIFFEQ_ORDERS[_name],
        )
    )
