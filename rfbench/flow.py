"""The rectified-flow path and loss (Liu, Gong & Liu, "Flow Straight and Fast", ICLR 2023).

Time convention, used everywhere in rfbench:

    t = 0 is noise  x0 ~ N(0, I);   t = 1 is data  x1.
    x_t = t * x1 + (1 - t) * x0,    target velocity  x1 - x0.

Sampling integrates dx/dt = v(x, t) from t = 0 to t = 1; inversion (encoding) integrates
from 1 back to 0. External models with another convention are adapted at their boundary.
"""

from __future__ import annotations

import math

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


TIMESTEPS = ("uniform", "u-shaped")
U_SHAPE_A = 4.0  # Lee, Lin & Lee 2024 ("Improving the Training of Rectified Flows"): a = 4


def sample_t(
    n: int,
    generator: torch.Generator | None = None,
    device=None,
    dist: str = "uniform",
    a: float = U_SHAPE_A,
) -> torch.Tensor:
    """Training times t in [0, 1]: ``uniform``, or ``u-shaped`` (Lee, Lin & Lee 2024), which
    puts more weight near both ends, where reflowed paths are hardest to fit.

    The U shape is the one their code samples, an exponential e^{at} on [0, 1] mirrored to
    1 - t with probability 1/2: density proportional to e^{at} + e^{a(1-t)}, that is to
    cosh(a(t - 1/2)), which is e^{au} + e^{-au} in the centred variable u = t - 1/2.
    Its CDF is (sinh(a(t - 1/2)) + sinh(a/2)) / (2 sinh(a/2)), inverted in closed form.
    """
    u = torch.rand(n, generator=generator, device=device)
    if dist == "uniform":
        return u
    if dist == "u-shaped":
        return 0.5 + torch.asinh((2 * u - 1) * math.sinh(a / 2)) / a
    raise ValueError(f"unknown timestep distribution {dist!r}; choose from {TIMESTEPS}")


def sample_grid_t(
    n: int, steps: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """t uniform on the k-step Euler grid {0, 1/k, ..., (k-1)/k}: the times at which a model
    distilled to k Euler steps is evaluated, and so the only times it is trained at."""
    return torch.randint(steps, (n,), generator=generator, device=device).float() / steps


def rf_loss(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mse(v(x_t, t), x1 - x0): the rectified-flow objective (Liu et al. 2023, eq. 1)."""
    return F.mse_loss(model(interpolate(x0, x1, t), t), target_velocity(x0, x1))


def endpoint(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Where one Euler step from (x_t, t) to t = 1 lands: x_t + (1 - t) v. On the straight
    path with v = x1 - x0 that is x1 itself."""
    return x_t + _bcast(1 - t, x_t) * v
