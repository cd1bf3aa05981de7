"""A velocity MLP v(x, t) for low-dimensional data (toy2d)."""

from __future__ import annotations

import torch
from torch import nn

from rfbench.config import MLPConfig
from rfbench.models.unet import sinusoidal_embedding


class MLP(nn.Module):
    """v(x, t): points [B, D] and times [B] in [0, 1] -> velocities [B, D]."""

    def __init__(self, dim: int, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config, self.dim = config, dim
        layers: list[nn.Module] = [nn.Linear(dim + config.time_features, config.hidden), nn.SiLU()]
        for _ in range(config.depth - 1):
            layers += [nn.Linear(config.hidden, config.hidden), nn.SiLU()]
        layers.append(nn.Linear(config.hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = sinusoidal_embedding(t, self.config.time_features).to(x.dtype)
        return self.net(torch.cat([x, temb], dim=1))
