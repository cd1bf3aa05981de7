"""Training loop for rectified-flow velocity models: AdamW, gradient clipping, EMA, resume.

Checkpoints are plain dicts of tensors and primitives, saved with ``torch.save`` and loaded
with ``weights_only=True``: loading one never runs arbitrary pickled code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from rfbench.config import MLPConfig, TrainConfig, UNetConfig
from rfbench.data import DataSplit
from rfbench.errors import UserError
from rfbench.flow import endpoint, interpolate, rf_loss, sample_grid_t, sample_t
from rfbench.models import build_model
from rfbench.safeload import load_dict

CHECKPOINT_FORMAT = "rfbench-checkpoint-v1"
LOSSES = ("l2", "lpips")


@dataclass(frozen=True)
class Lineage:
    """Where a reflowed or distilled model comes from (absent for a 1-RF model)."""

    k: int  # the rectified flow's generation: 2 for a model trained on a 1-RF's pairs
    parent: str  # model_id of the model that made the pairs (and gave the initial weights)
    parent_path: str
    pair_solver: str
    pair_setting: str  # "steps=16", or "rtol=0.001 atol=0.001"
    pairs: int
    distill_steps: int | None = None  # a model distilled to this many Euler steps

    @property
    def tag(self) -> str:
        """``2rf``, or ``2rf-d1`` for a 2-RF distilled to one step."""
        base = f"{self.k}rf"
        return base if self.distill_steps is None else f"{base}-d{self.distill_steps}"


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network, and what it was trained on."""

    dataset: str
    sample_shape: tuple[int, ...]
    unet: UNetConfig
    mlp: MLPConfig
    train: TrainConfig
    data_hash: str  # of the training split, or of the pairs for a reflowed model
    preset: str = ""
    lineage: Lineage | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def k(self) -> int:
        return 1 if self.lineage is None else self.lineage.k

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        unet = UNetConfig(**{k: tup(v) for k, v in d["unet"].items()})
        return cls(
            dataset=d["dataset"],
            sample_shape=tuple(d["sample_shape"]),
            unet=unet,
            mlp=MLPConfig(**d["mlp"]),
            train=TrainConfig(**d["train"]),
            data_hash=d["data_hash"],
            preset=d.get("preset", ""),
            lineage=Lineage(**d["lineage"]) if d.get("lineage") else None,
        )


@dataclass
class TrainedModel:
    """The EMA network, ready to sample, with its provenance."""

    model: nn.Module
    spec: ModelSpec
    epochs_done: int
    losses: list[float]  # mean training loss per epoch
    path: str | None = None

    @property
    def model_id(self) -> str:
        """``<dataset>-<preset>-<first 8 hex of the sha256 of the weights>``, with the lineage
        tag before the hash for a reflowed or distilled model (``...-2rf-1a2b3c4d``)."""
        tag = f"{self.spec.lineage.tag}-" if self.spec.lineage else ""
        return (
            f"{self.spec.dataset}-{self.spec.preset or 'custom'}-{tag}"
            f"{weights_hash(self.model)[:8]}"
        )


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameters only; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up so that early EMA weights are not dominated by the initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


def train(
    spec: ModelSpec,
    data: DataSplit,
    *,
    device: str | torch.device = "cpu",
    out_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    x0: torch.Tensor | None = None,
    init: nn.Module | None = None,
) -> TrainedModel:
    """Train a velocity model with the rectified-flow loss; checkpoint after every epoch.

    By default x0 is fresh noise for every batch (1-RF). Reflow passes the noise ``x0`` that
    the parent model carried to ``data.x`` (pairs, row for row), and the parent as ``init``,
    whose weights the training starts from. A spec whose lineage has ``distill_steps`` k
    trains only at the k Euler times, so that k Euler steps map x0 to its x1.

    With ``resume=True`` and an existing checkpoint at ``out_path``, training continues
    from its last finished epoch; the data shuffle of every epoch depends only on
    (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.

    >>> from rfbench.config import PRESETS
    >>> from rfbench.data import load_split
    >>> data = load_split("toy2d")
    >>> p = PRESETS["quick"]
    >>> spec = ModelSpec("toy2d", (2,), p.unet, p.mlp, TrainConfig(epochs=1, batch_size=512),
    ...                  data.content_hash, "quick")
    >>> trained = train(spec, data, progress=False)
    >>> trained.epochs_done
    1
    """
    cfg = spec.train
    if data.content_hash != spec.data_hash:
        raise UserError("the training data does not match the data hash in the model spec")
    if x0 is not None and x0.shape != data.x.shape:
        raise ValueError(f"x0 {list(x0.shape)} does not pair with the data {list(data.x.shape)}")
    torch.manual_seed(cfg.seed)
    model = build_model(spec.sample_shape, spec.unet, spec.mlp).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    distill = spec.lineage.distill_steps if spec.lineage else None
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown loss {cfg.loss!r}; choose from {', '.join(LOSSES)}")
    if cfg.loss != "l2" and not distill:
        raise UserError(f"the {cfg.loss} loss applies to distillation only (--distill K)")
    lpips = None
    if cfg.loss == "lpips":
        from rfbench.metrics.lpips import lpips_network

        lpips = lpips_network().to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch, step, losses = 0, 0, []

    if resume and out_path is not None and Path(out_path).exists():
        ckpt = read_checkpoint(out_path)
        if ModelSpec.from_dict(ckpt["spec"]) != spec:
            raise UserError(f"cannot resume {out_path}: it was trained with another config or data")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        epoch, step, losses = ckpt["epoch"], ckpt["step"], list(ckpt["losses"])

    x_all = data.x if cfg.max_train_images is None else data.x[: cfg.max_train_images]
    n = len(x_all)
    batches_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    model.train()
    while epoch < cfg.epochs:
        # Section: one epoch, its randomness a function of (seed, epoch) only.
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        total, bar = (
            0.0,
            tqdm(
                range(batches_per_epoch),
                desc=f"train {spec.dataset} epoch {epoch + 1}/{cfg.epochs}",
                disable=None if progress is None else not progress,
                leave=False,
            ),
        )
        for b in bar:
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x1 = x_all[idx].to(device, non_blocking=True)
            noise = torch.randn(x1.shape, generator=g) if x0 is None else x0[idx]
            if distill:
                t = sample_grid_t(len(idx), distill, generator=g)
            else:
                t = sample_t(len(idx), generator=g, dist=cfg.timesteps)
            noise, t = noise.to(device), t.to(device)
            loss = train_step(model, ema, opt, noise, x1, t, cfg, step, lpips)
            step += 1
            value = loss.item()
            total += value
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        epoch += 1
        losses.append(total / batches_per_epoch)
        # Section: checkpoint the finished epoch, atomically.
        if out_path is not None:
            write_checkpoint(
                out_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "spec": spec.to_dict(),
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "losses": losses,
                    "ema_sha256": weights_hash(ema),
                },
            )
    ema.eval()
    return TrainedModel(ema, spec, epoch, losses, str(out_path) if out_path else None)


def train_step(
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    cfg: TrainConfig,
    step: int,
    lpips: nn.Module | None = None,
) -> torch.Tensor:
    """One optimisation step: the rectified-flow loss (or, distilling with LPIPS, the LPIPS
    of the Euler step to t = 1), AdamW, gradient clipping, the EMA. Returns the loss."""
    if lpips is None:
        loss = rf_loss(model, x0, x1, t)
    else:  # the Euler step to t = 1 from the straight path must land on x1
        from rfbench.metrics.lpips import lpips_loss

        x_t = interpolate(x0, x1, t)
        loss = lpips_loss(lpips, endpoint(x_t, t, model(x_t, t)), x1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
    return loss.detach()


def write_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything else."""
    return load_dict(path, "checkpoint", CHECKPOINT_FORMAT)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the EMA network of a checkpoint."""
    ckpt = read_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    model = build_model(spec.sample_shape, spec.unet, spec.mlp)
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise UserError(
            f"checkpoint {path} does not match its own config: {str(e)[:200]}"
        ) from None
    recorded = ckpt.get("ema_sha256")
    if recorded is not None and weights_hash(model) != recorded:
        raise UserError(
            f"checkpoint {path}: its EMA weights do not match the sha256 recorded with them "
            "(the file is corrupt or was edited)"
        )
    model.to(device).eval().requires_grad_(False)
    return TrainedModel(model, spec, ckpt["epoch"], list(ckpt["losses"]), str(path))
