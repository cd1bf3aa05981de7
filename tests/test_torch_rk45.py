"""rk45-torch takes scipy's RK45 steps: the same calls, the same states, in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import RK45

from rfbench.sample import CountingVelocity
from rfbench.solvers import solve
from rfbench.solvers import torch_rk45 as T

from .problems import PROBLEMS


def test_tableau_is_scipys():
    np.testing.assert_allclose(T.C, RK45.C, rtol=0, atol=1e-16)
    a = np.zeros((6, 5))
    for i, row in enumerate(T.A):
        a[i, : len(row)] = row
    np.testing.assert_allclose(a, RK45.A, rtol=0, atol=1e-15)
    np.testing.assert_allclose(T.B, RK45.B, rtol=0, atol=1e-16)
    np.testing.assert_allclose(T.E, RK45.E, rtol=0, atol=1e-16)
    assert RK45.error_estimator_order == T.ERROR_ORDER


def _pair(velocity, x0, **kw):
    ours, theirs = CountingVelocity(velocity), CountingVelocity(velocity)
    a = solve("rk45-torch", ours, x0, **kw)
    b = solve("rk45", theirs, x0, **kw)
    return a, b, ours.nfe, theirs.nfe


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_same_steps_as_scipy_on_exact_problems(problem, tol):
    x0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    a, b, n_ours, n_scipy = _pair(lambda x, t: problem.velocity(x, float(t[0])), x0, rtol=tol)
    assert n_ours == n_scipy == a.solver_nfe == b.solver_nfe
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-13)


def _net(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    net = net.to(dtype)

    def velocity(x, t):
        return net(torch.cat([x, t.reshape(-1, 1)], 1))

    return velocity


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_same_steps_as_scipy_on_a_seeded_network_batch(tol):
    x0 = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b, n_ours, n_scipy = _pair(_net(torch.float64), x0, rtol=tol, atol=tol / 10)
    assert n_ours == n_scipy and n_ours > 6
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-13)
    # backwards (inversion), from data to noise
    c, d, m_ours, m_scipy = _pair(_net(torch.float64), x0, rtol=tol, t0=1.0, t1=0.0)
    assert m_ours == m_scipy
    torch.testing.assert_close(c.x, d.x, rtol=0, atol=1e-13)


def test_a_float32_network_sees_what_scipy_gives_it():
    """Both hold the state in float64 and call the network in its own dtype."""
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    a, b, n_ours, n_scipy = _pair(_net(torch.float32), x0, rtol=1e-5)
    assert n_ours == n_scipy and a.x.dtype == torch.float32
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-6)


def test_rejected_steps_are_counted():
    """A stiff start forces rejections: every attempt's 6 calls count, as in scipy."""
    x0 = torch.ones(1, 2, dtype=torch.float64)
    a, b, n_ours, n_scipy = _pair(lambda x, t: -50.0 * x, x0, rtol=1e-4)
    assert n_ours == n_scipy == a.solver_nfe
    assert (n_ours - 2) % 6 == 0  # 2 start-up calls, then 6 per attempt
