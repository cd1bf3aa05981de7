"""External velocity models (torchcfm checkpoints, user plugins), adapted to rfbench's time.

rfbench's convention (``rfbench.flow``): t = 0 is noise, t = 1 is data, x_t = t x1 + (1 - t) x0,
and a model is called as ``model(x, t)`` with x [B, ...] and t [B] in [0, 1]; it returns the
velocity dx/dt. Sampling integrates from t = 0 to t = 1.

An external model ``f(x, s)`` (argument order already (x, s)) is described by a
``TimeConvention(noise_at, scale)``; u = s / scale is its unscaled time in [0, 1]:

- ``noise_at=0``: u = 0 is noise, as in rfbench and torchcfm: u = t.
- ``noise_at=1``: u = 1 is noise, as in SD3 and diffusers' flow-matching models: u = 1 - t.
- ``scale``: the model takes s = scale * u (999 or 1000 for DDPM-style timestep inputs).

The external model is assumed to return dx/du per unit of its *unscaled* time u, which is
how torchcfm and SD3-style models are trained (their targets are x1 - x0 or noise - data,
whatever scale their time embedding uses). Then, since du/dt = +1 or -1,

    v(x, t) =  f(x, scale * t)          for noise_at = 0
    v(x, t) = -f(x, scale * (1 - t))    for noise_at = 1

and the scale does not change the velocity. The identity convention calls f unchanged.

References that ``load_external`` accepts:

- ``torchcfm:PATH``: a checkpoint of the conditional-flow-matching project (atong01), loaded
  without unpickling code (``torch.load(weights_only=True)``).
- ``plugin:package.module:callable``: ``callable(**config)`` returns the velocity model.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rfbench.errors import UserError, first_line
from rfbench.safeload import load_weights_only

EXTERNAL_PREFIXES = ("torchcfm:", "plugin:")

# The CIFAR-10 UNet of the conditional-flow-matching project (examples/images/cifar10/
# compute_fid.py); a user config overrides these keys.
TORCHCFM_CIFAR10 = dict(
    dim=(3, 32, 32),
    num_res_blocks=2,
    num_channels=128,
    channel_mult=[1, 2, 2, 2],
    num_heads=4,
    num_head_channels=64,
    attention_resolutions="16",
    dropout=0.1,
)
TORCHCFM_WEIGHTS = {"ema": "ema_model", "net": "net_model"}  # weights= -> checkpoint key


@dataclass(frozen=True)
class TimeConvention:
    """How an external model reads time (see the module docstring)."""

    noise_at: int = 0  # 0: u = 0 is noise (rfbench, torchcfm); 1: u = 1 is noise (SD3)
    scale: float = 1.0  # the model's time input is scale * u (999 for DDPM-style inputs)

    def __post_init__(self):
        if type(self.noise_at) is not int or self.noise_at not in (0, 1):
            raise UserError(
                f"time convention: noise_at must be 0 (t=0 is noise, as in rfbench) or 1 "
                f"(t=1 is noise), got {self.noise_at!r}"
            )
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise UserError(f"time convention: scale must be finite and > 0, got {self.scale!r}")

    @classmethod
    def parse(cls, noise_at: int, scale: float) -> TimeConvention:
        """A convention from user input (CLI or config): a one-line UserError if invalid."""
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise UserError(f"time convention: scale must be a number, got {scale!r}") from None
        if noise_at in (0, 1, "0", "1") and not isinstance(noise_at, bool):
            noise_at = int(noise_at)  # 1.0 and "1" are 1
        return cls(noise_at, scale)

    @property
    def label(self) -> str:
        """``t0-noise``, ``t1-noise*999``, ...: the convention as recorded in result rows."""
        return f"t{self.noise_at}-noise" + ("" if self.scale == 1 else f"*{self.scale:g}")


RFBENCH_TIME = TimeConvention()  # the identity: t = 0 is noise, time inputs in [0, 1]


class CallableModule(nn.Module):
    """A plain callable f(x, t) as a module, so that ``.to()`` and ``.eval()`` work."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(x, t)


class ConventionAdapter(nn.Module):
    """rfbench's v(x, t) from an external f(x, s) in ``convention``:
    v = f(x, scale * t) (noise_at=0) or -f(x, scale * (1 - t)) (noise_at=1)."""

    def __init__(self, model: Callable, convention: TimeConvention = RFBENCH_TIME):
        super().__init__()
        self.model = model if isinstance(model, nn.Module) else CallableModule(model)
        self.convention = convention

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise_at, scale = self.convention.noise_at, self.convention.scale
        s = t if noise_at == 0 else 1 - t
        if scale != 1:
            s = s * scale
        v = self.model(x, s)
        return v if noise_at == 0 else -v

    def extra_repr(self) -> str:
        return f"convention={self.convention.label}"


# torchcfm checkpoints.


class TorchCFMVelocity(nn.Module):
    """torchcfm's ``UNetModelWrapper``, called ``net(t, x)``, as ``model(x, t)``; its time
    convention is rfbench's (t = 0 is noise, t in [0, 1])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(t, x)


def load_torchcfm(path: str, config: dict | None = None, weights: str = "ema") -> nn.Module:
    """A torchcfm UNet from a checkpoint of the conditional-flow-matching project.

    The file is ``torch.save({"net_model": sd, "ema_model": sd, "sched": ..., "optim": ...,
    "step": n}, path)`` as their ``train_cifar10.py`` writes it (keys may carry DDP's
    ``module.`` prefix), or a bare state dict. ``weights`` picks "ema" or "net"; ``config``
    overrides keys of ``TORCHCFM_CIFAR10``, the architecture of their CIFAR-10 model. The
    result is in eval mode, without gradients, called as ``model(x, t)``.

    >>> model = load_torchcfm("otcfm_cifar10_weights_step_400000.pt")  # doctest: +SKIP
    >>> v = model(torch.randn(4, 3, 32, 32), torch.full((4,), 0.5))  # doctest: +SKIP
    """
    try:
        from torchcfm.models.unet.unet import UNetModelWrapper
    except ImportError:
        raise UserError(
            "torchcfm is not installed; install it with: pip install 'rfbench[torchcfm]'"
        ) from None
    if weights not in TORCHCFM_WEIGHTS:
        choices = list(TORCHCFM_WEIGHTS)
        raise UserError(f"torchcfm weights must be one of {choices}, got {weights!r}")
    state = _torchcfm_state_dict(
        load_weights_only(path, "torchcfm checkpoint"), path, TORCHCFM_WEIGHTS[weights]
    )
    cfg = {**TORCHCFM_CIFAR10, **(config or {})}
    cfg["dim"] = tuple(cfg["dim"])
    try:
        net = UNetModelWrapper(**cfg)
    except Exception as e:  # noqa: BLE001 - any constructor failure is a bad config
        raise UserError(f"cannot build torchcfm's UNet from config {cfg}: {first_line(e)}") from e
    _check_state_dict(state, net.state_dict(), path, cfg)
    net.load_state_dict(state)
    return TorchCFMVelocity(net).eval().requires_grad_(False)


def _torchcfm_state_dict(payload: object, path: str, key: str) -> dict[str, torch.Tensor]:
    """payload[key] (or the payload itself if it is a bare state dict), without ``module.``."""
    if not isinstance(payload, dict):
        raise UserError(f"{path} holds a {type(payload).__name__}, not a torchcfm checkpoint dict")
    if key in payload:
        state = payload[key]
    elif payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload  # a bare state dict
    else:
        found = ", ".join(map(str, list(payload)[:8])) + (", ..." if len(payload) > 8 else "")
        raise UserError(
            f"{path} is not a torchcfm checkpoint: no {key!r} entry (keys: {found or 'none'})"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: {key!r} is not a state dict (a dict of tensors)")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _check_state_dict(state: dict, expected: dict, path: str, cfg: dict) -> None:
    """One line on how the file's weights differ from the config's UNet, with a hint."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        return
    first = (reshaped or missing or unexpected)[0]
    hint = "pass the config the model was trained with, e.g. config={'num_channels': 32}"
    conv = state.get("input_blocks.0.0.weight")
    if conv is not None and conv.dim() == 4:
        hint = (
            f"its first convolution maps {conv.shape[1]} image channels to {conv.shape[0]}: "
            f"pass config={{'num_channels': {conv.shape[0]}, ...}} as it was trained "
            f"(num_res_blocks, channel_mult, attention_resolutions, num_heads, num_head_channels)"
        )
    raise UserError(
        f"the weights in {path} do not match torchcfm's UNet for num_channels="
        f"{cfg['num_channels']}, num_res_blocks={cfg['num_res_blocks']}, channel_mult="
        f"{list(cfg['channel_mult'])} ({len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(reshaped)} of another shape, e.g. {first}); {hint}"
    )


# Plugins.

_PLUGIN_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_plugin(spec: str, kwargs: dict | None = None) -> nn.Module:
    """The velocity model made by ``callable(**kwargs)`` for spec "package.module:callable".

    The callable returns an ``nn.Module`` or any callable f(x, t) (wrapped in a module) in
    the plugin's own time convention; ``ConventionAdapter`` adapts it.

    >>> model = load_plugin("mypkg.models:make_velocity", {"width": 64})  # doctest: +SKIP
    """
    kwargs = dict(kwargs or {})
    if not _PLUGIN_SPEC.fullmatch(spec):
        raise UserError(f"plugin {spec!r} is not of the form package.module:callable")
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` would: a module
        sys.path.append(os.getcwd())  # beside the user is found by the console script too
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a plugin module may fail to import in any way
        raise UserError(f"cannot import plugin module {module_name!r}: {first_line(e)}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"plugin module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"plugin {spec}: {attr} is not callable")
    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError as e:
        raise UserError(f"plugin {spec} does not take config {sorted(kwargs)}: {e}") from None
    except ValueError:
        pass  # no signature to check (some builtins)
    try:
        made = obj(**kwargs)
    except Exception as e:  # noqa: BLE001 - the plugin's own failure, reported in one line
        raise UserError(f"plugin {spec} failed: {first_line(e)}") from e
    if isinstance(made, nn.Module):
        return made
    if callable(made):
        return CallableModule(made)
    raise UserError(
        f"plugin {spec} returned a {type(made).__name__}, not a velocity model "
        f"(an nn.Module or a callable f(x, t))"
    )


# One entry point.


@dataclass
class ExternalModel:
    """An external model ready for rfbench: ``model(x, t)`` in rfbench's convention."""

    model: nn.Module  # convention-adapted
    model_id: str  # torchcfm-<8 hex of the weights' sha256>, plugin-<name>-<8 hex>
    sample_shape: tuple[int, ...]
    source: str  # the reference: torchcfm:PATH or plugin:module:callable
    convention: str  # TimeConvention.label of the wrapped model


def is_external(ref: str) -> bool:
    """Whether ``ref`` names an external model (torchcfm:PATH or plugin:module:callable)."""
    return ref.startswith(EXTERNAL_PREFIXES)


def load_external(
    ref: str,
    sample_shape: tuple[int, ...],
    convention: TimeConvention = RFBENCH_TIME,
    config: dict | None = None,
    device: str | torch.device = "cpu",
) -> ExternalModel:
    """Load ``torchcfm:PATH`` or ``plugin:package.module:callable``, adapt its time
    convention, move it to ``device`` and check that it maps a batch of samples of
    ``sample_shape`` to velocities of the same shape.

    ``config`` is the torchcfm architecture (keys of ``TORCHCFM_CIFAR10``; ``dim`` defaults
    to ``sample_shape``, and a "weights" key picks "ema" or "net"), or the plugin's keyword
    arguments.

    >>> m = load_external("plugin:tests.plugins.velocity:make", (2,), config={"scale": 2.0})
    >>> m.model_id.startswith("plugin-make-"), m.convention
    (True, 't0-noise')
    """
    sample_shape, config = tuple(sample_shape), dict(config or {})
    if ref.startswith("torchcfm:"):
        weights = config.pop("weights", "ema")
        if len(sample_shape) == 3:
            config.setdefault("dim", sample_shape)
        net = load_torchcfm(ref.removeprefix("torchcfm:"), config, weights)
        model_id = f"torchcfm-{state_sha256(net.net.state_dict())[:8]}"
    elif ref.startswith("plugin:"):
        spec = ref.removeprefix("plugin:")
        net = load_plugin(spec, config)
        state = net.state_dict()
        digest = state_sha256(state, extra=repr(sorted(config.items())) + ("" if state else spec))
        model_id = f"plugin-{spec.rsplit(':', 1)[-1].rsplit('.', 1)[-1]}-{digest[:8]}"
    else:
        raise UserError(
            f"{ref!r} is not an external model: expected torchcfm:PATH or "
            "plugin:package.module:callable"
        )
    model = ConventionAdapter(net, convention).to(device).eval().requires_grad_(False)
    _probe(model, sample_shape, ref, device)
    return ExternalModel(model, model_id, sample_shape, ref, convention.label)


def state_sha256(state: dict[str, torch.Tensor], extra: str = "") -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in name order), and ``extra``."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(extra.encode())
    return h.hexdigest()


@torch.no_grad()
def _probe(model: nn.Module, sample_shape: tuple[int, ...], ref: str, device) -> None:
    """One call on 2 zero samples at t = 0.5: the velocity must have the input's shape."""
    x = torch.zeros(2, *sample_shape, device=device)
    try:
        out = model(x, torch.full((2,), 0.5, device=device))
    except Exception as e:  # noqa: BLE001 - any failure here means the model does not fit
        raise UserError(
            f"{ref} fails on a batch of 2 samples of shape {sample_shape} (the dataset's): "
            f"{first_line(e)}"
        ) from e
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != list(x.shape):
        raise UserError(
            f"{ref} returns velocities of shape {got} for inputs of shape {list(x.shape)}; "
            f"they must match (the dataset's sample shape is {sample_shape})"
        )
