"""The multistep solvers (Adams-Bashforth, DPM-Solver++, UniPC), the time schedules (EDM,
SD3, given times) and the solve interval, against exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from rfbench.errors import UserError
from rfbench.sample import CountingVelocity
from rfbench.solvers import SOLVERS, Setting, solve, time_grid
from rfbench.solvers.fixed import EDM_SIGMA_MAX, EDM_SIGMA_MIN, canonical_grid
from rfbench.solvers.multistep import ab_coefficients

MULTISTEP = [n for n, s in SOLVERS.items() if s.multistep]

# The flow of N(0, 1) noise onto N(M, S^2) data, in rfbench's time: x_t = t M + std_t z,
# std_t^2 = t^2 S^2 + (1 - t)^2, and v(x, t) is affine in x. Exact at every t.
M, S = 0.3, 0.5


def _x(t: float, z: torch.Tensor) -> torch.Tensor:
    return t * M + math.sqrt(t * t * S * S + (1 - t) ** 2) * z


def _v(x: torch.Tensor, t) -> torch.Tensor:
    t = float(t)
    return M + (x - t * M) * (t * S * S - (1 - t)) / (t * t * S * S + (1 - t) ** 2)


def _z() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)


def test_multistep_family_is_registered():
    assert set(MULTISTEP) == {
        "ab2",
        "ab3",
        "ab4",
        "dpmpp-2m",
        "dpmpp-3m",
        "unipc-bh1",
        "unipc-bh2",
    }
    for name in MULTISTEP:
        spec = SOLVERS[name]
        assert spec.nfe_per_step == 1 and not spec.adaptive and spec.family == "multistep"


# The global order each shows on a smooth flow inside (0, 1): the method's own, except
# where the lower-order start-up steps cap it at 2 (AB3, AB4, DPM-Solver++ 3M). UniPC's
# corrector lifts its Euler start to order 2 locally, so it keeps order 3.
EFFECTIVE_ORDER = {
    "ab2": 2,
    "ab3": 2,
    "ab4": 2,
    "dpmpp-2m": 2,
    "dpmpp-3m": 2,
    "unipc-bh1": 3,
    "unipc-bh2": 3,
}


@pytest.mark.parametrize("name", MULTISTEP)
def test_order_on_a_flow_inside_the_interval(name):
    a, b, z = 0.1, 0.9, _z()
    errs = [
        (solve(name, _v, _x(a, z), steps=n, t0=a, t1=b).x - _x(b, z)).abs().max().item()
        for n in (256, 512)
    ]
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - EFFECTIVE_ORDER[name]) < 0.15, f"{name}: order {observed:.3f}"


@pytest.mark.parametrize("name,order", [("ab2", 2), ("ab3", 3), ("ab4", 4)])
def test_adams_bashforth_order_where_the_start_is_exact_enough(name, order):
    """dx/dt = t^4 e^t: its derivatives vanish at t = 0, so the lower-order start-up steps
    are accurate to O(h^5) and the k-step formula's own order shows."""

    def f(x, t):
        return torch.full_like(x, float(t) ** 4 * math.exp(float(t)))

    exact = math.e * (1 - 4 + 12 - 24 + 24) - 24  # the antiderivative at 1 minus at 0
    x0 = torch.zeros(1, dtype=torch.float64)
    errs = [abs(solve(name, f, x0, steps=n).x.item() - exact) for n in (64, 128)]
    assert abs(math.log2(errs[0] / errs[1]) - order) < 0.15


def test_adams_bashforth_coefficients_are_the_classical_ones_on_even_steps():
    # AB4 on a uniform grid: (55, -59, 37, -9) / 24, oldest node last in the classical
    # listing; here nodes come oldest first.
    ws = ab_coefficients([-3.0, -2.0, -1.0, 0.0], 0.0, 1.0)
    np.testing.assert_allclose(ws, [-9 / 24, 37 / 24, -59 / 24, 55 / 24], rtol=1e-12)
    np.testing.assert_allclose(ab_coefficients([-1.0, 0.0], 0.0, 1.0), [-0.5, 1.5])
    # uneven steps: exact for every polynomial of degree < 3
    nodes = [0.0, 0.1, 0.35]
    ws = ab_coefficients(nodes, 0.35, 0.5)
    for p in ([1.0], [0.0, 1.0], [0.2, -1.0, 3.0]):
        poly = np.polynomial.Polynomial(p)
        exact = poly.integ()(0.5) - poly.integ()(0.35)
        assert sum(w * poly(t) for w, t in zip(ws, nodes)) == pytest.approx(exact, abs=1e-14)


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2"])
@pytest.mark.parametrize("grid", ["uniform", "edm", "sd3"])
def test_exact_where_the_data_prediction_is_constant(name, grid):
    """v = (m - x) / (1 - t): every path goes straight to m, and the data prediction
    x + (1 - t) v = m is constant, so the exponential integrators are exact at any step
    count (as is Euler: for a flow, a constant data prediction means straight paths)."""
    m = torch.tensor([[0.7, -1.2, 0.0]], dtype=torch.float64)

    def v(x, t):
        return (m - x) / (1 - float(t))

    for steps in (1, 2, 3, 7):
        x = solve(name, v, _z(), steps=steps, grid=grid).x
        assert (x - m).abs().max().item() < 1e-12


def test_the_first_and_last_steps_are_euler_steps():
    """The first step leaves t = 0 (lambda = -inf), so it is first order and no later step
    uses its call; the last reaches sigma = 0 and is first order too. So DPM-Solver++ 2M
    is Euler's solve up to 3 steps on [0, 1], and first differs at 4."""
    for name in ("dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2", "ab2"):
        x = solve(name, _v, _z(), steps=1).x
        assert torch.equal(x, solve("euler", _v, _z(), steps=1).x), name
    for steps in (2, 3):
        x = solve("dpmpp-2m", _v, _z(), steps=steps).x
        torch.testing.assert_close(x, solve("euler", _v, _z(), steps=steps).x, rtol=0, atol=1e-14)
    x4 = solve("dpmpp-2m", _v, _z(), steps=4).x  # its third step is second order
    assert (x4 - solve("euler", _v, _z(), steps=4).x).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", MULTISTEP)
@pytest.mark.parametrize("grid", ["uniform", "edm-rho7", "sd3-shift3"])
def test_calls_are_made_on_the_schedule(name, grid):
    counter = CountingVelocity(_v, record=True)
    solve(name, counter, _z(), steps=6, grid=grid)
    ts = counter.recorded()[0]
    assert counter.nfe == 6
    torch.testing.assert_close(ts, time_grid(6, grid=grid)[:-1].to(ts.dtype))


@pytest.mark.parametrize("name", ["euler", "heun", "rk4", "ab3", "dpmpp-3m", "unipc-bh2"])
@pytest.mark.parametrize("grid", ["uniform", "dense-noise", "dense-data", "cosine", "edm", "sd3"])
def test_every_schedule_hits_its_ends_and_increases(name, grid):
    for steps in (1, 2, 5, 16):
        ts = time_grid(steps, grid=grid)
        assert len(ts) == steps + 1 and ts[0] == 0.0 and ts[-1] == 1.0
        assert (ts.diff() > 0).all()
        shifted = time_grid(steps, 1e-3, 0.9, grid)
        assert shifted[0] == 1e-3 and shifted[-1] == 0.9 and (shifted.diff() > 0).all()
    counter = CountingVelocity(_v, record=True)
    solve(name, counter, _z(), steps=5, grid=grid)
    calls = set(counter.recorded()[0].tolist())
    assert set(time_grid(5, grid=grid)[:-1].tolist()) <= calls  # each step starts on the grid


def test_edm_and_sd3_schedules_are_their_formulas():
    n, rho = 6, 7.0
    i = np.arange(n)
    sigma = (
        EDM_SIGMA_MAX ** (1 / rho)
        + i / (n - 1) * (EDM_SIGMA_MIN ** (1 / rho) - EDM_SIGMA_MAX ** (1 / rho))
    ) ** rho
    expected = np.concatenate([[0.0], 1 / (1 + sigma[1:]), [1.0]])  # sigma_max -> t = 0
    np.testing.assert_allclose(time_grid(n, grid="edm").numpy(), expected, rtol=1e-13)
    assert canonical_grid("edm") == "edm-rho7" and canonical_grid("edm-rho5.5") == "edm-rho5.5"
    u = np.linspace(0, 1, 9)
    shift = 3.0
    expected = 1 - shift * (1 - u) / (1 + (shift - 1) * (1 - u))
    np.testing.assert_allclose(time_grid(8, grid="sd3").numpy(), expected, atol=1e-15)
    torch.testing.assert_close(time_grid(8, grid="sd3-shift1"), time_grid(8))  # no shift
    assert time_grid(8, grid="sd3-shift3")[1] < time_grid(8)[1]  # shift > 1: dense at noise


@pytest.mark.parametrize(
    "bad", ["edm-rh7", "edm-rho", "edm-rho0", "sd3-shift-1", "sd3-shiftx", "log"]
)
def test_bad_schedule_names_are_one_clear_error(bad):
    with pytest.raises(UserError):
        canonical_grid(bad)
    with pytest.raises(UserError):
        Setting("euler", steps=2, grid=bad)


def test_given_times_are_the_grid_and_set_the_steps():
    times = (0.0, 0.05, 0.3, 0.8, 1.0)
    s = Setting("heun", grid_times=times)
    assert s.steps == 4 and s.grid == "times" and s.columns()["grid_times"] == "0;0.05;0.3;0.8;1"
    assert Setting.from_row({**s.columns(), "seed": 0}).key() == s.key()
    counter = CountingVelocity(_v, record=True)
    x = solve(s, counter, _z()).x
    assert counter.recorded()[0].tolist() == [0.0, 0.05, 0.05, 0.3, 0.3, 0.8, 0.8, 1.0]
    manual = _z()
    for a, b in zip(times, times[1:]):
        manual = solve("heun", _v, manual, steps=1, t0=a, t1=b).x
    torch.testing.assert_close(x, manual, rtol=0, atol=0)
    assert "times" in s.slug() and Setting("heun", grid_times=(0, 0.5, 1)).slug() != s.slug()


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(grid_times=(0.0, 0.5, 0.4, 1.0)), "increase strictly"),
        (dict(grid_times=(0.1, 1.0)), "must run from t-start 0"),
        (dict(grid_times=(0.0, 0.5, 1.0), steps=3), "make 2 steps, not 3"),
        (dict(grid_times=(0.0,)), "at least two"),
        (dict(steps=2, t_start=0.5, t_end=0.5), "must be below"),
        (dict(steps=2, t_end=1.5), "in [0, 1]"),
        (dict(steps=2, grid="times"), "needs its times"),
    ],
)
def test_bad_times_and_intervals_are_one_clear_error(kwargs, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Setting("euler", **kwargs)
    with pytest.raises(UserError, match="fixed-step"):
        Setting("rk45", rtol=1e-3, grid_times=(0.0, 1.0))


def test_t_start_reproduces_the_official_rk45_sampler():
    """The RectifiedFlow repository's RK45 sampler: solve_ivp from eps = 1e-3 to 1 at
    rtol = atol = 1e-5. `--solvers rk45 --tols 1e-5 --t-start 1e-3` is that call."""
    s = Setting("rk45", rtol=1e-5, t_start=1e-3)
    z = _z()
    counter = CountingVelocity(_v, record=True)
    res = solve(s, counter, z)
    direct = solve_ivp(
        lambda t, y: _v(torch.from_numpy(y).reshape(z.shape), t).flatten().numpy(),
        (1e-3, 1.0),
        z.flatten().numpy(),
        method="RK45",
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(res.x.flatten().numpy(), direct.y[:, -1], rtol=0, atol=1e-12)
    assert res.solver_nfe == direct.nfev == counter.nfe
    assert counter.recorded()[0][0].item() == 1e-3
    assert s.label() == "rtol 1e-05 t=0.001..1" and s.columns()["t_start"] == 1e-3


def test_an_interval_applies_to_fixed_step_grids():
    s = Setting("euler", steps=4, grid="sd3", t_start=0.2)
    counter = CountingVelocity(_v, record=True)
    solve(s, counter, _z())
    expected = time_grid(4, 0.2, 1.0, "sd3")[:-1]
    torch.testing.assert_close(counter.recorded()[0], expected.to(torch.float64))


# Section: the command line.

TOY = ["run", "--dataset", "toy2d", "--epochs", "2", "--num-samples", "120", "--batch-size", "60"]


def _run(argv, capsys):
    from rfbench.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_records_schedules_times_and_interval(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "grid"
    argv = [*TOY, "--solvers", "euler,ab3,dpmpp-2m,unipc-bh1,rk45", "--steps", "2,5"]
    argv += ["--grids", "uniform,edm,sd3-shift2", "--tols", "1e-3", "--t-start", "1e-3"]
    code, _, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    frame = pd.read_csv(out / "results.csv")
    fixed = frame[frame.solver != "rk45"]
    assert len(fixed) == 4 * 3 * 2 and (fixed["nfe"] == fixed["steps"]).all()
    assert set(fixed["grid"]) == {"uniform", "edm-rho7", "sd3-shift2"}
    assert (frame["t_start"] == 1e-3).all() and (frame["t_end"] == 1.0).all()
    assert (frame["status"] == "ok").all()
    # one-step solvers' paths are traced; multistep ones cannot be restarted mid-path
    traced = {p.name.split("--")[1].split("-")[0] for p in (out / "trajectories").iterdir()}
    assert traced == {"euler"}
    times = tmp_path / "times.txt"
    times.write_text("0.001 0.1 0.4\n0.8 1\n")
    out2 = tmp_path / "given"
    argv = [*TOY, "--solvers", "heun,unipc-bh2", "--grid-times", str(times), "--t-start", "0.001"]
    code, _, err = _run([*argv, "--out", str(out2)], capsys)
    assert code == 0, err
    rows = pd.read_csv(out2 / "results.csv")
    assert list(rows["grid_times"]) == ["0.001;0.1;0.4;0.8;1"] * 2
    assert list(rows["nfe"]) == [8, 4] and list(rows["steps"]) == [4, 4]
    code, table, err = _run(["report", str(out), "--view", "pivot", "--metric", "swd"], capsys)
    assert code == 0 and "dpmpp-2m" in table, err


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--grids", "edm-rh5"], "edm-rho<value>"),
        (["--grids", "nope"], "unknown time grid"),
        (["--grid-times", "0,0.5,0.4,1"], "increasing"),
        (["--grid-times", "0.1,0.5,1"], "must run from t-start 0"),
        (["--grid-times", "0,0.5,1", "--steps", "2"], "leave out --steps"),
        (["--t-start", "0.5", "--t-end", "0.5"], "must be below"),
        (["--t-start", "2"], "[0, 1]"),
        (["--t-end", "x"], "not a number"),
        (["--grid-times", "/nonexistent/times.txt"], "not numbers"),
    ],
)
def test_bad_schedule_options_are_one_line(extra, needle, tmp_path, capsys):
    out = tmp_path / "bad"
    code, _, err = _run([*TOY, "--solvers", "euler", *extra, "--out", str(out)], capsys)
    assert code == 2
    assert needle in err.strip().splitlines()[-1] and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# Section: what the first review found.


@pytest.mark.parametrize("name", MULTISTEP)
def test_path_statistics_are_those_of_the_discrete_path(name):
    """A straight path has straightness 0 and curvature 0; any path has both >= 0 (they
    come from the steps' displacements, not from call weights, which for AB4 are
    negative and for the exponential integrators no quadrature at all)."""
    from rfbench.sample import path_statistics

    c = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    for velocity, straight in ((lambda x, t: c.expand_as(x), True), (_v, False)):
        counter = CountingVelocity(velocity, record=True)
        x0 = _z()
        for steps in (3, 4, 8):
            res = solve(name, counter, x0, steps=steps)
            stats = path_statistics(counter.recorded(), res.weights, x0, res.x, (0, 1), res.path)
            s, k = stats.straightness.item(), stats.curvature.item()
            if straight:
                assert abs(s) < 1e-12 and abs(k) < 1e-12, (steps, s, k)
            else:
                assert s >= 0 and k >= 0, (steps, s, k)


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2"])
def test_an_end_just_below_one_is_as_good_as_one(name):
    """A last step long in lambda (to 1 - 1e-6 from 0.875) is first order, as one into
    t = 1 is: the error does not jump as t_end approaches 1."""
    z = _z()
    at_one = (solve(name, _v, z, steps=8).x - _x(1.0, z)).abs().max().item()
    for end in (0.999, 1 - 1e-6):
        err = (solve(name, _v, z, steps=8, t1=end).x - _x(end, z)).abs().max().item()
        assert err < 1.2 * at_one + 1e-3, (end, err, at_one)


@pytest.mark.parametrize("grid", ["edm-rho1e20", "sd3-shift1e20", "sd3-shift1e-20", "edm-rho0.001"])
def test_degenerate_schedule_parameters_are_refused(grid):
    with pytest.raises(UserError, match="steps of length 0 or non-finite"):
        Setting("euler", steps=4, grid=grid)


def test_schedule_parameters_are_kept_unrounded():
    assert canonical_grid("edm-rho7.1234567") == "edm-rho7.1234567"
    assert Setting("euler", steps=3, grid="sd3-shift2.75").grid == "sd3-shift2.75"


def _local_error(order: int, h: float) -> float:
    """One DPM-Solver++ step of the given order from exact states and data predictions."""
    from rfbench.solvers.multistep import _dpmpp_step

    z = torch.tensor([1.0], dtype=torch.float64)

    def x_hat(t):
        x = _x(t, z)
        return x + (1 - t) * _v(x, t)

    s = 0.4
    history = [(s - h * (j + 1), x_hat(s - h * (j + 1))) for j in range(order - 1)][::-1]
    x = _dpmpp_step(_x(s, z), x_hat(s), s, s + h, history)
    return (x - _x(s + h, z)).abs().item()


def test_dpmpp_local_errors():
    """2M's local error is O(h^3) (falls 8x per halving). 3M, as published and as the
    reference implementations compute it, weights its second difference D2 by phi_3,
    half of what a Taylor expansion of the data prediction in lambda gives; its local
    error is then O(h^3) too, with a smaller constant than 2M's."""
    for order in (2, 3):
        errs = [_local_error(order, h) for h in (0.02, 0.01, 0.005)]
        ratios = [a / b for a, b in zip(errs, errs[1:])]
        assert all(7.0 < r < 9.0 for r in ratios), (order, ratios)
    assert _local_error(3, 0.01) < 0.5 * _local_error(2, 0.01)


def test_unipc_variants_differ():
    a = solve("unipc-bh1", _v, _z(), steps=6).x
    b = solve("unipc-bh2", _v, _z(), steps=6).x
    assert (a - b).abs().max().item() > 1e-4


def test_a_run_made_before_these_columns_resumes(tmp_path, capsys):
    """A run directory written before grid_times, t_start and t_end existed (neither in
    config.json nor in results.csv) resumes: they read as their defaults."""
    import json

    import pandas as pd

    out = tmp_path / "old"
    argv = [*TOY, "--solvers", "euler", "--steps", "1,2", "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    config = json.loads((out / "config.json").read_text())
    for key in ("grid_times", "t_start", "t_end", "reference_stats", "save_samples"):
        config.pop(key)
    (out / "config.json").write_text(json.dumps(config))
    frame = pd.read_csv(out / "results.csv").drop(
        columns=["grid_times", "t_start", "t_end"], errors="ignore"
    )
    frame.iloc[:1].to_csv(out / "results.csv", index=False)
    code, _, err = _run([*argv, "--resume"], capsys)
    assert code == 0, err
    assert "retrying" not in err
    assert len(pd.read_csv(out / "results.csv")) == 2  # the old row kept, one cell added
