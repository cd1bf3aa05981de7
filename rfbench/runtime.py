"""How the network runs: the device, bf16 autocast, channels_last, torch.compile, and a
sampling batch size that fits the GPU's memory.

Each option changes the arithmetic a little, so every row records the options in effect
(``Acceleration.columns``). An option that cannot take effect here is dropped with one
warning, and the rows then record what actually ran: the numbers never change silently.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from rfbench.errors import UserError, first_line

log = logging.getLogger("rfbench")

PRECISIONS = ("fp32", "bf16")
# Adaptive solvers hold several copies of the state per sample beside the network's own
# activations: dopri8 keeps 13 stages, plus the state, its error estimate and the output.
SOLVER_STATE_COPIES = 16
MEMORY_FRACTION = 0.8  # of the free GPU memory that an automatic batch may fill
MAX_AUTO_BATCH = 4096  # larger batches only couple more samples in one adaptive error norm


def resolve_device(name: str) -> torch.device:
    """The device to run on: CUDA when present for "auto", else the named one, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass(frozen=True)
class Acceleration:
    """Options for the network's forward pass during sampling."""

    precision: str = "fp32"  # fp32, or bf16 autocast (CUDA)
    channels_last: bool = False  # NHWC memory format for image models
    compile: bool = False  # torch.compile, one graph per batch shape
    compile_backend: str = "inductor"  # torch.compile's backend ("eager" in quick tests)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")

    def columns(self) -> dict:
        """What each row records about how its network ran."""
        return {
            "compute_dtype": self.precision,  # "precision" is precision/recall's column
            "channels_last": self.channels_last,
            "compiled": self.compile,
        }

    def effective(self, device: torch.device, sample_shape: tuple[int, ...]) -> Acceleration:
        """The options that can take effect on ``device`` for samples of this shape; each
        one dropped is one warning."""
        out = self
        if self.precision == "bf16":
            if device.type != "cuda":
                log.warning(
                    "--precision bf16 is a CUDA option; on the %s this run uses fp32, and its "
                    "rows say compute_dtype=fp32",
                    device.type,
                )
                out = replace(out, precision="fp32")
            elif not torch.cuda.is_bf16_supported():
                log.warning("this GPU has no bf16; the run uses fp32 (rows say compute_dtype=fp32)")
                out = replace(out, precision="fp32")
        if self.channels_last and len(sample_shape) != 3:
            log.warning(
                "--channels-last applies to images, not samples of shape %s; ignored",
                list(sample_shape),
            )
            out = replace(out, channels_last=False)
        return out


class Accelerated(nn.Module):
    """A velocity network run with ``Acceleration`` options; its output keeps the input's
    dtype, so the solvers never see bf16."""

    def __init__(self, model: nn.Module, options: Acceleration, device: torch.device):
        super().__init__()
        self.options, self.device_type = options, device.type
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.inner = model
        self.fn = (
            torch.compile(model, dynamic=False, backend=options.compile_backend)
            if options.compile
            else model
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.options.precision == "bf16":
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                out = self.fn(x, t)
        else:
            out = self.fn(x, t)
        return out.to(x.dtype).contiguous()


def accelerate(
    model: nn.Module, options: Acceleration, device: torch.device, sample_shape: tuple[int, ...]
) -> tuple[nn.Module, Acceleration]:
    """The model wrapped with the options that take effect here, and those options. With
    every option off, the model itself, untouched."""
    options = options.effective(device, sample_shape)
    if options == Acceleration(compile_backend=options.compile_backend):
        return model, options
    return Accelerated(model, options, device).eval(), options


def prepared(
    model: nn.Module,
    options: Acceleration,
    device: torch.device,
    sample_shape: tuple[int, ...],
    batch_sizes: Iterable[int],
) -> tuple[nn.Module, Acceleration]:
    """``accelerate``, then warmed up at every batch size it will see (a compiled model
    compiles here, outside any timing; if compiling fails it runs eager, and says so)."""
    from rfbench.sample import warm_up

    model, options = accelerate(model, options, device, sample_shape)

    def warm(m: nn.Module) -> None:
        for b in sorted(set(batch_sizes)):
            warm_up(m, sample_shape, b, device)

    return compile_or_fall_back(model, options, warm)


def compile_or_fall_back(
    model: nn.Module, options: Acceleration, warm: Callable[[nn.Module], None]
) -> tuple[nn.Module, Acceleration]:
    """Run ``warm(model)`` (which compiles a torch.compile'd model); if compiling fails,
    warn once and return the eager model, with ``compile`` off in the options."""
    try:
        warm(model)
        return model, options
    except Exception as e:  # noqa: BLE001 - torch.compile raises many kinds on a bad toolchain
        if not (isinstance(model, Accelerated) and options.compile):
            raise
        log.warning(
            "torch.compile failed (%s); running eager, rows say compiled=False", first_line(e)
        )
        options = replace(options, compile=False)
        eager = Accelerated(model.inner, options, torch.device(model.device_type))
        warm(eager)
        return eager, options


# Section: a sampling batch size that fits.


def fit_batch_size(
    free_bytes: int,
    forward_bytes: Callable[[int], int],
    state_bytes: int,
    limit: int,
    probe: tuple[int, int] = (8, 16),
) -> int:
    """The largest batch whose forward pass plus solver states fill at most
    MEMORY_FRACTION of ``free_bytes``, capped at ``limit`` and MAX_AUTO_BATCH.

    ``forward_bytes(b)`` is the peak memory of one forward pass at batch b; two probes give
    its fixed and per-sample parts (activations grow linearly with the batch).
    """
    a, b = probe
    fa, fb = forward_bytes(a), forward_bytes(b)
    per_sample = max((fb - fa) / (b - a), 1.0) + SOLVER_STATE_COPIES * state_bytes
    fixed = max(fa - a * (fb - fa) / (b - a), 0.0)
    fits = math.floor((MEMORY_FRACTION * free_bytes - fixed) / per_sample)
    return max(1, min(fits, limit, MAX_AUTO_BATCH))


def cuda_forward_bytes(
    model: nn.Module, sample_shape: tuple[int, ...], device: torch.device
) -> Callable[[int], int]:
    """``forward_bytes`` for ``fit_batch_size``, measured with CUDA's peak-memory counter."""

    @torch.no_grad()
    def measure(batch: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.zeros(batch, *sample_shape, device=device)
        model(x, torch.full((batch,), 0.5, device=device))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    return measure


def auto_batch_size(
    models: list[nn.Module], sample_shape: tuple[int, ...], device: torch.device, limit: int
) -> int:
    """The sampling batch size that fits every model on this GPU (``device``: CUDA)."""
    free, _ = torch.cuda.mem_get_info(device)
    state = math.prod(sample_shape) * 4
    return min(
        fit_batch_size(free, cuda_forward_bytes(m, sample_shape, device), state, limit)
        for m in models
    )
