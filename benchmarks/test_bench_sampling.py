"""pytest-benchmark: sampling cost per solver family on the quick UNet (CPU).

Run with `tox -e bench` or `python -m pytest benchmarks --benchmark-only`. NFE goes into
``extra_info`` so that a time can be read per network evaluation.
"""

from __future__ import annotations

import pytest
import torch

from rfbench.config import PRESETS
from rfbench.models import build_model
from rfbench.sample import generate, warm_up

BATCH = 64
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def quick_unet():
    torch.manual_seed(0)
    model = build_model(SHAPE, PRESETS["quick"].unet, PRESETS["quick"].mlp).eval()
    warm_up(model, SHAPE, BATCH, "cpu")
    return model


@pytest.mark.parametrize(
    "solver,options",
    [
        ("euler", {"steps": 8}),
        ("rk4", {"steps": 2}),
        ("rk45", {"rtol": 1e-3, "atol": 1e-3}),
        ("dopri5", {"rtol": 1e-3, "atol": 1e-3}),
    ],
)
def test_sampling(benchmark, quick_unet, solver, options):
    run = benchmark.pedantic(
        generate,
        args=(quick_unet, solver, BATCH, SHAPE),
        kwargs={"batch_size": BATCH, "progress": False, **options},
        rounds=3,
        iterations=1,
    )
    benchmark.extra_info.update(
        nfe=run.nfe_per_sample, overhead_fraction=(run.overhead_time_s / run.model_time_s)
    )
    assert run.x.shape == (BATCH, *SHAPE)
