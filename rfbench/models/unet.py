"""A compact UNet velocity field v(x, t) for images (Ho et al. 2020 layout, scaled down).

Sinusoidal time embedding -> MLP; residual blocks with GroupNorm and a per-block time shift;
optional self-attention at chosen feature-map sizes; skip connections across each level.
At 16 base channels and channel_mults (1, 2, 2) (the quick preset) it has 0.28M parameters
for 1x28x28 images (`rfbench presets` counts every preset's).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from rfbench.config import UNetConfig

# t in [0, 1] is multiplied by this before the sinusoidal features, so the fastest feature
# turns about 5 times over [0, 1]. DDPM's 1000 makes the learned field oscillate in t, and
# adaptive solvers then pay for it in NFE.
TIME_SCALE = 30.0


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of TIME_SCALE * t, for t in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = TIME_SCALE * t.float()[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with the time embedding added in between."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # [b, hw, c]
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """v(x, t): images [B, C, H, W] and times [B] in [0, 1] -> velocities [B, C, H, W]."""

    def __init__(self, in_channels: int, image_size: int, config: UNetConfig = UNetConfig()):
        super().__init__()
        ch, g = config.base_channels, config.norm_groups
        widths = [ch * m for m in config.channel_mults]
        if any(w % g for w in [ch, *widths]):
            raise ValueError(f"norm_groups={g} must divide every channel count {[ch, *widths]}")
        t_dim = 4 * ch
        self.config, self.in_channels, self.image_size = config, in_channels, image_size
        self.time_mlp = nn.Sequential(nn.Linear(ch, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)

        def block(c_in, c_out, size):
            layers = nn.ModuleList([ResBlock(c_in, c_out, t_dim, g, config.dropout)])
            if size in config.attention_resolutions:
                layers.append(Attention(c_out, g))
            return layers

        # Down path: each level keeps its resolution, then halves it (except the last).
        self.down, self.downsample, skips = nn.ModuleList(), nn.ModuleList(), [ch]
        c, size, self.sizes = ch, image_size, []
        for level, w in enumerate(widths):
            for _ in range(config.num_res_blocks):
                self.down.append(block(c, w, size))
                c = w
                skips.append(c)
            self.sizes.append(size)
            last = level == len(widths) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1)
            )
            if not last:
                skips.append(c)
                size = (size + 1) // 2
        mid_attention = Attention(c, g) if config.attention_resolutions else nn.Identity()
        self.mid = nn.ModuleList(
            [
                ResBlock(c, c, t_dim, g, config.dropout),
                mid_attention,
                ResBlock(c, c, t_dim, g, config.dropout),
            ]
        )
        # Up path: mirror, consuming one skip per block.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(block(c + skips.pop(), w, self.sizes[level]))
                c = w
            self.upsample.append(nn.Identity() if level == 0 else nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(
            nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels))
        h = self.stem(x)
        hs = [h]
        blocks = iter(self.down)
        n = self.config.num_res_blocks
        for down in self.downsample:
            for _ in range(n):
                h = _apply(next(blocks), h, temb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        blocks = iter(self.up)
        for i, up in enumerate(self.upsample):
            level = len(self.upsample) - 1 - i
            for _ in range(n + 1):
                h = _apply(next(blocks), torch.cat([h, hs.pop()], dim=1), temb)
            if level > 0:
                h = up(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.head(h)


def _apply(layers: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = layers[0](h, temb)
    for extra in layers[1:]:
        h = extra(h)
    return h
