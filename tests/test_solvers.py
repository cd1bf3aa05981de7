"""Every registered solver against exact solutions, with exact NFE counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from rfbench.errors import UserError
from rfbench.sample import CountingVelocity
from rfbench.solvers import GRIDS, SOLVERS, get_solver, solve, time_grid

from .problems import PROBLEMS

# Tolerances on the max abs error at t=1, |x(1)| <= 3.3. Fixed-step at 64 steps, by order;
# adaptive at rtol = atol = 1e-6, per family. Global error is not bounded by rtol: these
# bounds hold with a margin of about 2x over the worst problem of each family.
FIXED_STEPS = 64
FIXED_TOL = {
    "euler": 7e-2,
    "midpoint": 3e-4,
    "heun": 3e-4,
    "rk4": 1e-9,
    "ab2": 2e-3,
    "ab3": 1e-3,
    "ab4": 1e-3,
    "dpmpp-2m": 4e-3,
    "dpmpp-3m": 5e-3,
    "unipc-bh1": 4e-3,
    "unipc-bh2": 2e-3,
}
ADAPTIVE_RTOL = 1e-6
ADAPTIVE_TOL = {"scipy": 2e-4, "torch": 2e-4, "torchdiffeq": 1e-3}


def _x0():
    return torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_exact_solutions(name, problem):
    spec = get_solver(name)
    x0 = _x0()
    if spec.adaptive:
        res = solve(name, problem.velocity, x0, rtol=ADAPTIVE_RTOL, atol=ADAPTIVE_RTOL)
        tol = ADAPTIVE_TOL[spec.family]
    else:
        res = solve(name, problem.velocity, x0, steps=FIXED_STEPS)
        tol = FIXED_TOL[name]
    err = (res.x - problem.exact(x0, 1.0)).abs().max().item()
    assert err < tol, f"{name} on {problem.name}: error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("name,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_convergence_order(name, order):
    problem = PROBLEMS[2]  # x and t
    x0 = _x0()
    errs = [
        (solve(name, problem.velocity, x0, steps=n).x - problem.exact(x0, 1.0)).abs().max().item()
        for n in (16, 32)
    ]
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - order) < 0.15, f"{name}: observed order {observed:.3f}, expected {order}"


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if not s.adaptive])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_fixed_step_nfe_is_exact(name, steps):
    counter = CountingVelocity(lambda x, t: -x)
    solve(name, counter, torch.ones(2, 3), steps=steps)
    # euler and every multistep solver: 1 call per step; midpoint and heun: 2; rk4: 4.
    per_step = {"midpoint": 2, "heun": 2, "rk4": 4}.get(name, 1)
    assert counter.nfe == per_step * steps
    assert counter.nfe == SOLVERS[name].nfe_per_step * steps


SCIPY = [n for n, s in SOLVERS.items() if s.family == "scipy"]
SCIPY_METHOD = {
    "rk45": "RK45",
    "rk23": "RK23",
    "dop853": "DOP853",
    "radau": "Radau",
    "bdf": "BDF",
    "lsoda": "LSODA",
}
COMPLETE_NFEV = ("rk45", "rk23", "dop853", "lsoda")  # scipy's nfev counts every call


def _nonlinear(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
    return t * x - x**3 * 0.1 - 5 * x


def test_scipy_family_is_covered():
    assert set(SCIPY) == set(SCIPY_METHOD)


@pytest.mark.parametrize("name", COMPLETE_NFEV)
def test_scipy_nfev_matches_wrapper(name):
    counter = CountingVelocity(_nonlinear)
    res = solve(name, counter, torch.ones(2, 3, dtype=torch.float64) * 0.5, rtol=1e-5, atol=1e-5)
    assert counter.nfe == res.solver_nfe


@pytest.mark.parametrize("name", SCIPY)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_scipy_adapter_equals_plain_solve_ivp(name, problem):
    """The network calls and the answer of ``solve_ivp(...).y[:, -1]``, the blog's way, with
    no ``t_eval``: asking for output at t1 costs DOP853 three dense-output calls more."""
    x0 = _x0()
    counter = CountingVelocity(problem.velocity)
    res = solve(name, counter, x0, rtol=1e-5, atol=1e-5)
    calls = []

    def fun(t, y):
        calls.append(t)
        return problem.velocity(torch.from_numpy(y).reshape(1, 3), t).numpy().ravel()

    direct = solve_ivp(
        fun, (0, 1), x0.numpy().ravel(), method=SCIPY_METHOD[name], rtol=1e-5, atol=1e-5
    )
    assert counter.nfe == len(calls)
    np.testing.assert_array_equal(res.x.numpy().ravel(), direct.y[:, -1])
    if name in COMPLETE_NFEV:
        assert res.solver_nfe == direct.nfev


def test_dop853_output_at_t1_would_cost_three_calls():
    """What the old adapter did: t_eval=[t1] builds DOP853's dense output (3 more calls)."""
    y0 = np.ones(3)
    plain = solve_ivp(lambda t, y: -y, (0, 1), y0, method="DOP853", rtol=1e-5, atol=1e-5)
    evald = solve_ivp(
        lambda t, y: -y, (0, 1), y0, method="DOP853", rtol=1e-5, atol=1e-5, t_eval=[1.0]
    )
    assert evald.nfev == plain.nfev + 3
    counter = CountingVelocity(lambda x, t: -x)
    solve("dop853", counter, torch.ones(1, 3, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert counter.nfe == plain.nfev


@pytest.mark.parametrize("name", ["radau", "bdf"])
def test_implicit_scipy_methods_report_no_solver_count(name):
    """Radau's and BDF's finite-difference Jacobians re-evaluate columns whose difference was
    too small, which scipy does not count: on a constant field the wrapper sees more calls
    than nfev + n per Jacobian. No count is better than a wrong one."""
    counter = CountingVelocity(lambda x, t: torch.ones_like(x))
    x0 = torch.zeros(1, 3, dtype=torch.float64)
    res = solve(name, counter, x0, rtol=1e-5, atol=1e-5)
    assert res.solver_nfe is None
    nfev, njev = (int(v.split("=")[1]) for v in res.message.split()[:2])
    assert counter.nfe > nfev + 3 * njev


@pytest.mark.parametrize("name", [n for n, s in SOLVERS.items() if s.family == "torchdiffeq"])
def test_torchdiffeq_step_accounting_matches_wrapper(name):
    """torchdiffeq keeps no counter; its accept/reject callbacks give 2 + stages x attempts."""
    counter = CountingVelocity(lambda x, t: t.view(-1, 1) * x - x**3 * 0.1)
    res = solve(name, counter, torch.ones(2, 3, dtype=torch.float64) * 0.5, rtol=1e-6, atol=1e-6)
    assert res.solver_nfe == counter.nfe
    assert "rejected" in res.message


def test_rk45_wrapper_equals_direct_scipy_call():
    """The adapter runs exactly the solve the blog runs: same nfev, same answer."""
    velocity = lambda x, t: torch.sin(3 * t).view(-1, 1) * x  # noqa: E731
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    counter = CountingVelocity(velocity)
    res = solve("rk45", counter, x0, rtol=1e-5, atol=1e-5)
    direct = solve_ivp(
        lambda t, y: np.sin(3 * t) * y,
        (0, 1),
        x0.numpy().ravel(),
        method="RK45",
        rtol=1e-5,
        atol=1e-5,
    )
    assert counter.nfe == direct.nfev
    np.testing.assert_allclose(res.x.numpy().ravel(), direct.y[:, -1], rtol=1e-12)


def test_unknown_solver_lists_choices():
    with pytest.raises(UserError, match="choose from: euler"):
        get_solver("ddim")


def test_missing_options_are_errors():
    with pytest.raises(ValueError, match="steps"):
        solve("euler", lambda x, t: x, torch.ones(1))
    with pytest.raises(ValueError, match="rtol"):
        solve("rk45", lambda x, t: x, torch.ones(1))


def test_integrating_backwards_inverts():
    """Encoding runs from t=1 to t=0; a high-order solve comes back to x0."""
    problem = PROBLEMS[2]
    x0 = _x0()
    x1 = solve("rk4", problem.velocity, x0, steps=64).x
    back = solve("rk4", problem.velocity, x1, steps=64, t0=1.0, t1=0.0).x
    assert (back - x0).abs().max().item() < 1e-8


@pytest.mark.parametrize("grid", list(GRIDS))
def test_time_grids(grid):
    ts = time_grid(8, 0.0, 1.0, grid)
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == 9
    assert (ts.diff() > 0).all()
    back = time_grid(8, 1.0, 0.0, grid)
    assert torch.equal(back, ts.flip(0))  # dense at the same end of absolute time


def test_non_uniform_grids_concentrate_where_named():
    first = {g: time_grid(8, grid=g)[1].item() for g in GRIDS}
    last = {g: 1 - time_grid(8, grid=g)[-2].item() for g in GRIDS}
    assert first["dense-noise"] < first["uniform"] and first["cosine"] < first["uniform"]
    assert last["dense-data"] < last["uniform"] and last["cosine"] < last["uniform"]


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_every_grid_converges_at_the_method_order(grid, name, order):
    problem = PROBLEMS[2]
    x0 = _x0()
    errs = [
        (solve(name, problem.velocity, x0, steps=n, grid=grid).x - problem.exact(x0, 1.0))
        .abs()
        .max()
        .item()
        for n in (32, 64)
    ]
    assert abs(math.log2(errs[0] / errs[1]) - order) < 0.25


def test_unknown_grid_and_grid_on_adaptive_solver_are_errors():
    with pytest.raises(UserError, match="choose from: uniform"):
        solve("euler", lambda x, t: x, torch.ones(1), steps=2, grid="log")
    with pytest.raises(ValueError, match="fixed-step"):
        solve("rk45", lambda x, t: x, torch.ones(1), rtol=1e-3, atol=1e-3, grid="cosine")
