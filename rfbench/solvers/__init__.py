"""One registry of ODE solvers behind one signature.

>>> import torch
>>> from rfbench.solvers import solve
>>> res = solve("euler", lambda x, t: -x, torch.ones(3), steps=4)
>>> res.x
tensor([0.3164, 0.3164, 0.3164])
"""

from __future__ import annotations

import torch

from rfbench.solvers import (  # noqa: F401 - registers
    fixed,
    multistep,
    scipy_ivp,
    torch_rk45,
    torchdiffeq_adaptive,
)
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
from rfbench.solvers.setting import (
    KEY_COLUMNS,
    LABEL_PARTS,
    STEPPING_MODES,
    InvalidSetting,
    Setting,
)

__all__ = [
    "GRIDS",
    "time_grid",
    "KEY_COLUMNS",
    "LABEL_PARTS",
    "STEPPING_MODES",
    "InvalidSetting",
    "Setting",
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
    setting: Setting | str,
    velocity: Velocity,
    x0: torch.Tensor,
    *,
    t0: float | None = None,
    t1: float | None = None,
    **fields,
) -> SolveResult:
    """Integrate dx/dt = velocity(x, t) from t0 to t1 with a registered solver.

    Args:
        setting: a ``Setting``, or a solver's name with the setting's ``fields``: fixed-step
            solvers need ``steps`` (and take a named time ``grid``); adaptive ones need
            ``rtol`` (``atol`` defaults to it).
        velocity: ``v(x, t)``, t a float or a 0-dim tensor.
        x0: the state at t0, any shape (a batch is one state).
        t0, t1: the interval; t1 < t0 integrates backwards. By default the setting's,
            ``t_start`` to ``t_end`` (0 to 1 unless it says otherwise).

    Returns:
        ``SolveResult``: the state at t1, the solver's own call count where it keeps one,
        and for fixed-step solvers each call's quadrature weight.
    """
    if isinstance(setting, str):
        setting = Setting(setting, **fields)
    elif fields:
        raise TypeError(f"give {', '.join(fields)} in the Setting, not beside it")
    t0 = setting.t_start if t0 is None else t0
    t1 = setting.t_end if t1 is None else t1
    return setting.spec.fn(velocity, x0, setting, t0=t0, t1=t1)
