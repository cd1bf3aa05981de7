"""Velocity plugins for ``load_plugin``: each ``make*`` returns a model f(x, t) or a bad value."""

from __future__ import annotations

import torch
from torch import nn


def make(scale: float = 1.0):
    """A plain function (not a module): f(x, t) = scale * t * x, solved by x0 exp(scale t^2 / 2)."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scale * t.reshape(-1, *([1] * (x.dim() - 1))) * x

    return velocity


def make_linear(dim: int = 2, seed: int = 0) -> nn.Module:
    """A module with weights: f(x, t) = W x + t b, with W and b drawn from ``seed``."""

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.w = nn.Parameter(torch.randn(dim, dim, generator=g) / dim)
            self.b = nn.Parameter(torch.randn(dim, generator=g))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x @ self.w.T + t[:, None] * self.b

    return Linear()


def make_wrong_shape():
    """Returns one number per sample instead of a velocity of the sample's shape."""
    return lambda x, t: x.flatten(1).sum(1, keepdim=True)


def make_not_callable():
    return 42
