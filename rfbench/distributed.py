"""Several processes through torch.distributed, as torchrun launches them.

``torchrun --nproc-per-node N -m rfbench run|train ...`` starts N copies of rfbench with
RANK, WORLD_SIZE and LOCAL_RANK set. ``World.from_env`` joins them into one process group:
NCCL for CUDA tensors (DDP's gradients) and gloo for CPU tensors (every gather below), so
that several processes sharing one GPU, or a CPU-only machine, still work.

What is split, and how the pieces come back together, is decided by the stages themselves
(train.py: each rank takes its slice of every global batch; runner.py: each rank takes
every N-th batch of samples). This module only moves Python objects between processes; it holds
no scheduler of its own.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from rfbench.errors import UserError

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=60)  # one rank may train a classifier while others wait


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run; a lone process is rank 0 of 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in the environment, joined; else a lone process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
        return world

    def device(self, name: str) -> str:
        """The device of this rank: with several processes on CUDA, ``cuda:<local rank>``
        (wrapping around when processes outnumber GPUs); otherwise ``name`` unchanged."""
        if not self.distributed or name not in ("auto", "cuda") or not torch.cuda.is_available():
            return name
        return f"cuda:{self.local_rank % torch.cuda.device_count()}"

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks)."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` on every rank, in rank order."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float) -> float:
        """The sum of ``value`` over all ranks, on every rank."""
        if not self.distributed:
            return value
        box = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(box)
        return float(box[0])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result on every rank. A UserError there is raised on
        every rank, so that no rank waits for a partner that has stopped."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise UserError(error)
        return result

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (and fills caches), then the other ranks (reading
        them). A UserError on rank 0 stops every rank."""
        if self.main:
            error = None
            try:
                yield
            except UserError as e:
                error = str(e)
                raise
            finally:
                self.broadcast(error)
        else:
            error = self.broadcast(None)
            if error is not None:
                raise UserError(error)
            yield

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share: items rank, rank + size, rank + 2 size, ..."""
    return list(items[world.rank :: world.size])


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Samples 0..n-1 cut into consecutive batches, as one process would solve them."""
    return [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
