"""``rk45-torch``: scipy's RK45 step control, in torch on the state's device.

Dormand-Prince 5(4) (Dormand & Prince 1980) with scipy's ``RK45`` control, step for step:
its initial step selection (Hairer, Norsett & Wanner, Vol. I, II.4, as
``scipy.integrate._ivp.common.select_initial_step`` computes it), its error norm (RMS over
elements of the error scaled by atol + rtol max(|y|, |y_new|)), its safety factor 0.9
and step-factor bounds 0.2 and 10, no increase right after a rejection, and its minimum
step. The state is held in float64 on the device of x0, as scipy holds it on the host,
and the network is called in x0's dtype; so on the same flattened batch it takes scipy's
steps (the same nfev) and ends where scipy ends, to round-off, without copying the state
to the host at every call. What is left between the two is the round trip, not the
method.

One stepper, ``_solve_rows``, runs that control for every row of a [B, D] state at once:
each row keeps its own t, step size and error norm, every step attempt is one call per
stage over the rows still running (t a [B] vector), acceptance is per row, and finished
rows leave. ``solve_rk45_torch`` (batched) gives it the whole batch flattened into one
row; ``solve_rk45_torch_per_sample`` gives it one row per sample, so each sample takes
the steps it would take alone.
"""

from __future__ import annotations

import math
import sys
import warnings

import torch

from rfbench.solvers.base import SolveResult, SolverFailed, SolverSpec, Velocity, register_solver

# Dormand-Prince 5(4): nodes, stage matrix, 5th-order weights, and the error weights of
# the embedded 4th-order solution (the last one for the extra call at the new point).
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
ERROR_ORDER = 4
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
MIN_RTOL = 100 * sys.float_info.epsilon  # scipy's floor on rtol


def _tolerances(setting) -> tuple[float, float]:
    """rtol and atol as scipy's validate_tol leaves them: rtol at least 100 machine
    epsilons (with scipy's warning), so that tiny tolerances take scipy's steps too."""
    rtol = setting.rtol
    if rtol < MIN_RTOL:
        warnings.warn(f"rtol too small, setting to {MIN_RTOL}", stacklevel=3)
        rtol = MIN_RTOL
    return rtol, setting.atol


def _rms_rows(x: torch.Tensor) -> torch.Tensor:
    """Per-row RMS of a [B, D] tensor: the error norm of each sample on its own."""
    return torch.linalg.vector_norm(x, dim=1) / math.sqrt(x.shape[1])


def initial_step_rows(fun, t0, y0, f0, t1, direction, rtol, atol) -> torch.Tensor:
    """scipy's select_initial_step (with max_step = inf) for each row of y0 [B, D] at
    once: one network call over all rows."""
    interval = abs(t1 - t0)
    if interval == 0.0:
        return torch.zeros(len(y0), dtype=y0.dtype, device=y0.device)
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms_rows(y0 / scale), _rms_rows(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).clamp(max=interval)
    f1 = fun(None, t0 + h0 * direction, y0 + (h0 * direction)[:, None] * f0)
    d2 = _rms_rows((f1 - f0) / scale) / h0
    flat = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(
        flat,
        (h0 * 1e-3).clamp(min=1e-6),
        (0.01 / torch.maximum(d1, d2)) ** (1 / (ERROR_ORDER + 1)),
    )
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, interval))


def _solve_rows(fun, y: torch.Tensor, rtol: float, atol: float, t0: float, t1: float) -> None:
    """scipy's RK45 control for every row of the float64 state y [B, D] at once, in place.

    ``fun(rows, t, y)`` is the velocity of the rows still running (``rows`` their indices,
    None for all) at their own times t [b]. Each row keeps its own t, step size, error norm
    and rejection state; every step attempt is one call per stage over the running rows,
    acceptance is per row, and rows at t1 leave. A row takes the steps it would take
    alone, and a single row is scipy's solve of that state."""
    n, f64 = len(y), dict(dtype=torch.float64, device=y.device)
    direction = 1.0 if t1 >= t0 else -1.0
    t = torch.full((n,), float(t0), **f64)
    f = fun(None, t, y)
    h_abs = initial_step_rows(fun, float(t0), y, f, t1, direction, rtol, atol)
    exponent = -1 / (ERROR_ORDER + 1)
    fresh = torch.ones(n, dtype=torch.bool, device=y.device)  # starting a new step
    rejected = torch.zeros(n, dtype=torch.bool, device=y.device)  # its last attempt failed
    running = torch.arange(n, device=y.device)  # the rows not yet at t1
    toward = torch.full((n,), direction * math.inf, **f64)
    while len(running):
        tr, hr = t[running], h_abs[running]
        min_step = 10 * (torch.nextafter(tr, toward[: len(running)]) - tr).abs()
        hr = torch.where(fresh[running], torch.maximum(hr, min_step), hr)
        if bool((hr < min_step).any()):
            raise SolverFailed(
                "rk45-torch: required step size is less than spacing between numbers"
            )
        t_new = tr + hr * direction
        t_new = torch.where(direction * (t_new - t1) > 0, torch.full_like(t_new, t1), t_new)
        h = t_new - tr
        hr = h.abs()
        yr = y[running]
        ks = [f[running]]
        rows = None if len(running) == n else running
        for c, a in zip(C[1:], A[1:]):
            dy = sum(aj * kj for aj, kj in zip(a, ks) if aj) * h[:, None]
            ks.append(fun(rows, tr + c * h, yr + dy))
        y_new = yr + h[:, None] * sum(bj * kj for bj, kj in zip(B, ks) if bj)
        f_new = fun(rows, tr + h, y_new)
        ks.append(f_new)
        scale = atol + torch.maximum(yr.abs(), y_new.abs()) * rtol
        error = sum(ej * kj for ej, kj in zip(E, ks) if ej) * h[:, None]
        norm = _rms_rows(error / scale)
        accept = norm < 1
        grow = torch.where(norm == 0, MAX_FACTOR, (SAFETY * norm**exponent).clamp(max=MAX_FACTOR))
        grow = torch.where(rejected[running], grow.clamp(max=1.0), grow)
        shrink = SAFETY * norm**exponent  # scipy's max(MIN_FACTOR, .): NaN gives MIN_FACTOR
        shrink = torch.where(shrink > MIN_FACTOR, shrink, MIN_FACTOR)
        h_abs[running] = hr * torch.where(accept, grow, shrink)
        done = running[accept]
        t[done], y[done], f[done] = t_new[accept], y_new[accept], f_new[accept]
        fresh[running], rejected[running] = accept, ~accept
        running = running[direction * (t[running] - t1) < 0]


def solve_rk45_torch(
    velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
) -> SolveResult:
    """Integrate with scipy's RK45 control in torch; the batch is one state (batched): the
    row-wise control on a single row, the whole batch flattened."""
    shape, dtype = x0.shape, x0.dtype
    calls = 0

    def fun(_rows, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        out = velocity(y.reshape(shape).to(dtype), float(t[0]))
        return out.to(torch.float64).reshape(1, -1)

    rtol, atol = _tolerances(setting)
    y = x0.detach().to(torch.float64).reshape(1, -1).clone()
    if y.numel() == 0 or t0 == t1:
        return SolveResult(x0.clone(), solver_nfe=0)
    _solve_rows(fun, y, rtol, atol, t0, t1)
    return SolveResult(y.reshape(shape).to(dtype), solver_nfe=calls, message=f"nfev={calls}")


def solve_rk45_torch_per_sample(
    velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
) -> SolveResult:
    """Integrate every sample of x0 with its own scipy RK45 control, vectorised.

    Each step attempt calls the network once per stage on the samples still running, with
    their own times as a [B] vector; ``velocity`` is told which samples a call carries
    (``rows=``) where it counts them (``sample.CountingVelocity``). The result's
    ``sample_nfe`` is each sample's count of the calls it took part in."""
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    n = shape[0]
    counts = torch.zeros(n, dtype=torch.long, device=device)
    calls = 0
    counts_rows = getattr(velocity, "counts_rows", False)

    def fun(rows: torch.Tensor | None, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if rows is None:
            counts.add_(1)
        else:
            counts[rows] += 1
        x = y.reshape(len(y), *shape[1:]).to(dtype)
        out = velocity(x, t, rows=rows) if counts_rows else velocity(x, t)
        return out.to(torch.float64).flatten(1)

    rtol, atol = _tolerances(setting)
    y = x0.detach().to(torch.float64).reshape(n, -1).clone()
    if y.numel() == 0 or t0 == t1:
        return SolveResult(x0.clone(), solver_nfe=0, sample_nfe=counts)
    _solve_rows(fun, y, rtol, atol, t0, t1)
    return SolveResult(
        y.reshape(shape).to(dtype),
        solver_nfe=calls,
        message=f"{calls} batched calls, nfev per sample {int(counts.min())}..{int(counts.max())}",
        sample_nfe=counts,
    )


register_solver(
    SolverSpec(
        name="rk45-torch",
        family="torch",
        fn=solve_rk45_torch,
        adaptive=True,
        description="Dormand-Prince 5(4) with scipy RK45's step control, in torch on the "
        "device (float64 state)",
        order=5,
        per_sample_fn=solve_rk45_torch_per_sample,
    )
)
