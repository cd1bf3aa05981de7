from __future__ import annotations

import pytest
import torch

from rfbench.config import MLPConfig
from rfbench.models import MLP
from rfbench.sample import CountingVelocity, NFEBudgetExceeded, generate, noise, sample_seed


def _model():
    torch.manual_seed(0)
    return MLP(2, MLPConfig(hidden=32, depth=2)).eval()


def test_noise_depends_only_on_seed_and_index():
    a = noise(0, range(10), (3,))
    b = noise(0, [7, 3], (3,))
    assert torch.equal(a[7], b[0]) and torch.equal(a[3], b[1])
    assert not torch.equal(noise(1, [3], (3,))[0], a[3])
    assert sample_seed(0, 1) != sample_seed(1, 0)


@pytest.mark.parametrize("solver,kw", [("euler", {"steps": 5}), ("rk4", {"steps": 3})])
def test_fixed_step_samples_do_not_depend_on_batch_size(solver, kw):
    model = _model()
    runs = [
        generate(model, solver, 13, (2,), seed=4, batch_size=b, progress=False, **kw)
        for b in (1, 5, 13)
    ]
    for r in runs[1:]:
        torch.testing.assert_close(r.x, runs[0].x, rtol=1e-6, atol=1e-6)
    assert [r.batch_sizes for r in runs] == [[1] * 13, [5, 5, 3], [13]]


def test_generate_accounting():
    model = _model()
    run = generate(model, "heun", 10, (2,), steps=4, batch_size=4, progress=False)
    assert run.nfe_per_batch == [8, 8, 8]
    assert run.nfe_per_sample == 8.0
    assert run.n == 10
    assert 0 < run.model_time_s <= run.wall_time_s
    assert run.overhead_time_s == pytest.approx(run.wall_time_s - run.model_time_s)


def test_adaptive_solver_records_its_own_count():
    run = generate(_model(), "rk45", 6, (2,), rtol=1e-4, atol=1e-4, batch_size=3, progress=False)
    assert run.solver_nfe_per_batch == run.nfe_per_batch


def test_max_nfe_guard():
    counter = CountingVelocity(lambda x, t: x, max_nfe=3)
    for _ in range(3):
        counter(torch.ones(1), 0.0)
    with pytest.raises(NFEBudgetExceeded):
        counter(torch.ones(1), 0.0)


def test_counting_wrapper_passes_time_as_batch():
    seen = {}

    def model(x, t):
        seen["t"] = t
        return x

    CountingVelocity(model)(torch.ones(4, 2), torch.tensor(0.25))
    assert seen["t"].shape == (4,) and torch.all(seen["t"] == 0.25)
