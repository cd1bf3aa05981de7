"""scipy.integrate.solve_ivp over the flattened batch, in float64 (the blog's sampler).

The whole batch is one ODE state, so the adaptive step control uses one error norm for
the batch. Every call converts numpy float64 -> torch (the model's dtype and device) ->
numpy float64; that round trip is the overhead the blog suspects.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from rfbench.solvers.base import SolveResult, SolverFailed, SolverSpec, Velocity, register_solver

SCIPY_METHODS = {
    "rk45": ("RK45", "Dormand-Prince 5(4), explicit"),
    "rk23": ("RK23", "Bogacki-Shampine 3(2), explicit"),
    "dop853": ("DOP853", "Dormand-Prince 8(5,3), explicit"),
    "radau": ("Radau", "Radau IIA order 5, implicit (finite-difference Jacobian)"),
    "bdf": ("BDF", "backward differentiation formulas, implicit (finite-difference Jacobian)"),
    "lsoda": ("LSODA", "Adams/BDF switching (ODEPACK)"),
}


def jacobian_calls(method: str, njev: int, n: int) -> int:
    """Calls that scipy's nfev leaves out: its finite-difference Jacobians of an n-element
    state take n calls each in Radau, n + 1 in BDF (which re-evaluates the base point);
    LSODA's count, from ODEPACK, already includes them (scipy 1.17, `num_jac`)."""
    return {"Radau": n, "BDF": n + 1}.get(method, 0) * njev


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
        shape, dtype, device = x0.shape, x0.dtype, x0.device

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
            return velocity(x, float(t)).detach().to("cpu", torch.float64).numpy().ravel()

        y0 = x0.detach().to("cpu", torch.float64).numpy().ravel()
        sol = solve_ivp(fun, (t0, t1), y0, method=method, rtol=rtol, atol=atol, t_eval=[t1])
        if not sol.success:
            raise SolverFailed(f"scipy {method}: {sol.message}")
        x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)
        solver_nfe = int(sol.nfev) + jacobian_calls(method, int(sol.njev), y0.size)
        return SolveResult(x, solver_nfe=solver_nfe, message=sol.message)

    solve.__name__ = f"solve_scipy_{method.lower()}"
    return solve


for _name, (_method, _desc) in SCIPY_METHODS.items():
    register_solver(
        SolverSpec(
            name=_name,
            family="scipy",
            fn=_make(_method),
            adaptive=True,
            description=f"scipy solve_ivp {_method}: {_desc}",
        )
    )
