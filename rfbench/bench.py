"""The grid runner: the one module that wires the stages together.

data -> model (trained or loaded) -> solvers x settings x seeds -> samples
     -> metrics -> rows -> results.csv, table.md, figures/
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from rfbench import data as datamod
from rfbench.config import RunConfig, cache_dir
from rfbench.config import preset as get_preset
from rfbench.data import to_uint8
from rfbench.errors import UserError
from rfbench.figures import make_all
from rfbench.report import frame_to_markdown
from rfbench.results import STATUS_FAILED, STATUS_OK, RunDir, cell_key
from rfbench.sample import generate, noise, reconstruct, trajectory, warm_up
from rfbench.solvers import get_solver
from rfbench.train import ModelSpec, TrainedModel, load_model, train

log = logging.getLogger("rfbench")

TOY_REFERENCE_SEED = 12345  # seed of the fresh true-distribution sample that toy2d compares with
INVERSION_SAMPLES = 256  # test-split samples sent through the data -> noise -> data round trip
SAVED_SAMPLES = 64  # first samples of each cell kept for the sample-grid figures
TRAJECTORIES = 128  # toy2d paths traced per fixed-step cell for the trajectory figures


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


# Section: the model.


def model_spec(
    dataset: str, preset_name: str, data: datamod.DataSplit, seed: int, epochs: int | None = None
) -> ModelSpec:
    """What `run` trains for a dataset and preset: the preset's recipe (its toy2d recipe for
    vectors), with this seed and, if given, this many epochs."""
    p = get_preset(preset_name)
    recipe = p.toy_train if data.x.dim() == 2 else p.train
    recipe = replace(recipe, seed=seed, epochs=recipe.epochs if epochs is None else epochs)
    return ModelSpec(
        dataset, data.sample_shape, p.unet, p.mlp, recipe, data.content_hash, preset_name
    )


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
) -> TrainedModel:
    """The cached model for this spec, or train it (resuming a partly trained one)."""
    path = model_cache_path(spec)
    if path.exists():
        trained = load_model(path, device)
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
    trained = train(spec, data, device=device, out_path=path, resume=True, progress=progress)
    log.info(
        "trained %s in %.1f s; final loss %.4f",
        trained.model_id,
        time.perf_counter() - start,
        trained.losses[-1],
    )
    return trained


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
    trained: TrainedModel,
    quality: Quality,
    cfg: RunConfig,
    n: int,
    batch_size: int,
    device: torch.device,
    progress: bool | None,
    inversion_data: torch.Tensor | None = None,
    run_dir: RunDir | None = None,
) -> dict:
    """Sample one cell and measure it; a failure becomes a row with status=failed.

    Samples stream into the quality metric batch by batch; the first SAVED_SAMPLES are
    written to the run directory for the sample-grid figures (with toy2d trajectories).
    """
    row = {
        "dataset": cfg.dataset,
        "model_id": trained.model_id,
        **cell,
        "batch_size": batch_size,
        "n_samples": n,
        "device": device_label(device),
        **quality.columns,
    }
    try:
        options = dict(
            batch_size=batch_size, steps=cell["steps"], rtol=cell["rtol"], atol=cell["atol"],
            grid=cell["grid"] or "uniform", stepping=cell["stepping"], device=device,
            max_nfe=cfg.max_nfe, progress=progress,
        )  # fmt: skip
        while True:  # on a GPU out of memory: halve the batch and try again
            stream, nonfinite = quality.metric.stream(n), []

            def sink(x: torch.Tensor, stream=stream, nonfinite=nonfinite) -> None:
                finite = torch.isfinite(x.flatten(1)).all(1)  # each batch into the metric
                if not finite.all():
                    nonfinite.append(int((~finite).sum()))
                elif not nonfinite:
                    stream.add(x)

            try:
                run = generate(
                    trained.model, cell["solver"], n, trained.spec.sample_shape,
                    seed=cell["seed"], repeats=cfg.repeats, record=True, sink=sink,
                    keep=SAVED_SAMPLES, **options,
                )  # fmt: skip
                break
            except torch.cuda.OutOfMemoryError:
                if options["batch_size"] == 1:
                    raise
                options["batch_size"] = max(1, options["batch_size"] // 2)
                row["batch_size"] = options["batch_size"]
                row["oom_retries"] = row.get("oom_retries", 0) + 1
                log.warning("out of memory: %s retried at batch size %d", cell["solver"],
                            options["batch_size"])  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row.update(
            nfe=run.nfe_per_sample,
            nfe_std=run.nfe_std,
            nfe_per_batch=";".join(map(str, run.nfe_per_solve)),
            nfe_total=int(sum(run.nfe_per_solve)),
            wall_time_s=run.wall_time_s,
            model_time_s=run.model_time_s,
            overhead_time_s=run.overhead_time_s,
            images_per_s=n / run.wall_time_s,
            straightness=float(run.straightness.mean()),
            curvature=float(run.curvature.nanmean()),
        )
        if all(v is not None for v in run.solver_nfe_per_solve):
            row["solver_nfe"] = ";".join(map(str, run.solver_nfe_per_solve))
        if nonfinite:
            raise FloatingPointError(f"{sum(nonfinite)} of {n} samples hold NaN or Inf")
        row.update(stream.result())
        if run_dir is not None:
            _save_arrays(run_dir, row, run.x, trained, cell)
        if inversion_data is not None:
            rec = reconstruct(trained.model, cell["solver"], inversion_data, **options)
            row["inversion_rmse"] = rec.rmse
            row["inversion_nfe"] = rec.encode.nfe_per_sample + rec.decode.nfe_per_sample
        row["status"] = STATUS_OK
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
        log.debug("cell failed:\n%s", traceback.format_exc())
        row.update(status=STATUS_FAILED, error=f"{type(e).__name__}: {e}"[:500])
    return row


def _save_arrays(run_dir: RunDir, row: dict, x: torch.Tensor, trained, cell: dict) -> None:
    if x.dim() == 4:
        run_dir.save_arrays("samples", row, x=to_uint8(x).numpy())
        return
    run_dir.save_arrays("samples", row, x=x.numpy())
    if cell["steps"] is not None:  # toy2d, fixed-step: trace its paths
        x0 = noise(cell["seed"], range(TRAJECTORIES), trained.spec.sample_shape)
        ts, xs = trajectory(trained.model, cell["solver"], x0, steps=int(cell["steps"]),
                            grid=cell["grid"] or "uniform")  # fmt: skip
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


def run(cfg: RunConfig, progress: bool | None = None) -> Path:
    """Run the grid of ``cfg`` and write its run directory; returns the directory.

    >>> from rfbench.config import RunConfig
    >>> out = run(RunConfig(dataset="toy2d", solvers=("euler",), steps=(1, 4), epochs=2,
    ...                     num_samples=200, out="/tmp/rfbench-doctest", resume=True),
    ...           progress=False)  # doctest: +SKIP
    """
    # Section: validate everything, and load the data, before writing anything.
    p = get_preset(cfg.preset)
    datamod.get_dataset(cfg.dataset)
    for name in cfg.solvers:
        get_solver(name)
    device = resolve_device(cfg.device)
    n = cfg.num_samples or p.num_samples
    batch_size = min(cfg.batch_size or p.batch_size, n)
    out = Path(cfg.out or f"runs/{cfg.dataset}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.perf_counter()
    train_split = datamod.load_split(cfg.dataset, "train", cfg.data_root, image_size=cfg.image_size)
    test_split = datamod.load_split(cfg.dataset, "test", cfg.data_root, image_size=cfg.image_size)
    spec = model_spec(cfg.dataset, cfg.preset, train_split, cfg.train_seed, cfg.epochs)
    models = [load_checkpoint_for(spec, c, device) for c in cfg.checkpoint or ()]
    ids = [m.model_id for m in models]
    if len(set(ids)) < len(ids):
        raise UserError(f"--checkpoint names the same model twice: {', '.join(ids)}")
    extractor = resolve_extractor(cfg, train_split)
    run_dir = RunDir(out)
    rows = run_dir.create(cfg.to_dict(), cfg.resume)
    handler = _setup_logging(run_dir)
    try:
        # Section: model and metric.
        if not models:
            models = [obtain_model(spec, train_split, device, progress)]
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

        # Section: the cells, each written as it finishes; several models alternate cell by
        # cell, so that slow drifts of a shared machine reach them alike.
        done = {cell_key(r) for r in rows}
        todo = [(c, m) for c in grid_cells(cfg, p.steps) for m in models
                if cell_key({"model_id": m.model_id, **c}) not in done]  # fmt: skip
        for trained in {id(m): m for _, m in todo}.values():
            warm_up(trained.model, trained.spec.sample_shape, batch_size, device)
        for cell, trained in todo:
            row = run_cell(
                cell, trained, quality, cfg, n, batch_size, device, progress, inversion_data,
                run_dir,
            )  # fmt: skip
            rows.append(row)
            run_dir.write_rows(rows)
            prefix = f"{trained.model_id}: " if len(models) > 1 else ""
            log.info(prefix + _describe(row))

        # Section: table and figure.
        frame = run_dir.write_rows(rows)
        (run_dir.path / "table.md").write_text(frame_to_markdown(frame))
        if (frame["status"] == STATUS_OK).any():  # PNG for a first look; `rfbench figures`
            make_all(run_dir.path, formats=("png",))  # writes PDF and SVG for a paper
        log.info("run finished in %.1f s: %s", time.perf_counter() - start, run_dir.path)
    finally:
        log.removeHandler(handler)
        handler.close()
        run_dir.close()
    return run_dir.path
