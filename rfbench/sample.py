"""Sampling: the NFE-counting wrapper, per-sample seeded noise, and timed batched solves.

Measurement rules (docs/design.md, "Measurement rules"):
- NFE is counted by ``CountingVelocity`` around the network, never inferred from a formula.
- Sample i always starts from the same noise, a function of (seed, i) only.
- Wall time is ``perf_counter`` around each whole solve, synchronised on CUDA; the network
  forwards are timed separately, so overhead = wall - model time. rfbench's own
  bookkeeping during a solve (the path statistics) is timed apart and taken out of the
  wall time, so the overhead is the solver's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rfbench.flow import T_DATA, T_NOISE
from rfbench.solvers import get_solver, solve
from rfbench.solvers.fixed import time_grid


class NFEBudgetExceeded(RuntimeError):
    """A solve asked for more network evaluations than its max_nfe guard allows."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class CountingVelocity:
    """v(x, t) around a network: counts every forward call and times it.

    ``t`` may be a float or a 0-dim tensor; the network receives it as a [B] tensor in
    x's dtype. Calls beyond ``max_nfe`` raise NFEBudgetExceeded. With ``record=True`` it
    also keeps, per call, t and each sample's mean squared velocity and velocity norm: 2B
    numbers a call, all that straightness and curvature need (never the states themselves).
    They go into one buffer that doubles when full: many small tensors kept alive between
    the network's large buffers would fragment the heap (measured in
    results/solve-memory.md). The recording is timed on its own (``record_time_s``): it
    starts after the forward's closing synchronisation and ends with one more on CUDA, so
    neither the model time nor the solver's overhead holds it.
    """

    def __init__(self, model: nn.Module, max_nfe: int | None = None, record: bool = False):
        self.model, self.max_nfe, self.record = model, max_nfe, record
        self.nfe, self.model_time_s, self.record_time_s = 0, 0.0, 0.0
        self._times: list[float] = []
        self._stats: torch.Tensor | None = None  # [capacity, 2, B] float64
        self._device: torch.device | None = None
        self._sync: Callable[[], None] = lambda: None

    def reset(self) -> None:
        self.nfe, self.model_time_s, self.record_time_s, self._times = 0, 0.0, 0.0, []

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t [calls], mean squared velocity [calls, B], velocity norm [calls, B]) on the CPU."""
        k = len(self._times)
        stats = self._stats[:k].cpu()
        return torch.tensor(self._times, dtype=torch.float64), stats[:, 0], stats[:, 1]

    def _record(self, t: float, out: torch.Tensor) -> None:
        flat = out.detach().flatten(1).double()
        k = len(self._times)
        if self._stats is None or self._stats.shape[2] != len(flat) or k == len(self._stats):
            grown = torch.empty(
                max(64, 2 * k), 2, len(flat), dtype=torch.float64, device=flat.device
            )
            if k:
                grown[:k] = self._stats[:k]
            self._stats = grown
        self._stats[k, 0] = flat.pow(2).mean(1)
        self._stats[k, 1] = flat.norm(dim=1)
        self._times.append(t)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise NFEBudgetExceeded(f"more than max_nfe={self.max_nfe} network evaluations")
        if self._device != x.device:
            self._device, self._sync = x.device, synchronizer(x.device)
        self.nfe += 1
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(()).expand(x.shape[0])
        self._sync()
        start = time.perf_counter()
        out = self.model(x, tb)
        self._sync()
        stop = time.perf_counter()
        self.model_time_s += stop - start
        if self.record:
            self._record(float(t), out)
            self._sync()
            self.record_time_s += time.perf_counter() - stop
        return out


@dataclass
class PathStats:
    """Per-sample statistics of solved paths, from the recorded calls alone."""

    straightness: torch.Tensor  # S = int |(X1 - X0) - v|^2 dt (Liu et al. 2023)
    curvature: torch.Tensor  # arc-chord excess: int |v| dt / |X1 - X0| - 1 (0 for a line)


def path_statistics(
    recorded: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: list[float] | None,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t_span: tuple[float, float] = (0.0, 1.0),
) -> PathStats:
    """Straightness and curvature of each sample's solved path X_t, t in t_span, from
    ``CountingVelocity.recorded()``.

    Along a solution, int v dt = X1 - X0, so S = int |v|^2 dt - |X1 - X0|^2 (squared norms
    as means over elements), and the path length is int |v| dt (Euclidean norms). Integrals
    use the solver's own quadrature ``weights`` (one per call) where it has them, which
    makes both exact for the discrete fixed-step path; otherwise the trapezoid rule over
    the calls sorted by t, clipped to ``t_span`` (an estimate for adaptive solvers, whose
    rejected-step and overshooting calls lie near the path). Both are integrals over
    absolute time: a backward solve (t from 1 to 0) has negative steps, and its weights
    count by their size.
    """
    ts, sq, norm = recorded  # [calls], [calls, B], [calls, B]

    def integral(q: torch.Tensor) -> torch.Tensor:
        if weights is not None:
            return (torch.tensor(weights, dtype=q.dtype).abs()[:, None] * q).sum(0)
        return _trapezoid_on(ts, q, min(t_span), max(t_span))

    d = (x1 - x0).detach().flatten(1).double().cpu()
    chord = d.norm(dim=1)
    curvature = torch.where(chord > 0, integral(norm) / chord - 1, torch.nan)
    return PathStats(integral(sq) - d.pow(2).mean(1), curvature)


def _trapezoid_on(ts: torch.Tensor, q: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Trapezoid integral over [lo, hi] of samples q[k] at times ts[k] (any order, repeats
    averaged), linearly interpolated at the ends."""
    tu, inverse = torch.unique(ts, return_inverse=True)  # sorted
    counts = torch.zeros(len(tu), dtype=q.dtype, device=q.device).index_add_(
        0, inverse, torch.ones_like(ts)
    )
    qu = torch.zeros(len(tu), q.shape[1], dtype=q.dtype, device=q.device).index_add_(0, inverse, q)
    qu = qu / counts[:, None]
    if len(tu) == 1:
        return qu[0] * (hi - lo)

    def at(p: float) -> torch.Tensor:
        i = int(torch.searchsorted(tu, torch.tensor(p, dtype=tu.dtype)).clamp(1, len(tu) - 1))
        w = float(((p - tu[i - 1]) / (tu[i] - tu[i - 1])).clamp(0, 1))
        return qu[i - 1] * (1 - w) + qu[i] * w

    inside = (tu > lo) & (tu < hi)
    grid = torch.cat([tu.new_tensor([lo]), tu[inside], tu.new_tensor([hi])])
    values = torch.cat([at(lo)[None], qu[inside], at(hi)[None]])
    return torch.trapezoid(values, grid, dim=0)


# Named noise streams. "samples" is what every evaluation draws from; "pairs" is what
# reflow's training pairs start from. Streams are told apart by numpy's SeedSequence spawn
# key, so no evaluation sample ever starts from a training pair's noise, whatever the seeds.
NOISE_STREAMS: dict[str, tuple[int, ...]] = {"samples": (), "pairs": (1,)}


def sample_seed(seed: int, index: int, stream: str = "samples") -> int:
    """A 63-bit generator seed for sample ``index`` of run seed ``seed`` in ``stream``
    (numpy SeedSequence)."""
    sequence = np.random.SeedSequence([seed, index], spawn_key=NOISE_STREAMS[stream])
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)


def noise(
    seed: int, indices: Sequence[int], shape: tuple[int, ...], stream: str = "samples"
) -> torch.Tensor:
    """x0 ~ N(0, I) for the given sample indices; row j depends only on (stream, seed,
    indices[j]). Evaluation uses the "samples" stream; reflow's pairs the "pairs" stream."""
    if stream not in NOISE_STREAMS:
        raise ValueError(f"unknown noise stream {stream!r}; choose from {list(NOISE_STREAMS)}")
    out = torch.empty(len(indices), *shape)
    g = torch.Generator()
    for j, i in enumerate(indices):
        g.manual_seed(sample_seed(seed, int(i), stream))
        out[j] = torch.randn(shape, generator=g)
    return out


STEPPING_MODES = ("batched", "per-sample")


@dataclass
class SampleRun:
    """The samples of one cell, with its accounting: one entry per solve.

    In batched mode a solve advances a whole batch; in per-sample mode, one sample.
    """

    x: torch.Tensor  # final states on the CPU, float32, of samples 0..keep-1
    nfe_per_solve: list[int] = field(default_factory=list)  # counted network calls
    solver_nfe_per_solve: list[int | None] = field(default_factory=list)
    solve_ranges: list[tuple[int, int]] = field(default_factory=list)  # samples lo..hi-1
    wall_time_s: float = 0.0  # summed over solves (median over repeats of each), bookkeeping out
    model_time_s: float = 0.0  # the network forwards alone
    record_time_s: float = 0.0  # rfbench's path-statistics bookkeeping, not in wall_time_s
    straightness: torch.Tensor | None = None  # per sample, when the solve was recorded
    curvature: torch.Tensor | None = None  # per sample, when the solve was recorded
    busiest_wall_time_s: float | None = None  # merged runs: the largest one's wall time

    @property
    def solve_sizes(self) -> list[int]:
        return [hi - lo for lo, hi in self.solve_ranges]

    @property
    def n(self) -> int:
        return int(sum(self.solve_sizes))

    @property
    def elapsed_s(self) -> float:
        """Wall time of the group that solved the samples: the sum over solves for one
        process, the busiest process's sum for several running side by side."""
        return self.wall_time_s if self.busiest_wall_time_s is None else self.busiest_wall_time_s

    def _nfe_of_samples(self) -> np.ndarray:
        return np.repeat(np.asarray(self.nfe_per_solve, dtype=float), self.solve_sizes)

    @property
    def nfe_per_sample(self) -> float:
        """Mean over samples of the network calls that advanced each sample."""
        return float(self._nfe_of_samples().mean())

    @property
    def nfe_std(self) -> float:
        """Spread over samples of their NFE (0 when every sample took the same)."""
        return float(self._nfe_of_samples().std())

    @property
    def overhead_time_s(self) -> float:
        return self.wall_time_s - self.model_time_s


def integrate(
    model: nn.Module,
    solver: str,
    num_samples: int,
    initial: Callable[[int, int], torch.Tensor],
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    batch_size: int = 250,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    grid: str = "uniform",
    stepping: str = "batched",
    repeats: int = 1,
    device: str | torch.device = "cpu",
    max_nfe: int | None = None,
    record: bool = False,
    progress: bool | None = None,
    sink: Callable[[torch.Tensor], None] | None = None,
    keep: int | None = None,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> SampleRun:
    """Integrate dx/dt = model(x, t) from t0 to t1 for samples 0..num_samples-1, in batches.

    ``initial(lo, hi)`` gives the start states of samples lo..hi-1 (on the CPU). Every solve
    is counted by ``CountingVelocity`` and timed ``repeats`` times; the median counts. With
    ``stepping="per-sample"`` an adaptive solver integrates each sample on its own, so its
    steps (and NFE) do not depend on the other samples. ``record=True`` accumulates each
    sample's straightness and curvature during the solve (2B numbers per network call, no
    trajectories).

    Each finished batch of final states goes to ``sink`` (in sample order, on the CPU,
    outside the timed solves), and only the first ``keep`` samples (all by default) stay in
    ``SampleRun.x``: with a sink that consumes them, memory does not grow with
    ``num_samples``.

    ``ranges`` restricts the work to these sample ranges (lo, hi), in this order, each cut
    into solves of at most ``batch_size``: the share of one process among several
    (``merge_runs`` puts the shares together). By default, all samples in consecutive
    batches.
    """
    if stepping not in STEPPING_MODES:
        raise ValueError(f"stepping must be one of {STEPPING_MODES}, got {stepping!r}")
    device = torch.device(device)
    spec = get_solver(solver)  # fail on an unknown name before any work
    sync = synchronizer(device)
    counter = CountingVelocity(model, max_nfe=max_nfe, record=record)
    run: SampleRun | None = None
    per_sample = stepping == "per-sample" and spec.adaptive
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    if ranges is None:
        ranges = [(0, num_samples)]
    batches = [
        (lo, min(lo + batch_size, hi)) for a, hi in ranges for lo in range(a, hi, batch_size)
    ]
    if any(not 0 <= lo < hi <= num_samples for lo, hi in batches):
        raise ValueError(f"sample ranges {list(ranges)} reach outside 0..{num_samples - 1}")
    bar = tqdm(
        batches,
        desc=f"{solver} t={t0:g}->{t1:g}",
        leave=False,
        disable=None if progress is None else not progress,
    )
    kept = num_samples if keep is None else min(keep, num_samples)
    pin = device.type == "cuda"
    for start, stop in bar:
        x_start = initial(start, stop)
        x_start = (x_start.pin_memory() if pin else x_start).to(device, non_blocking=pin)
        x_end = torch.empty(stop - start, *x_start.shape[1:])
        if run is None:
            run = SampleRun(x=torch.full((kept, *x_start.shape[1:]), torch.nan))
            if record:
                run.straightness = torch.full((num_samples,), torch.nan, dtype=torch.float64)
                run.curvature = torch.full((num_samples,), torch.nan, dtype=torch.float64)
        pieces = [(i, i + 1) for i in range(start, stop)] if per_sample else [(start, stop)]
        for lo, hi in pieces:
            walls, models, records = [], [], []
            for _ in range(repeats):
                counter.reset()
                sync()
                t_start = time.perf_counter()
                result = solve(
                    spec.name,
                    counter,
                    x_start[lo - start : hi - start],
                    steps=steps,
                    rtol=rtol,
                    atol=atol,
                    t0=t0,
                    t1=t1,
                    grid=grid,
                )
                sync()
                walls.append(time.perf_counter() - t_start - counter.record_time_s)
                models.append(counter.model_time_s)
                records.append(counter.record_time_s)
            run.wall_time_s += float(np.median(walls))
            run.model_time_s += float(np.median(models))
            run.record_time_s += float(np.median(records))
            run.nfe_per_solve.append(counter.nfe)
            run.solver_nfe_per_solve.append(result.solver_nfe)
            run.solve_ranges.append((lo, hi))
            x_end[lo - start : hi - start] = result.x.detach().float().cpu()
            if record:
                x0 = x_start[lo - start : hi - start]
                stats = path_statistics(counter.recorded(), result.weights, x0, result.x, (t0, t1))
                run.straightness[lo:hi], run.curvature[lo:hi] = stats.straightness, stats.curvature
        if start < kept:
            run.x[start : min(stop, kept)] = x_end[: kept - start]
        if sink is not None:
            sink(x_end)
    if run is None:  # a share with no samples in it
        run = SampleRun(x=torch.empty(0))
    return run


def merge_runs(runs: Sequence[SampleRun]) -> SampleRun:
    """One SampleRun from the shares of several processes (``integrate(ranges=...)``):
    solves in sample order, per-sample arrays filled from the share that solved each
    sample. ``wall_time_s`` stays the sum over all solves; ``busiest_wall_time_s`` is the
    largest share's, the elapsed time of processes running side by side."""
    solves = sorted(
        (
            s
            for run in runs
            for s in zip(run.solve_ranges, run.nfe_per_solve, run.solver_nfe_per_solve)
        ),
        key=lambda s: s[0],
    )
    first = runs[0]
    merged = SampleRun(
        x=first.x.clone(),
        nfe_per_solve=[s[1] for s in solves],
        solver_nfe_per_solve=[s[2] for s in solves],
        solve_ranges=[s[0] for s in solves],
        wall_time_s=sum(run.wall_time_s for run in runs),
        model_time_s=sum(run.model_time_s for run in runs),
        record_time_s=sum(run.record_time_s for run in runs),
        straightness=None if first.straightness is None else first.straightness.clone(),
        curvature=None if first.curvature is None else first.curvature.clone(),
        busiest_wall_time_s=max(run.wall_time_s for run in runs),
    )
    kept = len(merged.x)
    for run in runs[1:]:
        for lo, hi in run.solve_ranges:
            if lo < kept:
                merged.x[lo : min(hi, kept)] = run.x[lo : min(hi, kept)]
            if merged.straightness is not None:
                merged.straightness[lo:hi] = run.straightness[lo:hi]
                merged.curvature[lo:hi] = run.curvature[lo:hi]
    return merged


def generate(
    model: nn.Module,
    solver: str,
    num_samples: int,
    sample_shape: tuple[int, ...],
    *,
    seed: int = 0,
    **options,
) -> SampleRun:
    """Draw ``num_samples`` samples by integrating the model from t=0 (noise) to t=1 (data).

    Sample i's noise is ``noise(seed, [i])`` whatever the batch size. ``options`` are those
    of ``integrate`` (batch_size, steps, rtol, atol, grid, stepping, repeats, device, ...).

    >>> import torch
    >>> from rfbench.sample import generate
    >>> zero = lambda x, t: torch.zeros_like(x)
    >>> run = generate(zero, "euler", 10, (2,), steps=3, batch_size=4, progress=False)
    >>> run.nfe_per_solve, run.solve_sizes
    ([3, 3, 3], [4, 4, 2])
    """
    return integrate(
        model,
        solver,
        num_samples,
        lambda lo, hi: noise(seed, range(lo, hi), sample_shape),
        t0=T_NOISE,
        t1=T_DATA,
        **options,
    )


def trajectory(
    model: nn.Module,
    solver: str,
    x0: torch.Tensor,
    *,
    steps: int,
    grid: str = "uniform",
    t0: float = T_NOISE,
    t1: float = T_DATA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states of a fixed-step solve at its steps + 1 grid times: (t [m], x [m, B, ...]).

    Every fixed-step solver is a one-step method, so solving one step at a time is the same
    solve, node for node.
    """
    spec = get_solver(solver)
    if spec.adaptive:
        raise ValueError(f"trajectory() traces fixed-step solvers, not {solver}")
    ts = time_grid(steps, t0, t1, grid)
    velocity = CountingVelocity(model)
    xs = [x0]
    for a, b in zip(ts[:-1].tolist(), ts[1:].tolist()):
        xs.append(solve(solver, velocity, xs[-1], steps=1, t0=a, t1=b).x)
    return ts, torch.stack(xs)


@dataclass
class Reconstruction:
    """Data -> noise -> data with one solver: how far the round trip lands from the data."""

    rmse: float  # root mean squared error per element, averaged over samples
    encode: SampleRun  # t = 1 -> 0
    decode: SampleRun  # t = 0 -> 1


def reconstruct(model: nn.Module, solver: str, data: torch.Tensor, **options) -> Reconstruction:
    """Invert ``data`` to noise (integrating from t=1 to t=0), then sample it back.

    The round-trip error measures the solver's accuracy on the real model: an exact solver
    returns the data exactly, whatever the model.
    """
    n = len(data)
    encode = integrate(
        model, solver, n, lambda lo, hi: data[lo:hi], t0=T_DATA, t1=T_NOISE, **options
    )
    decode = integrate(
        model, solver, n, lambda lo, hi: encode.x[lo:hi], t0=T_NOISE, t1=T_DATA, **options
    )
    per_sample = (decode.x - data.float()).flatten(1).pow(2).mean(1).sqrt()
    return Reconstruction(float(per_sample.mean()), encode, decode)


@torch.no_grad()
def warm_up(
    model: nn.Module,
    sample_shape: tuple[int, ...],
    batch_size: int,
    device: str | torch.device,
    calls: int = 2,
) -> None:
    """Run the network a few times so that timed solves exclude one-off start-up costs."""
    device = torch.device(device)
    x = torch.zeros(batch_size, *sample_shape, device=device)
    t = torch.full((batch_size,), 0.5, device=device)
    for _ in range(calls):
        model(x, t)
    synchronizer(device)()
