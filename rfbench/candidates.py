"""The models on a run's model axis: which model a run trains, obtaining it (from the
cache, or trained), loading checkpoints and external models, and preparing each one as
the run samples it (precision, memory format, compilation, warm-up).

data -> model (this module) -> the grid runner (``rfbench.runner``)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from rfbench import data as datamod
from rfbench.config import RunConfig, cache_dir, check_preset
from rfbench.distributed import World
from rfbench.errors import UserError
from rfbench.runtime import Acceleration, prepared
from rfbench.train import Lineage, ModelSpec, TrainedModel, load_model, train

log = logging.getLogger("rfbench")


def model_spec(
    dataset: str, preset_name: str, data: datamod.DataSplit, seed: int, epochs: int | None = None
) -> ModelSpec:
    """What `run` trains for a dataset and preset: the preset's recipe (its toy2d recipe for
    vectors), with this seed and, if given, this many epochs."""
    p = check_preset(preset_name, dataset)
    recipe = p.toy_train if data.x.dim() == 2 else p.train
    recipe = replace(recipe, seed=seed, epochs=recipe.epochs if epochs is None else epochs)
    return ModelSpec(
        dataset, data.sample_shape, p.unet, p.mlp, recipe, data.content_hash, preset_name
    )


def preset_image_size(p, dataset: str, image_size: int | None) -> int | None:
    """--image-size, else the preset's for an image folder (blog-afhq: 128)."""
    if image_size is None and dataset == "image-folder":
        return p.image_size
    return image_size


def model_cache_path(spec: ModelSpec) -> Path:
    return (
        cache_dir()
        / "models"
        / f"{spec.dataset}-{spec.preset}-e{spec.train.epochs}-s{spec.train.seed}-"
        f"{spec.data_hash[:12]}.pt"
    )


def obtain_model(
    spec: ModelSpec,
    data: datamod.DataSplit,
    device: torch.device,
    progress: bool | None = None,
    world: World | None = None,
    workers: int = 0,
) -> TrainedModel:
    """The cached model for this spec, or train it (resuming a partly trained one)."""
    path = model_cache_path(spec)
    if path.exists():
        remedy = f"; it is rfbench's cached model: delete {path} and rfbench trains it again"
        trained = load_model(path, device, remedy)
        if trained.epochs_done >= spec.train.epochs and trained.spec == spec:
            log.info("reusing cached model %s (%s)", trained.model_id, path)
            return trained
    log.info(
        "training %s with preset %s for %d epoch(s) -> %s",
        spec.dataset,
        spec.preset,
        spec.train.epochs,
        path,
    )
    start = time.perf_counter()
    trained = train(
        spec,
        data,
        device=device,
        out_path=path,
        resume=True,
        progress=progress,
        world=world,
        workers=workers,
    )
    log.info(
        "trained %s in %.1f s; final loss %.4f",
        trained.model_id,
        time.perf_counter() - start,
        trained.losses[-1],
    )
    return trained


def install_model(
    checkpoint: str | Path, data_root: str | None = None
) -> tuple[TrainedModel, Path, bool]:
    """Put a finished checkpoint where ``run`` looks for the model it would train, so that
    ``run`` reuses it instead of training. It must be what ``run`` trains: its preset's
    recipe, on the local training split (the same content hash), with all its epochs.

    Returns the model, its cache path and whether it was copied (False: that very file is
    there already). A different file already at that path is never replaced."""
    import shutil

    from rfbench.atomic import atomic_write, ensure_writable_dir, sha256_of

    trained = load_model(checkpoint, "cpu")
    spec = trained.spec
    if spec.lineage is not None:
        raise UserError(
            f"{checkpoint} is a {spec.lineage.tag} model; `run` only ever trains 1-RF models, "
            f"so evaluate it with `rfbench run --checkpoint {checkpoint}` instead"
        )
    if not spec.preset:
        raise UserError(
            f"{checkpoint} names no preset, so no `run` asks for it; evaluate it with "
            f"`rfbench run --checkpoint {checkpoint}` instead"
        )
    from rfbench.config import PRESETS

    if spec.preset not in PRESETS:
        raise UserError(f"{checkpoint} names preset {spec.preset!r}, which this rfbench lacks")
    size = spec.sample_shape[-1] if spec.dataset == "image-folder" else None
    data = datamod.load_split(spec.dataset, "train", data_root, image_size=size)
    wanted = model_spec(spec.dataset, spec.preset, data, spec.train.seed, spec.train.epochs)
    if spec != wanted:
        raise UserError(
            f"{checkpoint} is not the model `run --dataset {spec.dataset} --preset "
            f"{spec.preset}` trains: {_differences(spec, wanted)}; evaluate it with "
            f"`rfbench run --checkpoint {checkpoint}` instead"
        )
    if trained.epochs_done < spec.train.epochs:
        raise UserError(
            f"{checkpoint} is partly trained ({trained.epochs_done} of {spec.train.epochs} "
            "epochs); finish it with `rfbench train ... --resume` first"
        )
    path = model_cache_path(spec)

    if path.is_dir():
        raise UserError(f"the model cache holds a directory at {path}; remove it first")
    if not path.exists():
        ensure_writable_dir(path.parent, "the model cache")
        try:
            with open(checkpoint, "rb") as src:
                atomic_write(path, lambda f: shutil.copyfileobj(src, f), replace=False)
            return trained, path, True
        except FileExistsError:
            pass  # written meanwhile (a run training this model): compared below
    if sha256_of(path) == sha256_of(checkpoint):
        return trained, path, False
    raise UserError(
        f"another file is cached for this model at {path}; it is left as it is: delete it "
        "first to put this checkpoint there"
    )


def _differences(have: ModelSpec, want: ModelSpec) -> str:
    """The fields in which a checkpoint's spec differs from what ``run`` would train, as
    'field: checkpoint's != run's' (the recipe field by field)."""
    pairs = [(n, getattr(have, n), getattr(want, n)) for n in ("sample_shape", "unet", "mlp")]
    pairs += [
        (f"train.{n}", getattr(have.train, n), getattr(want.train, n))
        for n in have.train.__dataclass_fields__
    ]
    out = [f"{n}: {a} != {b}" for n, a, b in pairs if a != b]
    if have.data_hash != want.data_hash:
        out.append(
            f"trained on data of sha256 {have.data_hash[:12]}, not the local split's "
            f"{want.data_hash[:12]}"
        )
    return "; ".join(out) or "its specs differ"


def load_checkpoint_for(spec: ModelSpec, checkpoint: str, device: torch.device) -> TrainedModel:
    """Load a checkpoint and check that it was made for this dataset and sample shape."""
    trained = load_model(checkpoint, device)
    if trained.spec.dataset != spec.dataset or trained.spec.sample_shape != spec.sample_shape:
        raise UserError(
            f"checkpoint {checkpoint} was trained on {trained.spec.dataset} "
            f"{list(trained.spec.sample_shape)}, not {spec.dataset} {list(spec.sample_shape)}"
        )
    return trained


@dataclass
class Candidate:
    """One model on the run's model axis, as it is sampled."""

    model_id: str
    model: nn.Module  # the network run with the run's acceleration options
    raw: nn.Module  # the same network, plain (for the trajectory figures)
    sample_shape: tuple[int, ...]
    columns: dict = field(default_factory=dict)  # how it ran: precision, channels_last, ...
    lineage: Lineage | None = None  # a reflowed or distilled model's pairs
    path: str | None = None  # its checkpoint

    @classmethod
    def of(cls, trained: TrainedModel) -> Candidate:
        m = trained.model
        return cls(
            trained.model_id,
            m,
            m,
            trained.spec.sample_shape,
            lineage=trained.spec.lineage,
            path=trained.path,
        )


def prepare(
    candidate: Candidate,
    options: Acceleration,
    device: torch.device,
    batch_sizes: set[int],
) -> Candidate:
    """The candidate with the run's acceleration options applied and warmed up at every
    batch size it will see (a compiled model compiles here, outside the timed solves)."""
    model, options = prepared(candidate.raw, options, device, candidate.sample_shape, batch_sizes)
    return replace(candidate, model=model, columns={**candidate.columns, **options.columns()})


def load_candidates(cfg: RunConfig, spec: ModelSpec, device: torch.device) -> list[Candidate]:
    """The models that ``--checkpoint`` names: rfbench checkpoints (checked against the
    dataset), and external models (torchcfm:PATH, plugin:MODULE:CALLABLE) adapted to
    rfbench's time convention."""
    from rfbench.models.external import TimeConvention, is_external, load_external

    refs = cfg.checkpoint or ()
    if not any(is_external(r) for r in refs):
        given = [
            name
            for name, value, default in (
                ("--noise-at", cfg.noise_at, 0),
                ("--time-scale", cfg.time_scale, 1.0),
                ("--model-config", cfg.model_config, None),
            )
            if value != default
        ]
        if given:
            raise UserError(
                f"{', '.join(given)} apply to external models only (--checkpoint torchcfm:PATH "
                "or plugin:MODULE:CALLABLE); rfbench's own checkpoints carry their convention"
            )
    out = []
    for ref in refs:
        if is_external(ref):
            convention = TimeConvention.parse(cfg.noise_at, cfg.time_scale)
            ext = load_external(ref, spec.sample_shape, convention, _model_config(cfg), device)
            out.append(
                Candidate(
                    ext.model_id,
                    ext.model,
                    ext.model,
                    ext.sample_shape,
                    {"time_convention": ext.convention},
                )
            )
        else:
            out.append(Candidate.of(load_checkpoint_for(spec, ref, device)))
    ids = [c.model_id for c in out]
    if len(set(ids)) < len(ids):
        raise UserError(f"--checkpoint names the same model twice: {', '.join(ids)}")
    for c in out:
        check_out_of_sample(c, cfg.seeds)
    return out


def check_out_of_sample(candidate: Candidate, seeds: tuple[int, ...]) -> None:
    """Refuse to score a reflowed model on its own training noise. Its pairs drew from a
    stream of their own unless an rfbench before that made them from the evaluation's
    stream; then their seed is in the lineage, or in the pairs' manifest beside the
    checkpoint (``reflow --out DIR`` writes both), and that seed is refused. Where neither
    says, every seed is suspect: a warning says so."""
    if candidate.lineage is None:
        return
    manifest_seed = None
    if candidate.path:
        manifest = Path(candidate.path).parent / "pairs" / "manifest.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            manifest_seed = json.loads(manifest.read_text())["spec"]["seed"]
    overlap = candidate.lineage.evaluation_overlap(seeds, manifest_seed)
    if overlap is None:
        log.warning(
            "%s was trained on pairs drawn from the evaluation's noise (an rfbench before pair "
            "noise had its own stream) with an unrecorded seed: the seed that made them is "
            "scored on its training noise",
            candidate.model_id,
        )
    elif overlap:
        raise UserError(
            f"{candidate.model_id} was trained on pairs whose noise is seed {overlap[0]} of "
            "the evaluation's (made by an rfbench before pair noise had its own stream): on "
            f"that seed it would be scored on its training noise; use --seeds without "
            f"{overlap[0]}"
        )


def _model_config(cfg: RunConfig) -> dict | None:
    if cfg.model_config is None:
        return None
    try:
        config = json.loads(Path(cfg.model_config).read_text())
    except OSError as e:
        raise UserError(f"cannot read --model-config {cfg.model_config}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--model-config {cfg.model_config} is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"--model-config {cfg.model_config} must hold a JSON object")
    return config
