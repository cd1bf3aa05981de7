"""Controlled disturbances of real images, for checking that a metric ranks damage correctly."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

DISTURBANCES = ("noise", "blur")


def disturb(x: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] with Gaussian noise of std ``level`` (clamped), or a 9x9 Gaussian
    blur of sigma ``level`` pixels."""
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        return (x + level * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    if kind == "blur":
        return TF.gaussian_blur(x, kernel_size=9, sigma=level)
    raise ValueError(f"unknown disturbance {kind!r}; choose from {DISTURBANCES}")
