"""Sampling: the NFE-counting wrapper, per-sample seeded noise, and timed batched solves.

Measurement rules (see DESIGN.md):
- NFE is counted by ``CountingVelocity`` around the network, never inferred from a formula.
- Sample i always starts from the same noise, a function of (seed, i) only.
- Wall time is ``perf_counter`` around each whole solve, synchronised on CUDA; the network
  forwards are timed separately, so overhead = wall - model time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rfbench.solvers import get_solver, solve


class NFEBudgetExceeded(RuntimeError):
    """A solve asked for more network evaluations than its max_nfe guard allows."""


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class CountingVelocity:
    """v(x, t) around a network: counts every forward call and times it.

    ``t`` may be a float or a 0-dim tensor; the network receives it as a [B] tensor in
    x's dtype. Calls beyond ``max_nfe`` raise NFEBudgetExceeded.
    """

    def __init__(self, model: nn.Module, max_nfe: int | None = None):
        self.model, self.max_nfe = model, max_nfe
        self.nfe, self.model_time_s = 0, 0.0
        self._device: torch.device | None = None
        self._sync: Callable[[], None] = lambda: None

    def reset(self) -> None:
        self.nfe, self.model_time_s = 0, 0.0

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
        self.model_time_s += time.perf_counter() - start
        return out


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of run seed ``seed`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def noise(seed: int, indices: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """x0 ~ N(0, I) for the given sample indices; row j depends only on (seed, indices[j])."""
    out = torch.empty(len(indices), *shape)
    g = torch.Generator()
    for j, i in enumerate(indices):
        g.manual_seed(sample_seed(seed, int(i)))
        out[j] = torch.randn(shape, generator=g)
    return out


@dataclass
class SampleRun:
    """The samples of one cell, with its accounting."""

    x: torch.Tensor  # final states on the CPU, float32, [N, ...]
    nfe_per_batch: list[int] = field(default_factory=list)  # counted network calls per batch
    solver_nfe_per_batch: list[int | None] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0  # summed over batches
    model_time_s: float = 0.0  # the network forwards alone

    @property
    def n(self) -> int:
        return int(sum(self.batch_sizes))

    @property
    def nfe_per_sample(self) -> float:
        """Mean over samples of the network calls that advanced each sample."""
        return float(np.dot(self.nfe_per_batch, self.batch_sizes) / self.n)

    @property
    def overhead_time_s(self) -> float:
        return self.wall_time_s - self.model_time_s


def generate(
    model: nn.Module,
    solver: str,
    num_samples: int,
    sample_shape: tuple[int, ...],
    *,
    seed: int = 0,
    batch_size: int = 250,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    device: str | torch.device = "cpu",
    max_nfe: int | None = None,
    progress: bool | None = None,
) -> SampleRun:
    """Draw ``num_samples`` samples by integrating the model from t=0 (noise) to t=1 (data).

    Samples are solved in consecutive batches of ``batch_size``; sample i's noise is
    ``noise(seed, [i])`` whatever the batch size.

    >>> import torch
    >>> from rfbench.sample import generate
    >>> zero = lambda x, t: torch.zeros_like(x)
    >>> run = generate(zero, "euler", 10, (2,), steps=3, batch_size=4, progress=False)
    >>> run.nfe_per_batch, run.batch_sizes
    ([3, 3, 3], [4, 4, 2])
    """
    device = torch.device(device)
    spec = get_solver(solver)  # fail on an unknown name before any work
    sync = synchronizer(device)
    counter = CountingVelocity(model, max_nfe=max_nfe)
    run = SampleRun(x=torch.empty(num_samples, *sample_shape))
    starts = range(0, num_samples, batch_size)
    for start in tqdm(
        starts,
        desc=f"sample {solver}",
        disable=None if progress is None else not progress,
        leave=False,
    ):
        idx = range(start, min(start + batch_size, num_samples))
        x0 = noise(seed, idx, sample_shape).to(device)
        counter.reset()
        sync()
        t_start = time.perf_counter()
        result = solve(spec.name, counter, x0, steps=steps, rtol=rtol, atol=atol)
        sync()
        run.wall_time_s += time.perf_counter() - t_start
        run.model_time_s += counter.model_time_s
        run.nfe_per_batch.append(counter.nfe)
        run.solver_nfe_per_batch.append(result.solver_nfe)
        run.batch_sizes.append(len(idx))
        run.x[start : start + len(idx)] = result.x.detach().float().cpu()
    return run


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
