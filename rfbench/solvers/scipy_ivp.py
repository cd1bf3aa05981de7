"""scipy's ODE solvers over the flattened batch, in float64 (the blog's sampler).

The whole batch is one ODE state, so the adaptive step control uses one error norm for
the batch. Every call converts numpy float64 -> torch (the model's dtype and device) ->
numpy float64; that round trip is the overhead the blog suspects.

The solver object is stepped to t1 exactly as ``solve_ivp`` steps it, but without asking
for any output in between: ``solve_ivp(..., t_eval=[t1])`` builds a dense interpolant at
the last step, which costs DOP853 three more network calls per solve, and the default
``t_eval=None`` keeps every step's state of the whole batch in memory. The answer is the
last step's state, the same numbers as ``solve_ivp(...).y[:, -1]``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, Radau

from rfbench.solvers.base import SolveResult, SolverFailed, SolverSpec, Velocity, register_solver

SCIPY_METHODS = {
    "rk45": (RK45, "Dormand-Prince 5(4), explicit"),
    "rk23": (RK23, "Bogacki-Shampine 3(2), explicit"),
    "dop853": (DOP853, "Dormand-Prince 8(5,3), explicit"),
    "radau": (Radau, "Radau IIA order 5, implicit (finite-difference Jacobian)"),
    "bdf": (BDF, "backward differentiation formulas, implicit (finite-difference Jacobian)"),
    "lsoda": (LSODA, "Adams/BDF switching (ODEPACK)"),
}
# The order of each method's solution (scipy's error_estimator_order + 1); BDF and LSODA
# vary theirs (1 to 5, 1 to 12).
SCIPY_ORDERS = {"rk45": 5, "rk23": 3, "dop853": 8, "radau": 5, "bdf": None, "lsoda": None}
# scipy's nfev leaves out the calls of Radau's and BDF's finite-difference Jacobians, and
# their number is not n per Jacobian: scipy's num_jac evaluates some columns again where
# the difference was too small. scipy keeps no count of those, so these methods report
# none. (LSODA's nfev, ODEPACK's own, includes its Jacobian calls.)
INCOMPLETE_NFEV = frozenset({Radau, BDF})


def _make(method: type):
    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        shape, dtype, device = x0.shape, x0.dtype, x0.device

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
            return velocity(x, float(t)).detach().to("cpu", torch.float64).numpy().ravel()

        y0 = x0.detach().to("cpu", torch.float64).numpy().ravel()
        solver = method(fun, t0, y0, t1, rtol=setting.rtol, atol=setting.atol)
        while solver.status == "running":
            message = solver.step()
        if solver.status == "failed":
            raise SolverFailed(f"scipy {method.__name__}: {message}")
        x = torch.from_numpy(solver.y.copy()).reshape(shape).to(device=device, dtype=dtype)
        solver_nfe = None if method in INCOMPLETE_NFEV else int(solver.nfev)
        return SolveResult(
            x,
            solver_nfe=solver_nfe,
            message=f"nfev={solver.nfev} njev={solver.njev} nlu={solver.nlu}",
        )

    solve.__name__ = f"solve_scipy_{method.__name__.lower()}"
    return solve


for _name, (_method, _desc) in SCIPY_METHODS.items():
    register_solver(
        SolverSpec(
            name=_name,
            family="scipy",
            fn=_make(_method),
            adaptive=True,
            description=f"scipy {_method.__name__}: {_desc}",
            order=SCIPY_ORDERS[_name],
        )
    )
