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
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rfbench.solvers import Setting, SolveResult, solve
from rfbench.solvers.fixed import setting_grid


class NFEBudgetExceeded(RuntimeError):
    """A solve asked for more network evaluations than its max_nfe guard allows."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class CountingVelocity:
    """v(x, t) around a network: counts every forward call and times it.

    ``t`` may be a float, a 0-dim tensor, or a [B] tensor of each sample's own time; the
    network receives it as a [B] tensor in x's dtype. Calls beyond ``max_nfe`` raise
    NFEBudgetExceeded. A solve's first call carries its whole batch; a later call may
    carry only some of its samples (``rows``, their indices in that batch: vectorised
    per-sample stepping, where finished samples leave), and ``row_nfe`` counts, per
    sample, the calls that carried it. With ``record=True`` it also keeps, per call and
    per sample carried, t, the mean squared velocity and the velocity norm: all that
    straightness and curvature need (never the states themselves). They go into one
    buffer that doubles when full: many small tensors kept alive between the network's
    large buffers would fragment the heap (measured in results/solve-memory.md). The
    recording is timed on its own (``record_time_s``): it starts after the forward's
    closing synchronisation and ends with one more on CUDA, so neither the model time nor
    the solver's overhead holds it.
    """

    counts_rows = True  # solvers may say which samples a call carries (rows=)

    def __init__(self, model: nn.Module, max_nfe: int | None = None, record: bool = False):
        self.model, self.max_nfe, self.record = model, max_nfe, record
        self.nfe, self.model_time_s, self.record_time_s = 0, 0.0, 0.0
        self.row_nfe: torch.Tensor | None = None  # [B] int64: calls that carried each sample
        self._calls = 0  # recorded calls
        self._rowwise = False  # some recorded call carried only some samples
        self._stats: torch.Tensor | None = None  # [capacity, 3, B] float64: t, sq, norm
        self._device: torch.device | None = None
        self._sync: Callable[[], None] = lambda: None

    def reset(self) -> None:
        self.nfe, self.model_time_s, self.record_time_s = 0, 0.0, 0.0
        self.row_nfe, self._calls, self._rowwise = None, 0, False

    def calls_of_rows(self, n: int) -> np.ndarray:
        """Per sample of the last solve's n, the calls that carried it (0 with no call)."""
        if self.row_nfe is None:
            return np.zeros(n, dtype=np.int64)
        if len(self.row_nfe) != n:
            raise RuntimeError(f"the solve's calls carried {len(self.row_nfe)} samples, not {n}")
        return self.row_nfe.cpu().numpy().copy()

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, mean squared velocity [calls, B], velocity norm [calls, B]) on the CPU; t is
        [calls] where every call carried the whole batch at one time, else [calls, B] with
        NaN (as in the other two) where a call did not carry the sample."""
        k = self._calls
        if self._stats is None:
            return (torch.zeros(0, dtype=torch.float64),) + (torch.zeros(0, 0),) * 2
        stats = self._stats[:k].cpu()
        t = stats[:, 0] if self._rowwise else stats[:, 0, 0]
        return t, stats[:, 1], stats[:, 2]

    def _record(self, t: torch.Tensor, out: torch.Tensor, rows: torch.Tensor | None) -> None:
        flat = out.detach().flatten(1).double()
        k = self._calls
        width = len(flat) if rows is None else self._stats.shape[2]
        if k == 0 or self._stats.shape[2] != width or k == len(self._stats):
            grown = torch.full(
                (max(64, 2 * k), 3, width), torch.nan, dtype=torch.float64, device=flat.device
            )
            if k:
                grown[:k] = self._stats[:k]
            self._stats = grown
        where = slice(None) if rows is None else rows
        self._stats[k, 0, where] = t.double()
        self._stats[k, 1, where] = flat.pow(2).mean(1)
        self._stats[k, 2, where] = flat.norm(dim=1)
        self._calls += 1
        self._rowwise |= rows is not None or t.dim() > 0

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, t: float | torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise NFEBudgetExceeded(f"more than max_nfe={self.max_nfe} network evaluations")
        if rows is not None and self.row_nfe is None:
            raise ValueError("a solve's first call carries its whole batch (rows=None)")
        if self._device != x.device:
            self._device, self._sync = x.device, synchronizer(x.device)
        self.nfe += 1
        if rows is None:
            if self.row_nfe is None or len(self.row_nfe) != len(x):
                self.row_nfe = torch.zeros(len(x), dtype=torch.long, device=x.device)
            self.row_nfe += 1
        else:
            self.row_nfe[rows] += 1  # on the device: no wait for the host
        # a contiguous [B] vector, like the warm-up's: a compiled model sees one stride only
        # (an expanded t, stride 0, would recompile it inside the first timed cell)
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tb = (tt.reshape(()).expand(x.shape[0]) if tt.dim() == 0 else tt).contiguous()
        self._sync()
        start = time.perf_counter()
        out = self.model(x, tb)
        self._sync()
        stop = time.perf_counter()
        self.model_time_s += stop - start
        if self.record:
            self._record(torch.as_tensor(t, dtype=torch.float64), out, rows)
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
    path: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PathStats:
    """Straightness and curvature of each sample's solved path X_t, t in t_span, from
    ``CountingVelocity.recorded()``.

    Along a solution, int v dt = X1 - X0, so S = int |v|^2 dt - |X1 - X0|^2 (squared norms
    as means over elements), and the path length is int |v| dt (Euclidean norms). Integrals
    use the solver's own quadrature ``weights`` (one per call) where it has them, which
    makes both exact for the discrete fixed-step path; otherwise the trapezoid rule over
    the calls sorted by t, clipped to ``t_span`` (an estimate for adaptive solvers, whose
    rejected-step and overshooting calls lie near the path). Both are integrals over
    absolute time, each sample over the calls that carried it (a vectorised per-sample
    solve's calls carry each sample at its own times): a backward solve (t from 1 to 0)
    has negative steps, and its weights count by their size. A multistep solver's
    ``path`` (the integral of the squared velocity and the length of its discrete path,
    from its steps' displacements) is used as it is: its update is no quadrature of its
    calls.
    """
    d = (x1 - x0).detach().flatten(1).double().cpu()
    chord = d.norm(dim=1)
    if path is not None:
        sq_integral, length = path
        curvature = torch.where(chord > 0, length / chord - 1, torch.nan)
        return PathStats(sq_integral - d.pow(2).mean(1), curvature)
    ts, sq, norm = recorded  # [calls], [calls, B], [calls, B]

    def integral(q: torch.Tensor) -> torch.Tensor:
        if weights is not None:
            return (torch.tensor(weights, dtype=q.dtype).abs()[:, None] * q).sum(0)
        lo, hi = min(t_span), max(t_span)
        if ts.dim() == 1:
            return _trapezoid_on(ts, q, lo, hi)
        # each sample's own calls (vectorised per-sample stepping): NaN where not carried
        carried = ~ts.isnan()
        return torch.cat(
            [
                _trapezoid_on(ts[carried[:, b], b], q[carried[:, b], b, None], lo, hi)
                for b in range(q.shape[1])
            ]
        )

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


@dataclass(frozen=True)
class Batching:
    """How a solve's samples are cut into batches and where they go.

    ``batch_size`` samples per solve; ``ranges`` (lo, hi) restricts the work to these
    sample ranges, in this order, each cut into solves of at most ``batch_size`` (the share
    of one process among several; ``merge_runs`` puts shares together), by default all
    samples; each finished batch goes to ``sink`` (in sample order, on the CPU, outside
    the timed solves), and only the first ``keep`` samples (all by default) stay in
    ``SampleRun.x``, so that with a sink memory does not grow with the sample count.
    With per-sample stepping, ``vectorise`` solves a batch's samples together, each with
    its own steps, where the solver can (``SolverSpec.per_sample_fn``); otherwise, or
    with ``vectorise=False``, one sample at a time.
    """

    batch_size: int = 250
    ranges: tuple[tuple[int, int], ...] | None = None
    sink: Callable[[torch.Tensor], None] | None = None
    keep: int | None = None
    vectorise: bool = True


@dataclass(frozen=True)
class Measuring:
    """What is measured around each solve: ``repeats`` timed solves (the median counts),
    ``record`` the path statistics (straightness and curvature: 2B numbers per network
    call, no trajectories), a ``max_nfe`` guard, and a ``progress`` bar (None: on a
    terminal)."""

    repeats: int = 1
    record: bool = False
    max_nfe: int | None = None
    progress: bool | None = None


@dataclass
class SampleRun:
    """The samples of one cell, with its accounting: one entry per solve.

    In batched mode a solve advances a whole batch; in per-sample mode, one sample
    (sequential) or a whole batch whose samples step on their own (vectorised).
    """

    x: torch.Tensor  # final states on the CPU, float32, of samples 0..keep-1
    nfe_per_solve: list[int] = field(default_factory=list)  # counted network calls
    # per solve, each sample's count of the calls that carried it ([size] int64)
    sample_nfe: list[np.ndarray] = field(default_factory=list)
    solver_nfe_per_solve: list[int | None] = field(default_factory=list)
    solve_ranges: list[tuple[int, int]] = field(default_factory=list)  # samples lo..hi-1
    wall_time_s: float = 0.0  # summed over solves (median over repeats of each), bookkeeping out
    model_time_s: float = 0.0  # the network forwards alone
    record_time_s: float = 0.0  # rfbench's path-statistics bookkeeping, not in wall_time_s
    straightness: torch.Tensor | None = None  # per sample, when the solve was recorded
    curvature: torch.Tensor | None = None  # per sample, when the solve was recorded
    busiest_wall_time_s: float | None = None  # merged runs: the largest one's wall time
    per_sample_impl: str | None = None  # per-sample stepping: "vectorised" or "sequential"

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

    @property
    def nfe_of_samples(self) -> np.ndarray:
        """Per sample, in solve order, the network calls that carried it."""
        if len(self.sample_nfe) == len(self.nfe_per_solve):
            return np.concatenate([[], *self.sample_nfe]).astype(float)
        return np.repeat(np.asarray(self.nfe_per_solve, dtype=float), self.solve_sizes)

    @property
    def nfe_per_sample(self) -> float:
        """Mean over samples of the network calls that advanced each sample."""
        return float(self.nfe_of_samples.mean())

    @property
    def nfe_std(self) -> float:
        """Spread over samples of their NFE (0 when every sample took the same)."""
        return float(self.nfe_of_samples.std())

    @property
    def overhead_time_s(self) -> float:
        return self.wall_time_s - self.model_time_s


def integrate(
    model: nn.Module,
    setting: Setting,
    num_samples: int,
    initial: Callable[[int, int], torch.Tensor],
    *,
    t0: float | None = None,
    t1: float | None = None,
    device: str | torch.device = "cpu",
    batching: Batching = Batching(),
    measuring: Measuring = Measuring(),
) -> SampleRun:
    """Integrate dx/dt = model(x, t) from t0 to t1 for samples 0..num_samples-1, in batches.

    Args:
        model: the velocity network, ``model(x, t)`` with t a [B] tensor.
        setting: the solver and its setting. With per-sample stepping, an adaptive solver
            integrates each sample on its own, so its steps (and NFE) do not depend on the
            other samples.
        num_samples: how many samples.
        initial: ``initial(lo, hi)`` gives the start states of samples lo..hi-1 (CPU).
        t0, t1: the interval (rfbench's convention: 0 noise, 1 data); by default the
            setting's, from ``t_start`` to ``t_end``.
        device: where the network and the solver's state run.
        batching: batch size, sample ranges, sink and kept samples (``Batching``).
        measuring: repeats, path statistics, NFE guard, progress (``Measuring``).

    Returns:
        ``SampleRun``: the kept final states and, per solve, the NFE counted by
        ``CountingVelocity``, the solver's own count, and the median wall and model times.
    """
    device = torch.device(device)
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    t0 = setting.t_start if t0 is None else t0
    t1 = setting.t_end if t1 is None else t1
    size = batching.batch_size
    ranges = batching.ranges if batching.ranges is not None else [(0, num_samples)]
    batches = [(lo, min(lo + size, hi)) for a, hi in ranges for lo in range(a, hi, size)]
    if any(not 0 <= lo < hi <= num_samples for lo, hi in batches):
        raise ValueError(f"sample ranges {list(ranges)} reach outside 0..{num_samples - 1}")
    counter = CountingVelocity(model, max_nfe=measuring.max_nfe, record=measuring.record)
    sync = synchronizer(device)
    bar = tqdm(
        batches,
        desc=f"{setting.solver} t={t0:g}->{t1:g}",
        leave=False,
        disable=None if measuring.progress is None else not measuring.progress,
    )
    kept = num_samples if batching.keep is None else min(batching.keep, num_samples)
    pin = device.type == "cuda"
    can_vectorise = setting.spec.per_sample_fn is not None
    vectorised = setting.per_sample and batching.vectorise and can_vectorise
    sequential = setting.per_sample and not vectorised
    run: SampleRun | None = None
    for start, stop in bar:
        x_start = initial(start, stop)
        x_start = (x_start.pin_memory() if pin else x_start).to(device, non_blocking=pin)
        x_end = torch.empty(stop - start, *x_start.shape[1:])
        if run is None:
            run = SampleRun(x=torch.full((kept, *x_start.shape[1:]), torch.nan))
            if setting.per_sample:
                run.per_sample_impl = "vectorised" if vectorised else "sequential"
            if measuring.record:
                run.straightness = torch.full((num_samples,), torch.nan, dtype=torch.float64)
                run.curvature = torch.full((num_samples,), torch.nan, dtype=torch.float64)
        pieces = [(i, i + 1) for i in range(start, stop)] if sequential else [(start, stop)]
        for lo, hi in pieces:
            x0 = x_start[lo - start : hi - start]
            result = timed_solve(
                counter, setting, x0, t0, t1, measuring.repeats, sync, run, vectorised
            )
            run.nfe_per_solve.append(counter.nfe)
            run.sample_nfe.append(counter.calls_of_rows(hi - lo))
            run.solver_nfe_per_solve.append(result.solver_nfe)
            run.solve_ranges.append((lo, hi))
            x_end[lo - start : hi - start] = result.x.detach().float().cpu()
            if measuring.record:
                stats = path_statistics(
                    counter.recorded(), result.weights, x0, result.x, (t0, t1), result.path
                )
                run.straightness[lo:hi], run.curvature[lo:hi] = stats.straightness, stats.curvature
        if start < kept:
            run.x[start : min(stop, kept)] = x_end[: kept - start]
        if batching.sink is not None:
            batching.sink(x_end)
    if run is None:  # a share with no samples in it
        run = SampleRun(x=torch.empty(0))
    return run


def timed_solve(
    counter: CountingVelocity,
    setting: Setting,
    x0: torch.Tensor,
    t0: float,
    t1: float,
    repeats: int,
    sync: Callable[[], None],
    run: SampleRun,
    vectorised: bool = False,
) -> SolveResult:
    """One solve, timed ``repeats`` times; the medians of wall time (rfbench's recording
    taken out), model time and recording time are added to ``run``. The counter holds
    the last repeat's NFE and recording (every repeat is the same solve). ``vectorised``:
    the solver's per-sample stepping over the whole batch (``SolverSpec.per_sample_fn``).
    """
    walls, models, records = [], [], []
    for _ in range(repeats):
        counter.reset()
        sync()
        start = time.perf_counter()
        if vectorised:  # a batch whose samples step on their own
            result = setting.spec.per_sample_fn(counter, x0, setting, t0=t0, t1=t1)
        else:
            result = solve(setting, counter, x0, t0=t0, t1=t1)
        sync()
        walls.append(time.perf_counter() - start - counter.record_time_s)
        models.append(counter.model_time_s)
        records.append(counter.record_time_s)
    run.wall_time_s += float(np.median(walls))
    run.model_time_s += float(np.median(models))
    run.record_time_s += float(np.median(records))
    return result


def merge_runs(runs: Sequence[SampleRun]) -> SampleRun:
    """One SampleRun from the shares of several processes (``integrate(ranges=...)``):
    solves in sample order, per-sample arrays filled from the share that solved each
    sample. ``wall_time_s`` stays the sum over all solves; ``busiest_wall_time_s`` is the
    largest share's, the elapsed time of processes running side by side."""
    solves = sorted(
        (
            s
            for run in runs
            for s in zip(
                run.solve_ranges, run.nfe_per_solve, run.solver_nfe_per_solve, run.sample_nfe
            )
        ),
        key=lambda s: s[0],
    )
    first = runs[0]
    merged = SampleRun(
        x=first.x.clone(),
        nfe_per_solve=[s[1] for s in solves],
        solver_nfe_per_solve=[s[2] for s in solves],
        solve_ranges=[s[0] for s in solves],
        sample_nfe=[s[3] for s in solves],
        wall_time_s=sum(run.wall_time_s for run in runs),
        model_time_s=sum(run.model_time_s for run in runs),
        record_time_s=sum(run.record_time_s for run in runs),
        straightness=None if first.straightness is None else first.straightness.clone(),
        curvature=None if first.curvature is None else first.curvature.clone(),
        busiest_wall_time_s=max(run.wall_time_s for run in runs),
        per_sample_impl=first.per_sample_impl,
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


def plan(setting: Setting | str, **options) -> tuple[Setting, Batching, Measuring, dict]:
    """Sort keyword options into a Setting (from a solver's name and the setting's fields),
    a Batching, a Measuring and the rest: what ``generate`` and ``reconstruct`` take.

    >>> setting, batching, measuring, rest = plan("euler", steps=4, batch_size=8, device="cpu")
    >>> setting.steps, batching.batch_size, measuring.repeats, rest
    (4, 8, 1, {'device': 'cpu'})
    """
    group_of = {
        **dict.fromkeys(_BATCHING_FIELDS, "batching"),
        **dict.fromkeys(_MEASURING_FIELDS, "measuring"),
    }
    if isinstance(setting, str):
        group_of.update(dict.fromkeys(_SETTING_FIELDS, "setting"))
    groups = {name: {} for name in ("setting", "batching", "measuring", "rest")}
    for key, value in options.items():
        groups[group_of.get(key, "rest")][key] = value
    if isinstance(setting, str):
        setting = Setting(setting, **groups["setting"])
    if groups["batching"].get("ranges") is not None:
        groups["batching"]["ranges"] = tuple(map(tuple, groups["batching"]["ranges"]))
    batching, measuring = Batching(**groups["batching"]), Measuring(**groups["measuring"])
    return setting, batching, measuring, groups["rest"]


_SETTING_FIELDS = frozenset(f.name for f in fields(Setting)) - {"solver"}
_BATCHING_FIELDS = frozenset(f.name for f in fields(Batching))
_MEASURING_FIELDS = frozenset(f.name for f in fields(Measuring))


def generate(
    model: nn.Module,
    setting: Setting | str,
    num_samples: int,
    sample_shape: tuple[int, ...],
    *,
    seed: int = 0,
    stream: str = "samples",
    device: str | torch.device = "cpu",
    **options,
) -> SampleRun:
    """Draw samples by integrating the model from t=0 (noise) to t=1 (data).

    Args:
        model: the velocity network.
        setting: a ``Setting``, or a solver's name with the setting's fields in
            ``options`` (steps, grid, rtol, atol, stepping).
        num_samples: how many samples; sample i starts from ``noise(seed, [i], stream)``,
            whatever the batch size.
        sample_shape: the shape of one sample.
        seed, stream: the noise (``noise``).
        device: where to run.
        options: also the fields of ``Batching`` (batch_size, ranges, sink, keep) and of
            ``Measuring`` (repeats, record, max_nfe, progress).

    Returns:
        ``SampleRun`` (``integrate``).

    >>> import torch
    >>> from rfbench.sample import generate
    >>> zero = lambda x, t: torch.zeros_like(x)
    >>> run = generate(zero, "euler", 10, (2,), steps=3, batch_size=4, progress=False)
    >>> run.nfe_per_solve, run.solve_sizes
    ([3, 3, 3], [4, 4, 2])
    """
    setting, batching, measuring, rest = plan(setting, **options)
    if rest:
        raise TypeError(f"generate() got unexpected options: {', '.join(rest)}")
    return integrate(
        model,
        setting,
        num_samples,
        lambda lo, hi: noise(seed, range(lo, hi), sample_shape, stream),
        device=device,
        batching=batching,
        measuring=measuring,
    )


def trajectory(
    model: nn.Module,
    setting: Setting,
    x0: torch.Tensor,
    t0: float | None = None,
    t1: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states of a fixed-step solve at its steps + 1 grid times: (t [m], x [m, B, ...]).

    Every fixed-step Runge-Kutta solver is a one-step method, so solving one step at a time
    is the same solve, node for node. (Multistep solvers are not: they are not traced.)
    """
    if setting.adaptive or setting.spec.multistep:
        raise ValueError(f"trajectory() traces one-step fixed-step solvers, not {setting.solver}")
    t0 = setting.t_start if t0 is None else t0
    t1 = setting.t_end if t1 is None else t1
    ts = setting_grid(setting, t0, t1)
    velocity = CountingVelocity(model)
    one_step = replace(setting, steps=1, grid=None, grid_times=None, t_start=0.0, t_end=1.0)
    xs = [x0]
    for a, b in zip(ts[:-1].tolist(), ts[1:].tolist()):
        xs.append(solve(one_step, velocity, xs[-1], t0=a, t1=b).x)
    return ts, torch.stack(xs)


@dataclass
class Reconstruction:
    """Data -> noise -> data with one solver: how far the round trip lands from the data."""

    rmse: float  # root mean squared error per element, averaged over samples
    encode: SampleRun  # t = 1 -> 0
    decode: SampleRun  # t = 0 -> 1


def reconstruct(
    model: nn.Module,
    setting: Setting | str,
    data: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    **options,
) -> Reconstruction:
    """Invert ``data`` to noise (integrating from t=1 to t=0), then sample it back; the
    options are ``generate``'s.

    The round-trip error measures the solver's accuracy on the real model: an exact solver
    returns the data exactly, whatever the model.
    """
    setting, batching, measuring, rest = plan(setting, **options)
    if rest:
        raise TypeError(f"reconstruct() got unexpected options: {', '.join(rest)}")
    n, kw = len(data), dict(device=device, batching=batching, measuring=measuring)
    start, end = setting.t_start, setting.t_end  # the setting's interval, both ways
    encode = integrate(model, setting, n, lambda lo, hi: data[lo:hi], t0=end, t1=start, **kw)
    decode = integrate(model, setting, n, lambda lo, hi: encode.x[lo:hi], t0=start, t1=end, **kw)
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
