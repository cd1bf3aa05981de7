from __future__ import annotations

import math

import pytest
import torch

from rfbench.config import MLPConfig
from rfbench.models import MLP
from rfbench.sample import (
    CountingVelocity,
    NFEBudgetExceeded,
    generate,
    integrate,
    noise,
    plan,
    sample_seed,
    trajectory,
)
from rfbench.solvers import Setting


def _integrate(model, solver, n, initial, t0=0.0, t1=1.0, **options):
    """``integrate`` with its options given as keywords (``plan`` sorts them)."""
    setting, batching, measuring, rest = plan(solver, **options)
    return integrate(
        model, setting, n, initial, t0=t0, t1=t1, batching=batching, measuring=measuring, **rest
    )


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
    assert [r.solve_sizes for r in runs] == [[1] * 13, [5, 5, 3], [13]]


def test_generate_accounting():
    model = _model()
    run = generate(model, "heun", 10, (2,), steps=4, batch_size=4, progress=False)
    assert run.nfe_per_solve == [8, 8, 8]
    assert run.nfe_per_sample == 8.0
    assert run.n == 10
    assert 0 < run.model_time_s <= run.wall_time_s
    assert run.overhead_time_s == pytest.approx(run.wall_time_s - run.model_time_s)


def test_sink_streams_every_sample_in_order_and_keep_bounds_memory():
    model = _model()
    full = generate(model, "rk4", 11, (2,), steps=3, batch_size=4, progress=False)
    batches = []
    kept = generate(
        model, "rk4", 11, (2,), steps=3, batch_size=4, progress=False, sink=batches.append, keep=5
    )
    assert [len(b) for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat(batches), full.x)
    assert torch.equal(kept.x, full.x[:5]) and kept.n == 11
    assert kept.nfe_per_solve == full.nfe_per_solve == [12, 12, 12]


@pytest.mark.parametrize("solver,grid", [("euler", "uniform"), ("heun", "cosine")])
def test_trajectory_nodes_end_where_the_solve_ends(solver, grid):
    model = _model()
    ts, xs = trajectory(model, Setting(solver, steps=5, grid=grid), noise(3, range(6), (2,)))
    run = generate(model, solver, 6, (2,), seed=3, steps=5, grid=grid, progress=False)
    assert ts.shape == (6,) and xs.shape == (6, 6, 2)
    assert ts[0] == 0.0 and ts[-1] == 1.0 and (ts.diff() > 0).all()
    assert torch.equal(xs[0], noise(3, range(6), (2,)))
    assert torch.equal(xs[-1], run.x)  # the same solve, node for node
    with pytest.raises(ValueError, match="fixed-step"):
        trajectory(model, Setting("rk45", rtol=1e-3), xs[0])


def test_adaptive_solver_records_its_own_count():
    run = generate(_model(), "rk45", 6, (2,), rtol=1e-4, atol=1e-4, batch_size=3, progress=False)
    assert run.solver_nfe_per_solve == run.nfe_per_solve


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


def _stiffness_model():
    """A field whose difficulty differs per sample: adaptive NFE depends on who shares a batch."""

    def v(x, t):
        scale = 1.0 + 20.0 * (x[:, :1].abs() > 1.5).to(x.dtype)  # samples far out are stiff
        return -scale * x

    return v


def test_per_sample_stepping_is_independent_of_the_other_samples():
    v = _stiffness_model()
    kw = dict(rtol=1e-5, atol=1e-5, progress=False, stepping="per-sample")
    alone = generate(v, "dopri5", 1, (2,), seed=3, batch_size=1, **kw)
    # Sample 0 of seed 3 again, now batched together with 15 other samples.
    together = generate(v, "dopri5", 16, (2,), seed=3, batch_size=16, **kw)
    assert together.nfe_per_solve[0] == alone.nfe_per_solve[0]
    torch.testing.assert_close(together.x[0], alone.x[0], rtol=0, atol=0)
    assert together.solve_sizes == [1] * 16
    assert together.nfe_std > 0  # samples differ in difficulty


def test_batched_stepping_couples_the_samples():
    """A stiff sample limits the step of the explicit solver by stability, not by its error:
    the whole batch then steps at the stiff sample's size."""
    v = _stiffness_model()
    kw = dict(rtol=1e-5, atol=1e-5, progress=False)
    batched = generate(v, "dopri5", 16, (2,), seed=3, batch_size=16, **kw)
    per_sample = generate(v, "dopri5", 16, (2,), seed=3, batch_size=16, stepping="per-sample", **kw)
    assert batched.nfe_per_sample > 2 * per_sample.nfe_per_sample
    assert batched.nfe_std == 0.0
    # Half the batch, other company: sample 0's NFE changes with who shares its batch.
    half = generate(v, "dopri5", 8, (2,), seed=3, batch_size=8, **kw)
    assert half.nfe_per_solve[0] != batched.nfe_per_solve[0]


def _spinning(x, t):
    """Each sample turns at its own constant rate 3|x|^2: differing accuracy demands, no
    stiffness."""
    w = 3 * x.pow(2).sum(1, keepdim=True)
    return w * torch.stack([-x[:, 1], x[:, 0]], 1)


@pytest.mark.parametrize("solver", ["rk45", "dopri5"])
def test_batched_error_norm_is_a_root_mean_square(solver):
    """One RMS error norm over the batch: the batch takes more steps than the mean sample
    alone and fewer than the hardest (the squares pull it towards the hard tail)."""
    kw = dict(rtol=1e-5, atol=1e-5, progress=False, seed=3, batch_size=64)
    batched = generate(_spinning, solver, 64, (2,), **kw)
    alone = torch.tensor(
        generate(_spinning, solver, 64, (2,), stepping="per-sample", **kw).nfe_per_solve,
        dtype=torch.float64,
    )
    assert alone.mean() < batched.nfe_per_sample < alone.max()


def test_repeats_keep_counts_and_samples():
    model = _model()
    once = generate(model, "euler", 8, (2,), steps=4, batch_size=4, progress=False)
    thrice = generate(model, "euler", 8, (2,), steps=4, batch_size=4, repeats=3, progress=False)
    assert thrice.nfe_per_solve == once.nfe_per_solve
    assert torch.equal(thrice.x, once.x)


def test_reconstruction_error_shrinks_with_solver_accuracy():
    from rfbench.sample import reconstruct

    model = _model()
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    coarse = reconstruct(model, "euler", data, steps=2, batch_size=16, progress=False)
    fine = reconstruct(model, "rk4", data, steps=64, batch_size=16, progress=False)
    adaptive = reconstruct(
        model, "dopri5", data, rtol=1e-7, atol=1e-7, batch_size=16, progress=False
    )
    assert fine.rmse < 1e-5 and adaptive.rmse < 1e-4
    assert coarse.rmse > 100 * fine.rmse
    assert coarse.encode.nfe_per_sample == coarse.decode.nfe_per_sample == 2


C = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], dtype=torch.float64)


def _curved(x, t):
    """dx/dt = 2 t c: x(t) = x0 + c t^2, so S = int |2tc - c|^2 dt = mean(c^2) / 3."""
    return 2 * t.view(-1, 1) * C


def _straight(x, t):
    return C.clone()


@pytest.mark.parametrize(
    "solver,options,tol",
    [
        ("euler", {"steps": 1}, 1e-12),
        ("heun", {"steps": 4}, 1e-12),
        ("rk4", {"steps": 2}, 1e-12),
        ("rk45", {"rtol": 1e-6, "atol": 1e-6}, 1e-9),
        ("dopri5", {"rtol": 1e-6, "atol": 1e-6}, 1e-9),
    ],
)
def test_straightness_of_a_straight_field_is_zero(solver, options, tol):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    run = _integrate(
        _straight,
        solver,
        2,
        lambda lo, hi: x0[lo:hi],
        record=True,
        batch_size=2,
        progress=False,
        **options,
    )
    assert run.straightness.abs().max().item() < tol


@pytest.mark.parametrize(
    "solver,options,rel",
    [
        ("rk4", {"steps": 2}, 1e-12),  # Simpson-weighted: exact for this quadratic |v|^2
        ("heun", {"steps": 64}, 1e-3),
        ("midpoint", {"steps": 64}, 1e-3),
    ],
)
def test_straightness_of_a_curved_field_fixed_step(solver, options, rel):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    run = _integrate(
        _curved,
        solver,
        2,
        lambda lo, hi: x0[lo:hi],
        record=True,
        batch_size=2,
        progress=False,
        **options,
    )
    exact = C.pow(2).mean(1) / 3
    torch.testing.assert_close(run.straightness, exact, rtol=rel, atol=0)


def _oscillating(x, t):
    """dx/dt = c cos(3t): S = mean(c^2) (1/2 + sin(6)/12 - (sin(3)/3)^2)."""
    return torch.cos(3 * t).view(-1, 1) * C


@pytest.mark.parametrize("solver", ["rk45", "rk23", "dopri5", "bosh3"])
def test_straightness_of_a_curved_field_adaptive(solver):
    """Adaptive solvers: the trapezoid rule over their calls, an estimate."""
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    run = _integrate(
        _oscillating,
        solver,
        2,
        lambda lo, hi: x0[lo:hi],
        record=True,
        batch_size=2,
        rtol=1e-7,
        atol=1e-7,
        progress=False,
    )
    exact = C.pow(2).mean(1) * (0.5 + math.sin(6) / 12 - (math.sin(3) / 3) ** 2)
    torch.testing.assert_close(run.straightness, exact, rtol=1e-2, atol=0)


def test_straightness_needs_no_trajectory_storage():
    counter = CountingVelocity(lambda x, t: x, record=True)
    counter(torch.ones(4, 1, 28, 28), 0.5)
    t, sq, norm = counter.recorded()
    assert t.tolist() == [0.5] and sq.shape == norm.shape == (1, 4)  # 2B numbers per call


def _rotation(x, t):
    """dx/dt = (pi/2) (-x2, x1): a quarter circle from (1, 0); length pi/2, chord sqrt(2)."""
    return (math.pi / 2) * torch.stack([-x[:, 1], x[:, 0]], dim=1)


@pytest.mark.parametrize(
    "solver,options,rel",
    [
        ("rk4", {"steps": 32}, 1e-6),
        ("heun", {"steps": 64}, 1e-3),
        ("dopri5", {"rtol": 1e-7, "atol": 1e-7}, 1e-2),
        ("rk45", {"rtol": 1e-7, "atol": 1e-7}, 1e-2),
    ],
)
def test_curvature_of_a_quarter_circle(solver, options, rel):
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    run = _integrate(
        _rotation,
        solver,
        1,
        lambda lo, hi: x0[lo:hi],
        record=True,
        batch_size=1,
        progress=False,
        **options,
    )
    exact = (math.pi / 2) / math.sqrt(2) - 1
    assert run.curvature.item() == pytest.approx(exact, rel=rel)


def test_curvature_is_geometry_and_straightness_is_also_speed():
    """x = x0 + c t^2 moves along a line at a changing speed: curvature 0, straightness > 0."""
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    run = _integrate(
        _curved,
        "rk4",
        2,
        lambda lo, hi: x0[lo:hi],
        steps=8,
        record=True,
        batch_size=2,
        progress=False,
    )
    assert run.curvature.abs().max().item() < 1e-12
    assert (run.straightness > 0.1).all()


@pytest.mark.parametrize("solver,options", [("rk4", {"steps": 2}), ("euler", {"steps": 1})])
def test_path_statistics_do_not_depend_on_the_direction(solver, options):
    """Encoding (t from 1 to 0) walks the same kind of path with negative steps: its
    integrals are over absolute time, so straightness and curvature keep their sign."""
    x1 = C.clone()
    forward = _integrate(
        _curved,
        solver,
        2,
        lambda lo, hi: torch.zeros(2, 3, dtype=torch.float64),
        record=True,
        batch_size=2,
        progress=False,
        **options,
    )
    backward = _integrate(
        _curved,
        solver,
        2,
        lambda lo, hi: x1[lo:hi],
        t0=1.0,
        t1=0.0,
        record=True,
        batch_size=2,
        progress=False,
        **options,
    )
    assert (backward.straightness >= 0).all() and (backward.curvature >= -1e-12).all()
    if solver == "rk4":  # exact quadrature of |v|^2 = 4 t^2 c^2 in both directions
        exact = C.pow(2).mean(1) / 3
        torch.testing.assert_close(backward.straightness, exact, rtol=1e-12, atol=0)
        torch.testing.assert_close(forward.straightness, exact, rtol=1e-12, atol=0)
    else:  # one step is a straight line, either way
        assert backward.straightness.abs().max().item() < 1e-12


def test_quarter_circle_backwards_has_the_same_curvature():
    x1 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    run = _integrate(
        _rotation,
        "rk4",
        1,
        lambda lo, hi: x1[lo:hi],
        t0=1.0,
        t1=0.0,
        steps=32,
        record=True,
        batch_size=1,
        progress=False,
    )
    assert run.curvature.item() == pytest.approx((math.pi / 2) / math.sqrt(2) - 1, rel=1e-6)


def test_recording_is_timed_apart_from_the_solve(monkeypatch):
    """rfbench's bookkeeping is not the solver's overhead: a recording made slow on purpose
    shows in record_time_s and not in wall_time_s or overhead_time_s."""
    import time

    slow = CountingVelocity._record

    def record(self, t, out, rows):
        time.sleep(0.1)
        slow(self, t, out, rows)

    monkeypatch.setattr(CountingVelocity, "_record", record)
    model = _model()
    run = generate(model, "euler", 4, (2,), steps=5, batch_size=4, record=True, progress=False)
    assert run.record_time_s >= 5 * 0.1
    assert run.wall_time_s < run.record_time_s / 2  # 5 calls of a small MLP, and Euler
    assert 0 < run.model_time_s <= run.wall_time_s
    assert run.overhead_time_s == pytest.approx(run.wall_time_s - run.model_time_s)
    assert run.straightness is not None and torch.isfinite(run.straightness).all()
