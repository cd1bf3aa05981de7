"""pytest-benchmark: rfbench's training step and a bare PyTorch loop on the quick UNet.

The ratio of the two, measured alternating in one process, is `benchmarks/train_step.py`
(results/train-step.md); these entries give each its own median for `tox -e bench`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from rfbench.config import PRESETS
from rfbench.flow import interpolate, sample_t, target_velocity
from rfbench.models import build_model
from rfbench.train import train_step

BATCH, SHAPE = 64, (1, 28, 28)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(BATCH, *SHAPE, generator=g) * 2 - 1
    return torch.randn(BATCH, *SHAPE, generator=g), x1, sample_t(BATCH, generator=g)


def _model():
    torch.manual_seed(0)
    model = build_model(SHAPE, PRESETS["quick"].unet, PRESETS["quick"].mlp).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_train_step_rfbench(benchmark, batch):
    model, opt = _model()
    ema = copy.deepcopy(model).requires_grad_(False)
    x0, x1, t = batch
    loss = benchmark.pedantic(
        lambda: train_step(model, ema, opt, x0, x1, t, PRESETS["quick"].train, 100).item(),
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    benchmark.extra_info["images_per_step"] = BATCH
    assert loss > 0


def test_train_step_bare(benchmark, batch):
    model, opt = _model()
    x0, x1, t = batch

    def step() -> float:
        loss = F.mse_loss(model(interpolate(x0, x1, t), t), target_velocity(x0, x1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_step"] = BATCH
    assert loss > 0
