"""The one solver signature and its registry.

Every solver is a plain function

    fn(velocity, x0, setting, *, t0, t1) -> SolveResult

where ``velocity(x, t)`` takes a state batch and a scalar time (float or 0-dim tensor; a
solver's ``per_sample_fn`` passes each sample's own time as a [B] vector) and
``setting`` is a checked ``rfbench.solvers.setting.Setting`` (steps and grid, or
tolerances, and the options of the solver's family). The registry's keys are the CLI's
choices; adding a solver is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rfbench.errors import UserError

Velocity = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


@dataclass
class SolveResult:
    """The final state of one solve, with what the solver itself reports."""

    x: torch.Tensor
    solver_nfe: int | None = None  # the solver's own count (scipy's nfev); None where it keeps none
    message: str = ""
    weights: list[float] | None = None  # quadrature weight of each network call, in call order
    # multistep solvers, whose update is no quadrature of their calls: per sample, the
    # discrete path's integral of the mean squared velocity and its length (Euclidean),
    # from the steps' displacements (sample.path_statistics reads them)
    path: tuple[torch.Tensor, torch.Tensor] | None = None
    # vectorised per-sample stepping: per sample, the network calls it took part in
    sample_nfe: torch.Tensor | None = None


class SolverFailed(RuntimeError):
    """The solver did not reach t1 (step size underflow, too many steps, ...)."""


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver."""

    name: str
    family: str  # one of FAMILIES
    fn: Callable[..., SolveResult]
    adaptive: bool  # True: takes rtol/atol; False: takes steps
    description: str
    nfe_per_step: int | None = None  # fixed-step methods: network calls per step
    options: tuple[str, ...] = ()  # names of the Setting options it takes (results columns)
    order: int | None = None  # the method's order (None: variable, as BDF and LSODA)
    multistep: bool = False  # reuses earlier steps' calls
    # adaptive solvers that step every sample on its own inside one batched solve (each
    # its own t, step and error norm): what per-sample stepping runs instead of solving
    # the samples one at a time; None: the samples are solved one at a time
    per_sample_fn: Callable[..., SolveResult] | None = None


SOLVERS: dict[str, SolverSpec] = {}
FAMILIES = ("fixed", "multistep", "scipy", "torch", "torchdiffeq")


def register_solver(spec: SolverSpec) -> None:
    if spec.name in SOLVERS:
        raise ValueError(f"solver {spec.name!r} is already registered")
    if spec.family not in FAMILIES:
        raise ValueError(f"unknown solver family {spec.family!r}")
    SOLVERS[spec.name] = spec


def get_solver(name: str) -> SolverSpec:
    if name not in SOLVERS:
        raise UserError(f"unknown solver {name!r}; choose from: {', '.join(SOLVERS)}")
    return SOLVERS[name]
