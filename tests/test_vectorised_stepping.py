"""Vectorised per-sample stepping: every sample takes the steps it would take alone, in
one batched solve, and the NFE of each is counted from the calls that carried it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from rfbench.sample import CountingVelocity, generate, path_statistics
from rfbench.solvers import SOLVERS, Setting, solve
from rfbench.solvers.torch_rk45 import solve_rk45_torch_per_sample

from .problems import PROBLEMS

SETTING = Setting("rk45-torch", rtol=1e-6, stepping="per-sample")
VECTORISED = [name for name, spec in SOLVERS.items() if spec.per_sample_fn is not None]


def _rates(x: torch.Tensor) -> torch.Tensor:
    """Each sample's own decay rate, from its last coordinate (which stays constant)."""
    return 0.5 + 60 * x[:, 2:].abs()


def _decay(x, t):
    """d(x0, x1)/dt = -k (1 + t) (x0, x1), dx2/dt = 0, k per sample from x2: exact
    (x0, x1) exp(-k (t + t^2/2)); the stiff samples need many steps and rejections, the
    gentle ones few."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
    return torch.cat([-_rates(x) * x[:, :2] * (1 + t), torch.zeros_like(x[:, 2:])], 1)


def _x0(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, dtype=torch.float64, generator=g)


def _alone(velocity, x0_row: torch.Tensor, setting=SETTING, **kw):
    counter = CountingVelocity(velocity)
    batched = Setting("rk45-torch", rtol=setting.rtol, atol=setting.atol)
    result = solve(batched, counter, x0_row[None], **kw)
    return result, counter.nfe


def test_each_sample_takes_the_steps_it_takes_alone_and_scipys():
    x0 = _x0()
    counter = CountingVelocity(_decay)
    result = solve_rk45_torch_per_sample(counter, x0, SETTING)
    assert result.sample_nfe.tolist() == counter.row_nfe.tolist()
    assert len(set(result.sample_nfe.tolist())) > 3  # the samples differ in difficulty
    for b in range(len(x0)):
        alone, nfe = _alone(_decay, x0[b])
        assert result.sample_nfe[b] == nfe
        torch.testing.assert_close(result.x[b], alone.x[0], rtol=0, atol=1e-14)
        # and scipy's RK45 on that sample alone: the same nfev, the same end
        f = lambda t, y: _decay(torch.from_numpy(y)[None], t)[0].numpy()  # noqa: E731
        ivp = solve_ivp(f, (0, 1), x0[b].numpy(), method="RK45", rtol=1e-6, atol=1e-6)
        assert ivp.nfev == nfe
        np.testing.assert_allclose(result.x[b].numpy(), ivp.y[:, -1], rtol=0, atol=1e-13)
    exact = torch.cat([x0[:, :2] * torch.exp(-1.5 * _rates(x0)), x0[:, 2:]], 1)
    torch.testing.assert_close(result.x, exact, rtol=0, atol=2e-5)


def test_a_sample_does_not_depend_on_its_batch_mates():
    x0 = _x0(12)
    # samples 2, 7 and 11 in other company, at other places in a batch of another size
    others = torch.cat([_x0(3, seed=5), x0[11:12], x0[2:3], _x0(4, seed=6), x0[7:8]])
    a = solve_rk45_torch_per_sample(CountingVelocity(_decay), x0, SETTING)
    b = solve_rk45_torch_per_sample(CountingVelocity(_decay), others, SETTING)
    for i, j in ((11, 3), (2, 4), (7, 9)):
        assert a.sample_nfe[i] == b.sample_nfe[j]
        torch.testing.assert_close(a.x[i], b.x[j], rtol=1e-12, atol=1e-15)  # row norms: round-off
    assert len(set(a.sample_nfe[[2, 7, 11]].tolist())) > 1  # they differ in difficulty


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    net = net.double()

    def velocity(x, t):
        return 3 * net(torch.cat([x, t.reshape(-1, 1).expand(len(x), 1)], 1))

    return velocity


@pytest.mark.parametrize("direction", [(0.0, 1.0), (1.0, 0.0)])
def test_a_seeded_network_sample_by_sample(direction):
    t0, t1 = direction
    x0 = 2 * _x0(16).repeat(1, 2)[:, :4]
    net = _net()
    result = solve_rk45_torch_per_sample(CountingVelocity(net), x0, SETTING, t0=t0, t1=t1)
    for b in range(len(x0)):
        alone, nfe = _alone(net, x0[b], t0=t0, t1=t1)
        assert result.sample_nfe[b] == nfe
        torch.testing.assert_close(result.x[b], alone.x[0], rtol=0, atol=1e-12)


class _Carried:
    """A velocity that logs the batch of every forward."""

    def __init__(self, velocity):
        self.velocity, self.sizes = velocity, []

    def __call__(self, x, t):
        self.sizes.append(len(x))
        return self.velocity(x, t)


def test_accounting_is_exact_with_rejections_and_early_finishers():
    x0 = _x0(10)
    net = _Carried(_decay)
    counter = CountingVelocity(net)
    result = solve_rk45_torch_per_sample(counter, x0, SETTING)
    nfe = result.sample_nfe
    # the wrapper counts forwards; each sample, the forwards that carried it
    assert counter.nfe == result.solver_nfe == len(net.sizes)
    assert sum(net.sizes) == int(counter.row_nfe.sum()) == int(nfe.sum())
    # every running sample is in every forward, so the forwards are the hardest sample's
    assert counter.nfe == int(nfe.max())
    # samples leave as they finish: the batch shrinks, never grows
    assert net.sizes[0] == 10 and net.sizes[-1] < 10
    assert all(a >= b for a, b in zip(net.sizes, net.sizes[1:]))
    # 2 start-up calls (f0 and the initial-step probe), then 6 per attempt, rejected or not
    assert ((nfe - 2) % 6 == 0).all()
    stiff = int(nfe.argmax())
    calls = []  # the stiffest sample alone: scipy's RK45 rejects some of its steps
    f = lambda t, y: calls.append(t) or _decay(torch.from_numpy(y)[None], t)[0].numpy()  # noqa: E731
    ivp = solve_ivp(f, (0, 1), x0[stiff].numpy(), method="RK45", rtol=1e-6, atol=1e-6)
    accepted = len(ivp.t) - 1
    assert ivp.nfev == nfe[stiff] and ivp.nfev > 2 + 6 * accepted  # rejections counted


def test_the_first_call_carries_the_whole_batch():
    counter = CountingVelocity(_decay)
    with pytest.raises(ValueError, match="whole batch"):
        counter(_x0(2), 0.0, rows=torch.tensor([1]))


def test_generate_runs_vectorised_where_the_solver_can_and_says_so():
    kw = dict(seed=3, batch_size=8, rtol=1e-5, progress=False, stepping="per-sample")
    vec = generate(_decay, "rk45-torch", 20, (3,), record=True, **kw)
    seq = generate(_decay, "rk45-torch", 20, (3,), record=True, vectorise=False, **kw)
    scipy = generate(_decay, "rk45", 20, (3,), **kw)
    assert vec.per_sample_impl == "vectorised" and vec.solve_sizes == [8, 8, 4]
    assert seq.per_sample_impl == scipy.per_sample_impl == "sequential"
    assert seq.solve_sizes == [1] * 20
    np.testing.assert_array_equal(vec.nfe_of_samples, seq.nfe_of_samples)
    np.testing.assert_array_equal(vec.nfe_of_samples, scipy.nfe_of_samples)
    assert vec.nfe_std > 0 and vec.nfe_per_sample == seq.nfe_per_sample
    # the forwards per solve: the hardest sample of each batch's
    hardest = [int(vec.nfe_of_samples[lo:hi].max()) for lo, hi in vec.solve_ranges]
    assert vec.nfe_per_solve == hardest
    torch.testing.assert_close(vec.x, seq.x, rtol=0, atol=1e-6)
    # each sample's path statistics from the calls that carried it, at its own times
    torch.testing.assert_close(vec.straightness, seq.straightness, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vec.curvature, seq.curvature, rtol=1e-9, atol=1e-12)
    batched = generate(_decay, "rk45-torch", 20, (3,), **dict(kw, stepping="batched"))
    assert batched.per_sample_impl is None


def test_per_sample_path_statistics_use_each_samples_own_calls():
    """Each sample's integrals are the trapezoid over the calls that carried it, at its own
    times. A closed loop (x1 = x0) makes S the integral of the recorded squared velocity,
    here t^2, whose trapezoid depends on the points: 0, 1/2, 1 give 3/8; 0, 1/4, 1 give
    13/32 (the exact 1/3 is neither)."""
    t = torch.tensor([[0.0, 0.0], [0.5, torch.nan], [1.0, 0.25], [torch.nan, 1.0]]).double()
    sq, norm = t.pow(2), t.pow(2) + 1
    x0 = x1 = torch.ones(2, 1)
    stats = path_statistics((t, sq, norm), None, x0, x1)
    expected = torch.tensor([3 / 8, 13 / 32], dtype=torch.float64)
    torch.testing.assert_close(stats.straightness, expected, rtol=1e-12, atol=0)
    assert stats.curvature.isnan().all()  # no chord: no curvature


def test_the_nfe_guard_is_the_hardest_samples_nfe():
    """Every running sample is in every forward: the guard on forwards is a guard on the
    largest per-sample NFE, as in one-at-a-time solving."""
    from rfbench.sample import NFEBudgetExceeded

    kw = dict(rtol=1e-6, stepping="per-sample", batch_size=8, progress=False)
    hardest = int(generate(_decay, "rk45-torch", 8, (3,), **kw).nfe_of_samples.max())
    assert generate(_decay, "rk45-torch", 8, (3,), max_nfe=hardest, **kw).n == 8
    for vectorise in (True, False):
        with pytest.raises(NFEBudgetExceeded):
            generate(_decay, "rk45-torch", 8, (3,), max_nfe=hardest - 1, vectorise=vectorise, **kw)


def test_a_sample_that_turns_nan_fails_the_solve_as_scipy_does():
    """scipy's max(0.2, NaN) is 0.2: the step shrinks until it is too small and the solve
    fails, where a NaN step size would retry forever."""
    from rfbench.solvers import SolverFailed

    x0 = _x0(4)

    def poisoned(x, t):  # sample 1 (known by its constant last coordinate), after t = 0.5
        v = _decay(x, t)
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(len(x))
        bad = (t > 0.5) & (x[:, 2] == x0[1, 2])
        return torch.where(bad[:, None], torch.nan, v)

    for fn in (solve_rk45_torch_per_sample, lambda v, x, s: solve("rk45-torch", v, x, rtol=1e-6)):
        with pytest.raises(SolverFailed, match="step size"):
            fn(CountingVelocity(poisoned, max_nfe=5000), x0, SETTING)


def test_tolerances_below_scipys_floor_take_scipys_steps():
    x0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    counts = []
    with pytest.warns(UserWarning, match="rtol too small"):
        for solver in ("rk45", "rk45-torch"):
            counter = CountingVelocity(lambda x, t: -x)
            solve(solver, counter, x0, rtol=1e-15)
            counts.append(counter.nfe)
        vec = solve_rk45_torch_per_sample(
            CountingVelocity(lambda x, t: -x), x0, Setting("rk45-torch", rtol=1e-15)
        )
    assert counts[0] == counts[1] == int(vec.sample_nfe[0])


def _rowwise(problem):
    """A problem's velocity at each sample's own time."""

    def velocity(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(len(x))
        return torch.cat([problem.velocity(x[i : i + 1], float(t[i])) for i in range(len(x))])

    return velocity


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("solver", VECTORISED)
def test_every_vectorised_solver_on_the_exact_problems(solver, problem):
    """Each registered per_sample_fn reaches the exact solution, at each sample the NFE of
    solving that sample alone."""
    setting = Setting(solver, rtol=1e-8, stepping="per-sample")
    x0 = torch.tensor([[1.0], [-0.5], [2.0], [1e-3]], dtype=torch.float64)
    counter = CountingVelocity(_rowwise(problem))
    result = SOLVERS[solver].per_sample_fn(counter, x0, setting, t0=0.0, t1=1.0)
    torch.testing.assert_close(result.x, problem.exact(x0, 1.0), rtol=1e-6, atol=1e-8)
    for b in range(len(x0)):
        alone = CountingVelocity(_rowwise(problem))
        solve(Setting(solver, rtol=1e-8), alone, x0[b : b + 1])
        assert counter.row_nfe[b] == alone.nfe
