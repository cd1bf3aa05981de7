"""The grid runner: the one module that wires the stages together.

data -> model (trained or loaded) -> solvers x settings x seeds -> samples
     -> metrics -> rows -> results.csv, table.md, figures/
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from rfbench import data as datamod
from rfbench.config import Preset, RunConfig, cache_dir, check_preset
from rfbench.data import to_uint8
from rfbench.distributed import World, batch_ranges, shard
from rfbench.errors import UserError
from rfbench.figures import make_all
from rfbench.report import frame_to_markdown
from rfbench.results import STATUS_FAILED, STATUS_OK, RunDir, cell_key
from rfbench.runtime import (
    Acceleration,
    accelerate,
    auto_batch_size,
    compile_or_fall_back,
    device_label,
    resolve_device,
)
from rfbench.sample import SampleRun, generate, merge_runs, noise, reconstruct, trajectory, warm_up
from rfbench.solvers import get_solver
from rfbench.train import Lineage, ModelSpec, TrainedModel, load_model, train

__all__ = ["device_label", "resolve_device", "run"]  # the device helpers live in runtime.py

log = logging.getLogger("rfbench")

TOY_REFERENCE_SEED = 12345  # seed of the fresh true-distribution sample that toy2d compares with
INVERSION_SAMPLES = 256  # test-split samples sent through the data -> noise -> data round trip
SAVED_SAMPLES = 64  # first samples of each cell kept for the sample-grid figures
TRAJECTORIES = 128  # toy2d paths traced per fixed-step cell for the trajectory figures


# Section: the model.


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


def load_checkpoint_for(spec: ModelSpec, checkpoint: str, device: torch.device) -> TrainedModel:
    """Load a checkpoint and check that it was made for this dataset and sample shape."""
    trained = load_model(checkpoint, device)
    if trained.spec.dataset != spec.dataset or trained.spec.sample_shape != spec.sample_shape:
        raise UserError(
            f"checkpoint {checkpoint} was trained on {trained.spec.dataset} "
            f"{list(trained.spec.sample_shape)}, not {spec.dataset} {list(spec.sample_shape)}"
        )
    return trained


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
    model, options = accelerate(candidate.raw, options, device, candidate.sample_shape)

    def warm(m: nn.Module) -> None:
        for b in sorted(batch_sizes):
            warm_up(m, candidate.sample_shape, b, device)

    model, options = compile_or_fall_back(model, options, warm)
    return replace(candidate, model=model, columns={**candidate.columns, **options.columns()})


# Section: the quality metric.


@dataclass
class Quality:
    """The quality metric of a run and the constant columns it adds to each row."""

    metric: object  # FidelityMetrics or ToyDistances: stream(n) -> .add(batch), .result()
    columns: dict  # feature_extractor, reference


INCEPTION_FEATURE_DIM = 2048


def resolve_extractor(cfg: RunConfig, train_split: datamod.DataSplit):
    """Check the extractor choice before any work: "auto" is the classifier where the data
    has labels, else Inception; Inception's weights are located and verified here. Returns
    the Inception Extractor, or None for the classifier (trained later) and for toy2d."""
    if datamod.get_dataset(cfg.dataset).kind == "toy":
        return None
    choice = cfg.feature_extractor
    if choice == "auto":
        choice = "classifier" if train_split.labels is not None else "inception"
    if choice == "classifier":
        if train_split.labels is None:
            raise UserError(
                f"dataset {cfg.dataset!r} has no labels, so the classifier extractor cannot be "
                "trained; use --feature-extractor inception"
            )
        return None
    from rfbench.metrics.inception import inception_extractor

    return inception_extractor(cfg.inception_weights)


def build_quality(
    dataset: str,
    train_split: datamod.DataSplit,
    test_split: datamod.DataSplit,
    metrics: tuple[str, ...],
    device: torch.device,
    n: int,
    progress: bool | None = None,
    reference: str = "train",
    extractor=None,
) -> Quality:
    """The quality metric of a run: exact distances for toy2d; torch-fidelity for images,
    against the ``reference`` split, with ``extractor`` (from ``resolve_extractor``) or
    else the offline classifier."""
    if datamod.get_dataset(dataset).kind == "toy":
        from rfbench.metrics.toy import ToyDistances

        ref = datamod.toy2d_sample(n, TOY_REFERENCE_SEED)
        return Quality(ToyDistances(ref), {"reference": f"toy2d-true-n{n}"})
    from rfbench.metrics.classifier import FEATURE_DIM, get_classifier
    from rfbench.metrics.fidelity import CLASSIFIER_EXTRACTOR, Extractor, FidelityMetrics

    feature_dim = INCEPTION_FEATURE_DIM
    if extractor is None:
        info = get_classifier(train_split, test_split, device=device, progress=progress)
        log.info("feature extractor %s (test accuracy %.4f)", info.name, info.test_accuracy)
        extractor, feature_dim = Extractor(CLASSIFIER_EXTRACTOR, info.name, info.path), FEATURE_DIM
    ref = train_split if reference == "train" else test_split
    if n < feature_dim:
        log.warning(
            "%d samples < %d feature dimensions: the sample covariance is rank-deficient and "
            "FID is strongly biased; compare only rows of equal n_samples",
            n,
            feature_dim,
        )
    return Quality(
        FidelityMetrics(ref, extractor, metrics, device=device),
        {
            "feature_extractor": extractor.label,
            "reference": f"{dataset}-{ref.split}-{ref.content_hash[:8]}",
        },
    )


# Section: the grid.


def grid_cells(cfg: RunConfig, default_steps: tuple[int, ...]) -> list[dict]:
    """Every (solver, setting, seed) cell, in a stable order.

    Fixed-step solvers vary over steps x grids; adaptive ones over tolerances x stepping.
    """
    cells = []
    for seed in cfg.seeds:
        for name in cfg.solvers:
            spec = get_solver(name)
            base = dict(solver=name, family=spec.family, seed=seed)
            if spec.adaptive:
                cells += [
                    dict(base, steps=None, grid=None, rtol=tol, atol=tol, stepping=mode)
                    for tol in cfg.tols
                    for mode in cfg.stepping
                ]
            else:
                cells += [
                    dict(base, steps=s, grid=g, rtol=None, atol=None, stepping="batched")
                    for g in cfg.grids
                    for s in (cfg.steps or default_steps)
                ]
    return cells


def run_cell(
    cell: dict,
    candidate: Candidate,
    quality: Quality,
    cfg: RunConfig,
    n: int,
    batch_size: int,
    device: torch.device,
    progress: bool | None,
    inversion_data: torch.Tensor | None = None,
    run_dir: RunDir | None = None,
    world: World | None = None,
) -> dict | None:
    """Sample one cell and measure it; a failure becomes a row with status=failed.

    Samples stream into the quality metric batch by batch; the first SAVED_SAMPLES are
    written to the run directory for the sample-grid figures (with toy2d trajectories).

    With several processes, each solves every ``world.size``-th batch of the batches one
    process would solve (so batched adaptive solvers see the same batches), and rank 0
    puts the shares together, computes the metric once and returns the row; the other
    ranks return None.
    """
    world = world or World()
    row = {
        "dataset": cfg.dataset,
        "model_id": candidate.model_id,
        **cell,
        "batch_size": batch_size,
        "n_samples": n,
        "device": device_label(device),
        "world_size": world.size,
        **candidate.columns,
        **quality.columns,
    }
    share = _solve_share(cell, candidate, quality, cfg, n, batch_size, device, progress, world)
    # The stream holds the metric's network: only its rows travel between processes.
    shares = world.gather(replace(share, stream=None)) if world.distributed else [share]
    if not world.main:
        return None
    try:
        errors = [
            f"rank {r}: {s.error}" if world.distributed else s.error
            for r, s in enumerate(shares)
            if s.error
        ]
        row["batch_size"] = min(s.batch_size for s in shares)
        if any(s.oom_retries for s in shares):
            row["oom_retries"] = max(s.oom_retries for s in shares)
        if errors:
            raise _CellFailed(errors[0])
        run = merge_runs([s.run for s in shares]) if world.distributed else shares[0].run
        row.update(
            nfe=run.nfe_per_sample,
            nfe_std=run.nfe_std,
            nfe_per_batch=";".join(map(str, run.nfe_per_solve)),
            nfe_total=int(sum(run.nfe_per_solve)),
            wall_time_s=run.wall_time_s,
            model_time_s=run.model_time_s,
            overhead_time_s=run.overhead_time_s,
            record_time_s=run.record_time_s,
            images_per_s=n / run.elapsed_s,
            straightness=float(run.straightness.mean()),
            curvature=float(run.curvature.nanmean()),
        )
        if all(v is not None for v in run.solver_nfe_per_solve):
            row["solver_nfe"] = ";".join(map(str, run.solver_nfe_per_solve))
        nonfinite = sum(s.nonfinite for s in shares)
        if nonfinite:
            raise FloatingPointError(f"{nonfinite} of {n} samples hold NaN or Inf")
        stream = _gathered_stream(quality, n, shares) if world.distributed else shares[0].stream
        row.update(stream.result())
        if run_dir is not None:
            _save_arrays(run_dir, row, run.x, candidate, cell)
        if inversion_data is not None:
            options = _solve_options(cell, cfg, device, progress)
            rec = reconstruct(
                candidate.model, cell["solver"], inversion_data, batch_size=batch_size, **options
            )
            row["inversion_rmse"] = rec.rmse
            row["inversion_nfe"] = rec.encode.nfe_per_sample + rec.decode.nfe_per_sample
        row["status"] = STATUS_OK
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
        log.debug("cell failed:\n%s", traceback.format_exc())
        message = str(e) if isinstance(e, _CellFailed) else f"{type(e).__name__}: {e}"
        row.update(status=STATUS_FAILED, error=message[:500])
    return row


class _CellFailed(Exception):
    """A failure already described (on one of the processes)."""


@dataclass
class _Share:
    """What one process solved of a cell."""

    run: SampleRun | None
    stream: object  # the metric's stream of this process's samples
    rows: dict  # its rows (features, or points), to send to rank 0
    nonfinite: int
    batch_size: int
    oom_retries: int
    error: str | None


def _solve_share(
    cell: dict,
    candidate: Candidate,
    quality: Quality,
    cfg: RunConfig,
    n: int,
    batch_size: int,
    device: torch.device,
    progress: bool | None,
    world: World,
) -> _Share:
    """Solve this process's share of a cell's samples, streaming them into the metric.

    On a GPU out of memory the batch is halved and the share tried again; the share's
    sample ranges stay those of the configured batch size, cut finer."""
    ranges = shard(batch_ranges(n, batch_size), world)
    options = _solve_options(cell, cfg, device, progress)
    b, retries = batch_size, 0
    stream, nonfinite = None, []
    try:
        while True:
            stream = quality.metric.stream(sum(hi - lo for lo, hi in ranges) or 1)
            nonfinite = []

            def sink(x: torch.Tensor, stream=stream, nonfinite=nonfinite) -> None:
                finite = torch.isfinite(x.flatten(1)).all(1)  # each batch into the metric
                if not finite.all():
                    nonfinite.append(int((~finite).sum()))
                elif not nonfinite:
                    stream.add(x)

            try:
                run = generate(
                    candidate.model,
                    cell["solver"],
                    n,
                    candidate.sample_shape,
                    seed=cell["seed"],
                    repeats=cfg.repeats,
                    record=True,
                    sink=sink,
                    keep=SAVED_SAMPLES,
                    batch_size=b,
                    ranges=ranges,
                    **options,
                )
                break
            except torch.cuda.OutOfMemoryError:
                if b == 1:
                    raise
                b, retries = max(1, b // 2), retries + 1
                log.warning("out of memory: %s retried at batch size %d", cell["solver"], b)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - reported in the cell's row
        log.debug("cell failed:\n%s", traceback.format_exc())
        return _Share(None, None, {}, 0, b, retries, f"{type(e).__name__}: {e}")
    rows = stream.rows() if world.distributed and not nonfinite else {}
    return _Share(run, stream, rows, sum(nonfinite), b, retries, None)


def _solve_options(cell: dict, cfg: RunConfig, device: torch.device, progress) -> dict:
    """The keyword arguments of ``integrate`` for a cell, batch size aside."""
    return dict(
        steps=cell["steps"],
        rtol=cell["rtol"],
        atol=cell["atol"],
        grid=cell["grid"] or "uniform",
        stepping=cell["stepping"],
        device=device,
        max_nfe=cfg.max_nfe,
        progress=progress,
    )


def _gathered_stream(quality: Quality, n: int, shares: list[_Share]):
    """The metric's stream of all n samples, from the rows each process computed, put back
    in sample order (KID's subsets and precision/recall depend on the order)."""
    pieces = []
    for share in shares:
        offset = 0
        for lo, hi in share.run.solve_ranges:
            pieces.append((lo, hi, share, offset))
            offset += hi - lo
    stream = quality.metric.stream(n)
    for lo, hi, share, offset in sorted(pieces, key=lambda p: p[0]):
        stream.add_rows({k: v[offset : offset + hi - lo] for k, v in share.rows.items()}, hi - lo)
    return stream


def _save_arrays(run_dir: RunDir, row: dict, x: torch.Tensor, candidate: Candidate, cell) -> None:
    if x.dim() == 4:
        run_dir.save_arrays("samples", row, x=to_uint8(x).numpy())
        return
    run_dir.save_arrays("samples", row, x=x.numpy())
    if cell["steps"] is not None:  # toy2d, fixed-step: trace its paths
        x0 = noise(cell["seed"], range(TRAJECTORIES), candidate.sample_shape)
        ts, xs = trajectory(
            candidate.raw,
            cell["solver"],
            x0,
            steps=int(cell["steps"]),
            grid=cell["grid"] or "uniform",
        )
        run_dir.save_arrays("trajectories", row, t=ts.numpy(), x=xs.float().numpy())


def _setup_logging(run_dir: RunDir) -> logging.Handler:
    handler = logging.FileHandler(run_dir.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


def _describe(row: dict) -> str:
    if row.get("steps") is not None:
        setting = f"steps={row['steps']} grid={row['grid']}"
    else:
        setting = f"rtol={row['rtol']:g} {row['stepping']}"
    if row.get("status") != STATUS_OK:
        return f"{row['solver']} {setting} seed={row['seed']}: FAILED {row.get('error')}"
    q = " ".join(
        f"{k}={row[k]:.4g}" for k in ("fid", "kid_mean", "swd", "inversion_rmse") if k in row
    )
    return (
        f"{row['solver']} {setting} seed={row['seed']}: nfe={row['nfe']:.1f} {q} "
        f"wall={row['wall_time_s']:.2f}s"
    )


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
        try:
            import json

            manifest_seed = json.loads(manifest.read_text())["spec"]["seed"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
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
    import json

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


def plan(cfg: RunConfig) -> tuple[Preset, list[dict]]:
    """Check what ``cfg`` asks for that needs no data and no model (dataset, preset,
    solvers, the NFE guard); return the preset and the grid's cells. A run calls this before
    it writes anything."""
    datamod.get_dataset(cfg.dataset)
    p = check_preset(cfg.preset, cfg.dataset)
    check_nfe_guard(cfg.solvers, cfg.steps or p.steps, cfg.max_nfe)
    return p, grid_cells(cfg, p.steps)


def check_nfe_guard(solvers: tuple[str, ...], steps: tuple[int, ...], max_nfe: int) -> None:
    """Refuse, before any work, a fixed-step cell whose known NFE exceeds the guard (it
    would fail only after the whole solve's cost)."""
    for name in solvers:
        spec = get_solver(name)
        if spec.adaptive:
            continue
        nfe = max(steps) * spec.nfe_per_step
        if nfe > max_nfe:
            raise UserError(
                f"{name} at {max(steps)} steps makes {nfe} network calls per solve, more than "
                f"--max-nfe {max_nfe}; raise --max-nfe or give fewer --steps"
            )


def sampling_batch_sizes(
    cfg: RunConfig, n: int, batch_size: int, world: World, inversion: int
) -> set[int]:
    """Every batch size this process will run the network at (a compiled network is
    compiled for each before any timed solve)."""
    sizes = {hi - lo for lo, hi in shard(batch_ranges(n, batch_size), world)}
    if "per-sample" in cfg.stepping:
        sizes.add(1)
    if inversion:
        sizes |= {hi - lo for lo, hi in batch_ranges(inversion, batch_size)}
    return sizes or {1}


def run(
    cfg: RunConfig,
    progress: bool | None = None,
    world: World | None = None,
    argv: list[str] | None = None,
) -> Path:
    """Run the grid of ``cfg`` and write its run directory; returns the directory.

    With several processes (``world``, from torchrun), every process trains (DDP) and
    samples its share of every cell; rank 0 writes the run directory.

    >>> from rfbench.config import RunConfig
    >>> out = run(RunConfig(dataset="toy2d", solvers=("euler",), steps=(1, 4), epochs=2,
    ...                     num_samples=200, out="/tmp/rfbench-doctest", resume=True),
    ...           progress=False)  # doctest: +SKIP
    """
    # Section: validate everything, and load the data, before writing anything.
    world = world or World()
    p, cells = plan(cfg)
    image_size = preset_image_size(p, cfg.dataset, cfg.image_size)
    device = resolve_device(world.device(cfg.device))
    options = Acceleration(cfg.precision, cfg.channels_last, cfg.compile)
    n = cfg.num_samples or p.num_samples
    out = Path(cfg.out or f"runs/{cfg.dataset}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(world.broadcast(str(out)))  # one directory, even if the clocks differ
    start = time.perf_counter()
    train_split = datamod.load_split(cfg.dataset, "train", cfg.data_root, image_size=image_size)
    test_split = datamod.load_split(cfg.dataset, "test", cfg.data_root, image_size=image_size)
    spec = model_spec(cfg.dataset, cfg.preset, train_split, cfg.train_seed, cfg.epochs)
    candidates = load_candidates(cfg, spec, device)
    extractor = resolve_extractor(cfg, train_split)
    run_dir = RunDir(out)
    rows = world.on_main(lambda: run_dir.create(cfg.to_dict(), cfg.resume, argv))
    handler = _setup_logging(run_dir) if world.main else None
    finished = False
    try:
        # Section: models and metric.
        if not candidates:
            trained = obtain_model(spec, train_split, device, progress, world, cfg.workers)
            candidates = [Candidate.of(trained)]
        with world.main_first():  # rank 0 trains and caches the classifier; the rest read it
            quality = build_quality(
                cfg.dataset,
                train_split,
                test_split,
                cfg.metrics,
                device,
                n,
                progress,
                cfg.reference,
                extractor,
            )
        inversion_data = (
            test_split.x[: min(n, INVERSION_SAMPLES)] if "inversion" in cfg.metrics else None
        )
        batch_size = _batch_size(cfg, p.batch_size, n, candidates, options, device, world)
        inverted = 0 if inversion_data is None else len(inversion_data)
        sizes = sampling_batch_sizes(cfg, n, batch_size, world, inverted)
        candidates = [prepare(c, options, device, sizes) for c in candidates]

        # Section: the cells, each written as it finishes; several models alternate cell by
        # cell, so that slow drifts of a shared machine reach them alike. A resumed run
        # retries the cells that failed: their rows are replaced, never duplicated.
        retried = [r for r in rows if r.get("status") != STATUS_OK]
        if retried and not cfg.keep_failed:
            log.info("retrying %d failed cell(s) of the resumed run", len(retried))
            rows = [r for r in rows if r.get("status") == STATUS_OK]
        done = {cell_key(r) for r in rows}
        todo = [
            (c, m)
            for c in cells
            for m in candidates
            if cell_key({"model_id": m.model_id, **c}) not in done
        ]
        for cell, candidate in todo:
            row = run_cell(
                cell,
                candidate,
                quality,
                cfg,
                n,
                batch_size,
                device,
                progress,
                inversion_data,
                run_dir if world.main else None,
                world,
            )
            if not world.main:
                continue
            rows.append(row)
            run_dir.write_rows(rows)
            prefix = f"{candidate.model_id}: " if len(candidates) > 1 else ""
            log.info(prefix + _describe(row))

        # Section: table and figure.
        if world.main:
            frame = run_dir.write_rows(rows)
            (run_dir.path / "table.md").write_text(frame_to_markdown(frame))
            if (frame["status"] == STATUS_OK).any():  # PNG for a first look; `rfbench
                make_all(run_dir.path, formats=("png",))  # figures` writes PDF and SVG
            log.info("run finished in %.1f s: %s", time.perf_counter() - start, run_dir.path)
        world.barrier()
        finished = True
    finally:
        if not finished and world.main:
            run_dir.discard()  # a run this command made and that finished no cell: undone
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            run_dir.close()
    return run_dir.path


def _batch_size(
    cfg: RunConfig,
    preset_batch: int,
    n: int,
    candidates: list[Candidate],
    options: Acceleration,
    device: torch.device,
    world: World,
) -> int:
    """The sampling batch size: as given, the preset's, or ("auto") the largest that fits
    the GPU for every model (rank 0's measurement, so that every rank cuts alike)."""
    if cfg.batch_size != "auto":
        return min(cfg.batch_size or preset_batch, n)

    if device.type != "cuda":  # memory is not what limits a batch here
        log.info(
            "--batch-size auto: on the %s the preset's batch size, %d, stands",
            device.type,
            min(preset_batch, n),
        )
        return min(preset_batch, n)

    def measure() -> int:
        models = [
            accelerate(c.raw, replace(options, compile=False), device, c.sample_shape)[0]
            for c in candidates
        ]
        fitted = auto_batch_size(models, candidates[0].sample_shape, device, n)
        log.info("--batch-size auto: %d fits the free GPU memory", fitted)
        return fitted

    return world.on_main(measure)
