"""Velocity networks v(x, t), built from the data's sample shape and a size config."""

from __future__ import annotations

from torch import nn

from rfbench.config import MLPConfig, UNetConfig
from rfbench.models.mlp import MLP
from rfbench.models.unet import UNet

__all__ = ["MLP", "UNet", "build_model", "count_parameters", "preset_network"]


def build_model(sample_shape: tuple[int, ...], unet: UNetConfig, mlp: MLPConfig) -> nn.Module:
    """A UNet for images [C, H, W] (H == W), an MLP for vectors [D]."""
    if len(sample_shape) == 1:
        return MLP(sample_shape[0], mlp)
    if len(sample_shape) == 3 and sample_shape[1] == sample_shape[2]:
        return UNet(sample_shape[0], sample_shape[1], unet)
    raise ValueError(f"no model for samples of shape {sample_shape}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_network(preset) -> tuple[tuple[int, int, int], int]:
    """The image shape a preset's UNet is built for (its datasets' channels, its image
    size or 28) and that network's parameter count."""
    size = preset.image_size or 28
    channels = 3 if preset.datasets and set(preset.datasets) & {"cifar10", "image-folder"} else 1
    shape = (channels, size, size)
    return shape, count_parameters(build_model(shape, preset.unet, preset.mlp))
