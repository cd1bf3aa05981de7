"""Multistep solvers: one network call per step, earlier calls reused.

- ``ab2``, ``ab3``, ``ab4``: Adams-Bashforth of order k on any time grid. Each step
  integrates the polynomial through the last k velocities (variable-step coefficients,
  computed from the grid), so uneven schedules keep the method's order. The first steps
  have fewer earlier calls and run at lower order (1, 2, ..., as iPNDM starts), which
  makes the global error of k >= 3 second order on a general problem: the first Euler
  step's O(h^2) error stays. Where the velocity's first derivatives vanish at the start,
  the order is k (tests/test_solvers.py shows both).
- ``dpmpp-2m``, ``dpmpp-3m``: DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast
  Solver for Guided Sampling of Diffusion Probabilistic Models", Alg. 2) in flow form, and
- ``unipc-bh1``, ``unipc-bh2``: UniPC of order 2, predictor and corrector (Zhao et al.
  2023, "UniPC: A Unified Predictor-Corrector Framework"), B(h) = h or e^h - 1.

Flow form, in rfbench's time (0 = noise, 1 = data): x_t = alpha_t x1 + sigma_t x0 with
alpha_t = t and sigma_t = 1 - t; the data prediction of velocity v at (x, t) is
x_hat = x + (1 - t) v, and lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t)). These
solvers integrate the exact variation-of-constants formula in lambda with x_hat
interpolated; their first-order step is Euler's step exactly ((1 - t') x + (t' - t)
x_hat) / (1 - t) = x + (t' - t) v), which is how it is computed, so that it needs no
division by sigma.

The ends of [0, 1] have lambda = -inf (t = 0) and +inf (t = 1). A step from or to either
end is the first-order step: its limit is well defined, while every higher-order term
either vanishes in the limit (earlier calls at lambda = -inf carry no weight) or diverges
(the last step into sigma = 0). Calls at an end are therefore never used as history. So
on the usual grid from 0 to 1, the first step and the last are Euler steps, and DPM-Solver++
2M equals Euler at 2 steps. UniPC corrects each step with the call the next step makes
anyway; the last step has no corrector (it would need one more call), so every solver
here makes exactly one call per step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rfbench.solvers.base import SolveResult, SolverSpec, Velocity, register_solver

# Section: Adams-Bashforth.


def ab_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights w_j with sum_j w_j f(nodes[j]) = integral from a to b of the polynomial
    through (nodes[j], f(nodes[j])): exact for polynomials of degree < len(nodes)."""
    scale = b - a
    u = [(t - a) / scale for t in nodes]  # the step is [0, 1] in u
    weights = []
    for j, uj in enumerate(u):
        basis = np.polynomial.Polynomial([1.0])
        for m, um in enumerate(u):
            if m != j:
                basis = basis * np.polynomial.Polynomial([-um, 1.0]) / (uj - um)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)) * scale)
    return weights


def _adams(order: int):
    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        from rfbench.solvers.fixed import setting_grid

        ts = [float(t) for t in setting_grid(setting, t0, t1)]
        x, vs, path = x0, [], _Path(x0)
        for n in range(len(ts) - 1):
            vs.append(velocity(x, ts[n]))
            k = min(order, n + 1)
            nodes = ts[n - k + 1 : n + 1]
            ws = ab_coefficients(nodes, ts[n], ts[n + 1])
            x_next = x + sum(w * v for w, v in zip(ws, vs[-k:]))
            path.step(x, x_next, ts[n + 1] - ts[n])
            x = x_next
            if len(vs) > order:
                vs.pop(0)
        return SolveResult(x, path=path.result())

    solve.__name__ = f"solve_ab{order}"
    return solve


# Section: DPM-Solver++ and UniPC in flow form.


def _lam(t: float) -> float:
    """lambda_t = log(t / (1 - t)); infinite at the ends."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


class _Path:
    """The discrete path's statistics from its steps: per sample, the integral of the mean
    squared velocity taken as each step's displacement over its length (sum of
    mean(dx^2) / |h|), and the path length (sum of |dx|). Along any path these give
    straightness >= 0 (Jensen) and curvature >= 0 (the triangle inequality); for Euler's
    steps they are exactly what the calls give."""

    def __init__(self, x0: torch.Tensor):
        samples = x0.shape[0] if x0.dim() > 1 else 1  # a state of one dimension is one sample
        self.sq = torch.zeros(samples, dtype=torch.float64, device=x0.device)
        self.length = torch.zeros_like(self.sq)

    def step(self, before: torch.Tensor, after: torch.Tensor, h: float) -> None:
        d = (after - before).detach().double().reshape(len(self.sq), -1)
        self.sq += d.pow(2).mean(1) / abs(h)
        self.length += d.norm(dim=1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sq.cpu(), self.length.cpu()


def _interior(t: float) -> bool:
    return 0.0 < t < 1.0


# An earlier call is used only while the step it reaches back over is at least half the
# new step in lambda (r >= 1/2). Near t = 1 a step of ordinary length in t is long in
# lambda (to t_end = 1 - 1e-6 from 0.875: 11.9 against 0.76 before it), and the higher-order
# terms, which divide by r, would extrapolate the data prediction far outside where it was
# seen; such a step is first order instead, as a step into t = 1 is.
MIN_RATIO = 0.5


def _reach(history, s: float, t: float, most: int) -> list:
    """The earlier calls a step from s to t may use: at most ``most``, the most recent
    first, each one's lambda-gap to the next at least MIN_RATIO of the step's."""
    h = _lam(t) - _lam(s)
    used, newer = [], s
    for p, x_hat_p in reversed(history[-most:] if most else []):
        if (_lam(newer) - _lam(p)) / h < MIN_RATIO:
            break
        used.insert(0, (p, x_hat_p))
        newer = p
    return used


def _euler_form(x: torch.Tensor, v: torch.Tensor, s: float, t: float) -> torch.Tensor:
    """The first-order exponential step from s to t: Euler's step, exactly."""
    return x + (t - s) * v


def _first_order(x, x_hat, v, s: float, t: float) -> torch.Tensor:
    """The first-order step where x_hat may come from another x than this one (UniPC's
    corrected x, with the call made at the uncorrected one): sigma_t/sigma_s x +
    (1 - sigma_t/sigma_s) x_hat, which is Euler's step when x_hat = x + (1 - s) v."""
    if s >= 1.0:  # sigma_s = 0: x_hat is x itself; the limit is Euler's step
        return x + (t - s) * v
    return x + ((t - s) / (1 - s)) * (x_hat - x)


def _dpmpp(order: int):
    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        from rfbench.solvers.fixed import setting_grid

        ts = [float(t) for t in setting_grid(setting, t0, t1)]
        x, path = x0, _Path(x0)
        history: list[tuple[float, torch.Tensor]] = []  # (t, x_hat) at interior times
        for n in range(len(ts) - 1):
            s, t = ts[n], ts[n + 1]
            v = velocity(x, s)
            x_hat = x + (1 - s) * v
            inside = _interior(s) and _interior(t)
            usable = _reach(history, s, t, order - 1) if inside else []
            before = x
            x = _dpmpp_step(x, x_hat, s, t, usable) if usable else _euler_form(x, v, s, t)
            path.step(before, x, t - s)
            if _interior(s):
                history.append((s, x_hat))
                history = history[-(order - 1) :] if order > 1 else []
        return SolveResult(x, path=path.result())

    solve.__name__ = f"solve_dpmpp_{order}m"
    return solve


def _dpmpp_step(x, x_hat, s: float, t: float, usable) -> torch.Tensor:
    """DPM-Solver++ multistep step of order 1 + len(usable) (2 or 3), data prediction."""
    lam_s, lam_t = _lam(s), _lam(t)
    h = lam_t - lam_s
    alpha_t, ratio = t, (1 - t) / (1 - s)  # sigma_t / sigma_s
    phi_1 = math.expm1(-h)
    first = ratio * x - alpha_t * phi_1 * x_hat
    p, x_hat_p = usable[-1]
    r0 = (lam_s - _lam(p)) / h
    d1_0 = (x_hat - x_hat_p) / r0
    if len(usable) == 1:
        return first - 0.5 * alpha_t * phi_1 * d1_0
    q, x_hat_q = usable[-2]
    r1 = (_lam(p) - _lam(q)) / h
    d1_1 = (x_hat_p - x_hat_q) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    return first + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2


def _unipc(variant: str):
    """UniPC of order 2: the predictor UniP-2 and the corrector UniC (order 3 where both
    run), data prediction, B(h) = h (bh1) or e^h - 1 (bh2)."""

    def solve(
        velocity: Velocity, x0: torch.Tensor, setting, *, t0: float = 0.0, t1: float = 1.0
    ) -> SolveResult:
        from rfbench.solvers.fixed import setting_grid

        ts = [float(t) for t in setting_grid(setting, t0, t1)]
        x, path = x0, _Path(x0)
        prev = None  # the previous step: (s, x at s, x_hat at s, history used)
        history: list[tuple[float, torch.Tensor]] = []  # (t, x_hat) at interior times
        for n in range(len(ts) - 1):
            s, t = ts[n], ts[n + 1]
            v = velocity(x, s)
            x_hat = x + (1 - s) * v
            if prev is not None:  # UniC: correct the step just made with this call
                ps, px, px_hat, pused = prev
                if _interior(ps) and _interior(s):
                    x = _unic(px, px_hat, ps, s, pused, x_hat, variant)
                path.step(px, x, s - ps)  # the step as corrected: the path's own
            used = _reach(history, s, t, 1) if _interior(s) and _interior(t) else []
            if not used:
                x_next = _first_order(x, x_hat, v, s, t)
            else:
                x_next = _unip(x, x_hat, s, t, used, variant)
            prev = (s, x, x_hat, used)
            if _interior(s):
                history = [*history, (s, x_hat)][-1:]
            x = x_next
        path.step(prev[1], x, ts[-1] - prev[0])  # the last step, never corrected
        return SolveResult(x, path=path.result())

    solve.__name__ = f"solve_unipc_{variant}"
    return solve


def _unipc_terms(s: float, t: float, variant: str):
    h = _lam(t) - _lam(s)
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    # b_k = h_phi_{k+1} * k! / B(h), k = 1, 2: h_phi_2 = h_phi_1 / hh - 1, then / hh - 1/2
    h_phi_2 = h_phi_1 / hh - 1
    h_phi_3 = h_phi_2 / hh - 0.5
    return h, h_phi_1, b_h, (h_phi_2 / b_h, h_phi_3 * 2 / b_h)


def _unip(x, x_hat, s, t, used, variant) -> torch.Tensor:
    """UniP-2: x_t = sigma_t/sigma_s x - alpha_t h_phi_1 x_hat - alpha_t B(h) rho D1,
    rho = 1/2 (its order-2 coefficient)."""
    h, h_phi_1, b_h, _ = _unipc_terms(s, t, variant)
    p, x_hat_p = used[-1]
    rk = (_lam(p) - _lam(s)) / h
    d1 = (x_hat_p - x_hat) / rk
    base = (1 - t) / (1 - s) * x - t * h_phi_1 * x_hat
    return base - t * b_h * 0.5 * d1


def _unic(x, x_hat, s, t, used, x_hat_t, variant) -> torch.Tensor:
    """UniC for the step from s to t, with the data prediction at t (x_hat_t, from the
    call at the uncorrected x_t): one order above the predictor it corrects."""
    h, h_phi_1, b_h, b = _unipc_terms(s, t, variant)
    base = (1 - t) / (1 - s) * x - t * h_phi_1 * x_hat
    d1_t = x_hat_t - x_hat
    if not used:  # order 1: rho_c = 1/2
        return base - t * b_h * 0.5 * d1_t
    p, x_hat_p = used[-1]
    rk = (_lam(p) - _lam(s)) / h
    d1 = (x_hat_p - x_hat) / rk
    rows = np.array([[1.0, 1.0], [rk, 1.0]])
    rho = np.linalg.solve(rows, np.array(b))
    return base - t * b_h * (rho[0] * d1 + rho[1] * d1_t)


_DESCRIPTIONS = {
    "ab2": "Adams-Bashforth 2-step (variable step), order 2",
    "ab3": "Adams-Bashforth 3-step (variable step), order 3; 2 with its Euler start",
    "ab4": "Adams-Bashforth 4-step (variable step), order 4; 2 with its Euler start",
    "dpmpp-2m": "DPM-Solver++ 2M, flow form; Euler first and last steps",
    "dpmpp-3m": "DPM-Solver++ 3M as published, flow form: its D2 weight leaves it order 2",
    "unipc-bh1": "UniPC-2 predictor-corrector (order 3), B(h) = h; Euler first and last steps",
    "unipc-bh2": "UniPC-2 predictor-corrector (order 3), B(h) = e^h - 1; Euler first/last steps",
}
ORDERS = {
    "ab2": 2,
    "ab3": 3,
    "ab4": 4,
    "dpmpp-2m": 2,
    "dpmpp-3m": 2,
    "unipc-bh1": 3,
    "unipc-bh2": 3,
}
_FNS = {
    "ab2": _adams(2),
    "ab3": _adams(3),
    "ab4": _adams(4),
    "dpmpp-2m": _dpmpp(2),
    "dpmpp-3m": _dpmpp(3),
    "unipc-bh1": _unipc("bh1"),
    "unipc-bh2": _unipc("bh2"),
}
for _name, _fn in _FNS.items():
    register_solver(
        SolverSpec(
            name=_name,
            family="multistep",
            fn=_fn,
            adaptive=False,
            description=_DESCRIPTIONS[_name],
            nfe_per_step=1,
            order=ORDERS[_name],
            multistep=True,
        )
    )
