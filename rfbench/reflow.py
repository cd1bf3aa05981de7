"""Reflow (k-rectified flow) and few-step distillation (Liu, Gong & Liu 2023, sections 2.2-2.3).

A k-RF model carries noise x0 to x1 = ODE(x0). Training a new flow on those pairs, starting
from the k-RF weights, gives the (k+1)-RF, whose paths are straighter: the pairs are already
coupled, so the straight interpolations between them cross less. Distillation trains on the
same pairs only at the k Euler times, so that k Euler steps map x0 to its x1.

Pairs are generated in shards under ``DIR/pairs/``: ``shard-00000.pt`` holds pairs
[0, shard_size) and so on, each written atomically, with ``manifest.json`` recording the
parent model, the solver and its setting, the seed and each shard's NFE. Pair i starts from
``noise(seed, [i], stream="pairs")``, so an interrupted generation resumes at the first
missing shard and produces exactly the pairs an uninterrupted one would: none duplicated,
none dropped. The "pairs" noise stream is not the one evaluation draws from ("samples"), so
a reflowed model is never scored on its own training noise, whatever the seeds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rfbench.atomic import atomic_torch_save, atomic_write_text
from rfbench.config import TrainConfig
from rfbench.data import DataSplit, content_hash
from rfbench.errors import UserError
from rfbench.flow import T_DATA, T_NOISE
from rfbench.runtime import Acceleration, prepared
from rfbench.safeload import load_dict
from rfbench.sample import Batching, Measuring, integrate, noise
from rfbench.solvers import LABEL_PARTS, Setting
from rfbench.train import Lineage, ModelSpec, TrainedModel, train

log = logging.getLogger("rfbench")

PAIRS_FORMAT = "rfbench-pairs-v1"


@dataclass(frozen=True)
class PairSpec:
    """What a set of pairs is: any change means other pairs, never a mix. The solver's
    setting is kept field by field, as the manifest records it."""

    parent: str  # model_id
    solver: str
    steps: int | None
    rtol: float | None
    atol: float | None
    grid: str | None
    pairs: int
    seed: int
    shard_size: int
    sample_shape: tuple[int, ...]
    stream: str = "pairs"  # the noise stream of x0 (sample.NOISE_STREAMS)

    @property
    def setting(self) -> Setting:
        return Setting(
            self.solver, steps=self.steps, grid=self.grid, rtol=self.rtol, atol=self.atol
        )


def pair_spec(
    parent: TrainedModel,
    pairs: int,
    setting: Setting | str,
    *,
    seed: int = 0,
    shard_size: int = 1000,
    **fields,
) -> PairSpec:
    """The spec of ``pairs`` pairs from ``parent`` made with ``setting`` (a Setting, or a
    solver's name and the setting's ``fields``)."""
    if pairs < 1 or shard_size < 1:
        raise UserError("--pairs and the shard size must be >= 1")
    if isinstance(setting, str):
        setting = Setting(setting, **fields)
    s = setting
    if s.stepping != "batched" or s.options:
        raise UserError(
            f"reflow pairs are made with batched stepping and no solver options; got "
            f"{s.solver} {s.label(LABEL_PARTS)} (the pairs' manifest records solver, steps, "
            "grid and tolerances only)"
        )
    return PairSpec(
        parent.model_id,
        s.solver,
        s.steps,
        s.rtol,
        s.atol,
        s.grid,
        pairs,
        seed,
        shard_size,
        tuple(parent.spec.sample_shape),
    )


class PairStore:
    """The shards and manifest of one set of pairs in ``DIR/pairs``."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / "pairs"
        self.manifest_path = self.dir / "manifest.json"

    def manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {self.manifest_path}: {e}") from None

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def shard_path(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.pt"

    def open(self, spec: PairSpec) -> dict:
        """The manifest for ``spec``: the existing one (which must match), or a new one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest()
        wanted = json.loads(json.dumps(asdict(spec)))
        if manifest is None:
            manifest = {"format": PAIRS_FORMAT, "spec": wanted, "shards": {}}
            self._write_manifest(manifest)
        elif manifest.get("format") != PAIRS_FORMAT:
            raise UserError(f"{self.manifest_path} is not an rfbench pair manifest")
        elif manifest["spec"] != wanted:
            diff = sorted(k for k in wanted if manifest["spec"].get(k) != wanted[k])
            raise UserError(
                f"{self.dir} holds pairs made with another {', '.join(diff)}; choose another "
                "--out to make these"
            )
        return manifest

    def record(self, manifest: dict, index: int, info: dict) -> None:
        manifest["shards"][str(index)] = info
        self._write_manifest(manifest)

    def load(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """All pairs (x0, x1), in index order, after checking that every shard is there."""
        manifest = self.manifest()
        if manifest is None:
            raise UserError(f"no pairs in {self.dir}")
        spec = manifest["spec"]
        count = -(-spec["pairs"] // spec["shard_size"])
        missing = [i for i in range(count) if str(i) not in manifest["shards"]]
        if missing:
            raise UserError(
                f"{self.dir} is missing {len(missing)} of {count} shards; rerun with --resume"
            )
        x0s, x1s = [], []
        for i in range(count):
            shard = _read_shard(self.shard_path(i))
            lo, hi = manifest["shards"][str(i)]["lo"], manifest["shards"][str(i)]["hi"]
            if (shard["lo"], shard["hi"]) != (lo, hi) or len(shard["x1"]) != hi - lo:
                raise UserError(f"{self.shard_path(i)} does not hold pairs [{lo}, {hi})")
            x0s.append(shard["x0"])
            x1s.append(shard["x1"])
        return torch.cat(x0s), torch.cat(x1s), manifest


def _read_shard(path: Path) -> dict:
    return load_dict(path, "pair shard", PAIRS_FORMAT)


def generate_pairs(
    parent: TrainedModel,
    spec: PairSpec,
    out: str | os.PathLike,
    *,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    acceleration: Acceleration | None = None,
    progress: bool | None = None,
) -> PairStore:
    """Write the pairs of ``spec`` under ``out/pairs``, resuming at the first missing shard.

    ``acceleration`` is recorded per shard. channels_last and torch.compile change only
    the rounding of the parent's float32 sums (which can still move an adaptive solver's
    steps a little); bf16 changes the pairs themselves, so a pair set is made in one
    precision throughout: resuming it in another is refused."""
    store = PairStore(out)
    manifest = store.open(spec)
    count = -(-spec.pairs // spec.shard_size)
    todo = [i for i in range(count) if str(i) not in manifest["shards"]]
    if len(todo) < count:
        log.info("pairs: %d of %d shards already done in %s", count - len(todo), count, store.dir)
    device = torch.device(device)
    model, options = parent.model, acceleration or Acceleration()
    if todo:
        batch = min(batch_size, spec.shard_size, spec.pairs)
        model, options = prepared(parent.model, options, device, spec.sample_shape, [batch])
        made = {s.get("compute_dtype", "fp32") for s in manifest["shards"].values()}
        if made - {options.precision}:
            raise UserError(
                f"{store.dir} holds pairs made in {', '.join(sorted(made))}; resume them "
                f"with --precision {sorted(made)[0]}, not {options.precision}"
            )
    bar = tqdm(
        todo,
        desc=f"pairs ({spec.solver})",
        unit="shard",
        disable=None if progress is None else not progress,
    )
    for i in bar:
        lo, hi = i * spec.shard_size, min((i + 1) * spec.shard_size, spec.pairs)
        run = integrate(
            model,
            spec.setting,
            hi - lo,
            lambda a, b, lo=lo: noise(
                spec.seed, range(lo + a, lo + b), spec.sample_shape, spec.stream
            ),
            t0=T_NOISE,
            t1=T_DATA,
            device=device,
            batching=Batching(batch_size),
            measuring=Measuring(progress=False),
        )
        if not torch.isfinite(run.x).all():
            raise UserError(f"the parent's solve gave NaN or Inf in pairs [{lo}, {hi})")
        x0 = noise(spec.seed, range(lo, hi), spec.sample_shape, spec.stream)
        path = store.shard_path(i)
        atomic_torch_save({"format": PAIRS_FORMAT, "lo": lo, "hi": hi, "x0": x0, "x1": run.x}, path)
        store.record(
            manifest,
            i,
            {
                "lo": lo,
                "hi": hi,
                "nfe_per_sample": run.nfe_per_sample,
                "nfe_per_batch": run.nfe_per_solve,
                "wall_time_s": run.wall_time_s,
                **options.columns(),
            },
        )
    return store


def pairs_split(parent: TrainedModel, x1: torch.Tensor, x0: torch.Tensor) -> DataSplit:
    """The pairs' targets as a training split, hashed over both ends of every pair."""
    return DataSplit(
        name=parent.spec.dataset,
        split="pairs",
        x=x1,
        labels=None,
        content_hash=content_hash(x0.numpy(), x1.numpy()),
        source="reflow pairs",
    )


def recipe(
    parent: TrainedModel,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    timesteps: str = "uniform",
    loss: str = "l2",
    distill_steps: int | None = None,
) -> TrainConfig:
    """The recipe of the model trained on ``parent``'s pairs: the parent's, with these
    changes (None keeps the parent's). A loss other than L2 applies to distillation only;
    LPIPS needs its weights here, which is checked now, before any work."""
    if loss != "l2" and not distill_steps:
        raise UserError(f"--loss {loss} applies to distillation only (--distill K)")
    if loss == "lpips":
        from rfbench.metrics.lpips import lpips_network

        lpips_network()  # its weights are here, or one clear message
    out = replace(parent.spec.train, timesteps=timesteps, loss=loss)
    if epochs is not None:
        out = replace(out, epochs=epochs)
    if lr is not None:
        out = replace(out, lr=lr)
    return out


def reflow_spec(
    parent: TrainedModel,
    data: DataSplit,
    manifest: dict,
    recipe: TrainConfig,
    distill_steps: int | None = None,
) -> ModelSpec:
    """The spec of the model trained on ``parent``'s pairs: the (k+1)-RF, or with
    ``distill_steps`` the k-RF distilled to that many Euler steps."""
    saved = manifest["spec"]
    # Pairs made before the "pairs" stream drew from the evaluation's ("samples").
    pairs = PairSpec(**{"stream": "samples", **saved, "sample_shape": tuple(saved["sample_shape"])})
    if pairs.parent != parent.model_id:
        raise UserError(
            f"the pairs were made by {pairs.parent}, not by the checkpoint's {parent.model_id}"
        )
    k = parent.spec.k if distill_steps else parent.spec.k + 1
    lineage = Lineage(
        k=k,
        parent=parent.model_id,
        parent_path=str(parent.path or ""),
        pair_solver=pairs.solver,
        pair_setting=pairs.setting.lineage_text(),
        pairs=pairs.pairs,
        distill_steps=distill_steps,
        pair_seed=pairs.seed,
        pair_stream=pairs.stream,
    )
    return replace(parent.spec, train=recipe, data_hash=data.content_hash, lineage=lineage)


def reflow(
    parent: TrainedModel,
    store: PairStore,
    recipe: TrainConfig,
    out_path: str | os.PathLike,
    *,
    distill_steps: int | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool | None = None,
) -> TrainedModel:
    """Train on the pairs in ``store``, from the parent's weights; returns the new model."""
    x0, x1, manifest = store.load()
    data = pairs_split(parent, x1, x0)
    spec = reflow_spec(parent, data, manifest, recipe, distill_steps)
    return train(
        spec,
        data,
        device=device,
        out_path=out_path,
        resume=resume,
        progress=progress,
        x0=x0,
        init=parent.model,
    )
