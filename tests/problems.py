"""ODEs with exact solutions, on [0, 1], for testing every solver (after torchdiffeq's tests)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Problem:
    name: str
    velocity: Callable[[torch.Tensor, float], torch.Tensor]
    exact: Callable[[torch.Tensor, float], torch.Tensor]  # (x0, t) -> x(t)


def _t(t) -> float:
    return float(t)


PROBLEMS = [
    # dx/dt = -x: linear, autonomous.
    Problem("linear", lambda x, t: -x, lambda x0, t: x0 * math.exp(-t)),
    # dx/dt = 3 t^2: depends on t only.
    Problem("time", lambda x, t: torch.full_like(x, 3 * _t(t) ** 2), lambda x0, t: x0 + t**3),
    # dx/dt = t x: depends on both x and t.
    Problem("x_and_t", lambda x, t: _t(t) * x, lambda x0, t: x0 * math.exp(t**2 / 2)),
    # dx/dt = x1 - x0 style constant field: rectified flow's straight line.
    Problem("straight", lambda x, t: torch.ones_like(x), lambda x0, t: x0 + t),
]
