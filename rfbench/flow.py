"""The rectified-flow path and loss (Liu, Gong & Liu, "Flow Straight and Fast", ICLR 2023).

Time convention, used everywhere in rfbench:

    t = 0 is noise  x0 ~ N(0, I);   t = 1 is data  x1.
    x_t = t * x1 + (1 - t) * x0,    target velocity  x1 - x0.

Sampling integrates dx/dt = v(x, t) from t = 0 to t = 1; inversion (encoding) integrates
from 1 back to 0. External models with another convention are adapted at their boundary.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

T_NOISE = 0.0
T_DATA = 1.0


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x1 + (1 - t) x0, with t of shape [B]."""
    tb = _bcast(t, x0)
    return tb * x1 + (1 - tb) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The straight-line velocity x1 - x0."""
    return x1 - x0


def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """t ~ U(0, 1)."""
    return torch.rand(n, generator=generator, device=device)


def rf_loss(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mse(v(x_t, t), x1 - x0): the rectified-flow objective (Liu et al. 2023, eq. 1)."""
    return F.mse_loss(model(interpolate(x0, x1, t), t), target_velocity(x0, x1))
