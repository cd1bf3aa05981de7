"""Exact sample distances for toy2d: sliced Wasserstein-2 and energy distance."""

from __future__ import annotations

import torch


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, projections: int = 512, seed: int = 0
) -> float:
    """SW_2 between two equal-size point sets (Rabin et al. 2011), Monte-Carlo over directions."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {a.shape} and {b.shape}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa = (a.double() @ dirs).sort(dim=0).values
    pb = (b.double() @ dirs).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013), V-statistic form."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


class ToyDistances:
    """The toy2d metric: both distances from a sample set to a fixed sample of the truth.

    ``stream(n)`` takes the n samples in batches, like ``FidelityMetrics.stream``; points
    in 2-d are cheap to keep, so it keeps them.
    """

    def __init__(self, reference: torch.Tensor):
        self.reference = reference

    def stream(self, n: int) -> _PointStream:
        return _PointStream(self.reference, n)


class _PointStream:
    def __init__(self, reference: torch.Tensor, n: int):
        self.reference, self.n, self.parts = reference, n, []

    def add(self, x: torch.Tensor) -> None:
        self.parts.append(x)

    def add_rows(self, rows: dict[str, torch.Tensor], count: int) -> None:
        """Append ``count`` samples kept by another process (``rows()`` there)."""
        if count:
            self.parts.append(rows["x"])

    def rows(self) -> dict[str, torch.Tensor]:
        return {"x": torch.cat(self.parts)} if self.parts else {}

    def result(self) -> dict:
        x = torch.cat(self.parts)
        if len(x) != self.n:
            raise ValueError(f"{len(x)} samples streamed, {self.n} announced")
        return {
            "swd": sliced_wasserstein(x, self.reference),
            "energy_distance": energy_distance(x, self.reference),
        }
