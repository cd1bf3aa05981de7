"""Training loop for rectified-flow velocity models: AdamW, gradient clipping, EMA, resume.

Checkpoints are plain dicts of tensors and primitives, saved with ``torch.save`` and loaded
with ``weights_only=True``: loading one never runs arbitrary pickled code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rfbench.atomic import atomic_torch_save
from rfbench.config import MLPConfig, TrainConfig, UNetConfig
from rfbench.data import DataSplit
from rfbench.distributed import World
from rfbench.errors import UserError, first_line
from rfbench.flow import endpoint, interpolate, rf_loss, sample_grid_t, sample_t
from rfbench.models import build_model
from rfbench.safeload import load_dict

log = logging.getLogger("rfbench")

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
    pair_seed: int | None = None  # the noise seed of its pairs (None: not recorded)
    pair_stream: str | None = None  # their noise stream; None: made before streams, "samples"

    def evaluation_overlap(self, seeds, pair_seed: int | None = None) -> list[int] | None:
        """The evaluation seeds that were this model's training noise: none for pairs from
        the "pairs" stream; for older pairs, drawn from the evaluation's own stream, their
        seed (``pair_seed`` where the lineage does not record it, e.g. from the pairs'
        manifest). None when that seed is unknown: any seed may be training noise."""
        if self.pair_stream == "pairs":
            return []
        if self.pair_stream not in (None, "samples"):
            raise UserError(f"unknown pair noise stream {self.pair_stream!r} in the lineage")
        seed = self.pair_seed if self.pair_seed is not None else pair_seed
        return None if seed is None else [s for s in seeds if s == seed]

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
        try:
            return cls._from_dict(d)
        except (TypeError, KeyError) as e:
            raise UserError(
                f"the model's config does not fit this rfbench ({e}); was it written by "
                "another version?"
            ) from None

    @classmethod
    def _from_dict(cls, d: dict) -> ModelSpec:
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one training epoch: seed * 1000003 + epoch, wrapped to the 64
    bits torch takes (unchanged below seeds of about 1.8e13)."""
    return (seed * 1_000_003 + epoch) % 2**64


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
    world: World | None = None,
    workers: int = 0,
) -> TrainedModel:
    """Train a velocity model with the rectified-flow loss; checkpoint after every epoch.

    Args:
        spec: the network and its recipe (``ModelSpec``: UNet or MLP config, TrainConfig,
            the training data's hash, and for a reflowed model its lineage).
        data: the training split, in [-1, 1]; its content hash must be the spec's.
        device: where to train.
        out_path: the checkpoint, written atomically after every epoch (None: none).
        resume: continue the checkpoint at ``out_path`` from its last finished epoch; the
            data shuffle of every epoch depends only on (seed, epoch), so a resumed run
            sees the same batches as an uninterrupted one.
        progress: progress bars (None: on a terminal).
        x0, init: reflow passes the noise ``x0`` that the parent model carried to
            ``data.x`` (pairs, row for row), and the parent as ``init``, whose weights the
            training starts from. By default x0 is fresh noise for every batch (1-RF). A
            spec whose lineage has ``distill_steps`` k trains only at the k Euler times.
        world: the processes of a torchrun launch (DDP); rank 0 writes the checkpoint.
        workers: DataLoader worker processes.

    Returns:
        ``TrainedModel``: the EMA network, ready to sample, with its spec and losses.

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
    cfg, world, device = spec.train, world or World(), torch.device(device)
    if data.content_hash != spec.data_hash:
        raise UserError("the training data does not match the data hash in the model spec")
    if x0 is not None and x0.shape != data.x.shape:
        raise ValueError(f"x0 {list(x0.shape)} does not pair with the data {list(data.x.shape)}")
    state = _TrainState.start(spec, device, init, out_path if resume else None)
    x_all = data.x if cfg.max_train_images is None else data.x[: cfg.max_train_images]
    tensors = (x_all,) if x0 is None else (x_all, x0[: len(x_all)])
    net = state.model
    if world.distributed:
        net = DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    state.model.train()
    while state.epoch < cfg.epochs:
        start = time.perf_counter()
        total = _train_epoch(state, net, tensors, world, device, workers, progress)
        state.epoch += 1
        state.losses.append(world.sum(total) / -(-len(x_all) // cfg.batch_size))
        if world.main:  # a line per epoch, also where no progress bar shows (logs, CI)
            log.info(
                "train %s epoch %d/%d: mean loss %.5f, %.1f s",
                spec.dataset,
                state.epoch,
                cfg.epochs,
                state.losses[-1],
                time.perf_counter() - start,
            )
        if out_path is not None and world.main:  # atomically; the other ranks wait
            write_checkpoint(out_path, state.checkpoint())
        world.barrier()
    state.ema.eval()
    return TrainedModel(
        state.ema, spec, state.epoch, state.losses, str(out_path) if out_path else None
    )


@dataclass
class _TrainState:
    """What training carries from step to step, and what a checkpoint holds."""

    spec: ModelSpec
    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    lpips: nn.Module | None  # distillation with the LPIPS loss
    epoch: int = 0
    step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)

    @classmethod
    def start(
        cls,
        spec: ModelSpec,
        device: torch.device,
        init: nn.Module | None,
        resume_from: str | os.PathLike | None,
    ) -> _TrainState:
        """A fresh state (from ``init``'s weights, if given), or the checkpoint at
        ``resume_from`` where one exists, which must be of this spec."""
        cfg = spec.train
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
        state = cls(spec, model, ema, opt, lpips)
        if resume_from is not None and Path(resume_from).exists():
            ckpt = read_checkpoint(resume_from)
            if ModelSpec.from_dict(ckpt["spec"]) != spec:
                raise UserError(
                    f"cannot resume {resume_from}: it was trained with another config or data"
                )
            model.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            opt.load_state_dict(ckpt["optimizer"])
            state.epoch, state.step, state.losses = (
                ckpt["epoch"],
                ckpt["step"],
                list(ckpt["losses"]),
            )
        return state

    def checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "losses": self.losses,
            "ema_sha256": weights_hash(self.ema),
        }


def _train_epoch(
    state: _TrainState,
    net: nn.Module,
    tensors: tuple[torch.Tensor, ...],
    world: World,
    device: torch.device,
    workers: int,
    progress: bool | None,
) -> float:
    """One epoch over ``tensors`` (x1, and x0 for reflow): its batches, their noise, times
    and flips drawn from a generator of (seed, epoch) alone, each rank a share of every
    global batch. Returns this rank's weighted sum of batch losses."""
    cfg, spec = state.spec.train, state.spec
    n, pin = len(tensors[0]), device.type == "cuda"
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, state.epoch))
    batches = torch.randperm(n, generator=g).split(cfg.batch_size)
    shares = [_share(len(idx), world) for idx in batches]
    loader = DataLoader(
        _Rows(*tensors),
        batch_sampler=[idx[pos].tolist() for idx, (pos, _) in zip(batches, shares)],
        num_workers=workers,
        pin_memory=pin,
        collate_fn=_as_is,
    )
    bar = tqdm(
        zip(batches, shares, loader),
        total=len(batches),
        desc=f"train {spec.dataset} epoch {state.epoch + 1}/{cfg.epochs}",
        disable=True if not world.main else None if progress is None else not progress,
        leave=False,
    )
    distill = spec.lineage.distill_steps if spec.lineage else None
    total = 0.0
    for idx, (pos, weight), rows in bar:
        x0, x1, t = _batch_inputs(rows, len(idx), pos, g, cfg, distill, tensors[0].shape[1:])
        x0, x1, t = (v.to(device, non_blocking=pin) for v in (x0, x1, t))
        if cfg.warmup_steps:
            for group in state.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (state.step + 1) / cfg.warmup_steps)
        loss = train_step(
            net, state.ema, state.opt, x0, x1, t, cfg, state.step, state.lpips, weight
        )
        state.step += 1
        value = float(loss)  # this rank's; the epoch's mean is the global batches'
        total += value * weight / world.size
        bar.set_postfix(loss=f"{value:.4f}")
    bar.close()
    return total


def _batch_inputs(
    rows: tuple[torch.Tensor, ...],
    full: int,
    pos: torch.Tensor,
    g: torch.Generator,
    cfg: TrainConfig,
    distill: int | None,
    shape: torch.Size,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, x1, t) of this rank's share ``pos`` of a global batch of ``full`` rows: noise,
    times and flips are drawn for the whole batch, in this order, alike on every rank."""
    x1 = rows[0]
    x0 = torch.randn(full, *shape, generator=g)[pos] if len(rows) == 1 else rows[1]
    if distill:
        t = sample_grid_t(full, distill, generator=g)[pos]
    else:
        t = sample_t(full, generator=g, dist=cfg.timesteps)[pos]
    if cfg.random_flip and x1.dim() == 4:
        flip = (torch.rand(full, generator=g) < 0.5)[pos]
        x1 = torch.where(flip[:, None, None, None], x1.flip(-1), x1)
    return x0, x1, t


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
    weight: float = 1.0,
) -> torch.Tensor:
    """One optimisation step: the rectified-flow loss (or, distilling with LPIPS, the LPIPS
    of the Euler step to t = 1), AdamW, gradient clipping, the EMA. Returns the loss; the
    gradient is that of ``weight`` times the loss (a rank's share of a DDP batch)."""
    if lpips is None:
        loss = rf_loss(model, x0, x1, t)
    else:  # the Euler step to t = 1 from the straight path must land on x1
        from rfbench.metrics.lpips import lpips_loss

        x_t = interpolate(x0, x1, t)
        loss = lpips_loss(lpips, endpoint(x_t, t, model(x_t, t)), x1)
    opt.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
    return loss.detach()


class _Rows(Dataset):
    """Rows of in-memory tensors, fetched a batch at a time: (x1,) or (x1, x0)."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def _as_is(batch):
    return batch


def _share(full: int, world: World) -> tuple[torch.Tensor, float]:
    """The positions of this rank's samples in a global batch of ``full`` (every
    ``world.size``-th) and the weight of their mean loss: DDP averages gradients over
    ranks, so a share of k samples weighs k * size / full and the average is the global
    batch's mean gradient. A rank left without a sample (a last batch smaller than the
    world) takes position 0 with weight 0, so that DDP's exchange still has every rank."""
    pos = torch.arange(world.rank, full, world.size)
    if not len(pos):
        return torch.zeros(1, dtype=torch.long), 0.0
    return pos, len(pos) * world.size / full


def write_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)


CHECKPOINT_KEYS = ("spec", "ema", "epoch", "losses")  # what every checkpoint holds


def read_checkpoint(path: str | os.PathLike, remedy: str = "") -> dict:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything else, including a
    dict that lacks one of CHECKPOINT_KEYS. ``remedy`` ends the messages."""
    ckpt = load_dict(path, "checkpoint", CHECKPOINT_FORMAT, remedy)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} holds no {', '.join(missing)}{remedy}")
    return ckpt


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", remedy: str = ""
) -> TrainedModel:
    """Rebuild the EMA network of a checkpoint. ``remedy`` ends every error message (the
    model cache says which file to delete)."""
    try:
        return _load_model(path, device)
    except UserError as e:
        raise UserError(f"{e}{remedy}") from None


def _load_model(path: str | os.PathLike, device: str | torch.device) -> TrainedModel:
    ckpt = read_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(ckpt["spec"])
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    try:
        model = build_model(spec.sample_shape, spec.unet, spec.mlp)
        model.load_state_dict(ckpt["ema"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise UserError(
            f"checkpoint {path} does not match its own config: {first_line(e, 200)}"
        ) from None
    recorded = ckpt.get("ema_sha256")
    if recorded is not None and weights_hash(model) != recorded:
        raise UserError(
            f"checkpoint {path}: its EMA weights do not match the sha256 recorded with them "
            "(the file is corrupt or was edited)"
        )
    model.to(device).eval().requires_grad_(False)
    return TrainedModel(model, spec, ckpt["epoch"], list(ckpt["losses"]), str(path))
