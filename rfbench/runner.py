"""The grid runner: the one module that wires the stages together.

data -> model (rfbench.candidates) -> cells: solver settings x seeds -> samples
     -> metrics -> rows -> results.csv, table.md, figures/

``run`` validates everything it can before it writes anything, then evaluates every cell
of the grid for every model, writing each row as the cell finishes.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rfbench import data as datamod
from rfbench.atomic import atomic_write_text
from rfbench.candidates import (
    Candidate,
    load_candidates,
    model_spec,
    obtain_model,
    prepare,
    preset_image_size,
)
from rfbench.config import DEFAULT_REFERENCE, Preset, RunConfig, check_preset
from rfbench.data import to_uint8
from rfbench.distributed import World, batch_ranges, shard
from rfbench.errors import UserError
from rfbench.figures import make_all
from rfbench.metrics.quality import (
    Quality,
    SampleStream,
    build_quality,
    load_reference_stats,
    resolve_extractor,
    wants_features,
)
from rfbench.report import frame_to_markdown
from rfbench.results import ALL_SAMPLES, STATUS_FAILED, STATUS_OK, RunDir, cell_id, cell_key
from rfbench.runtime import (
    Acceleration,
    accelerate,
    auto_batch_size,
    device_label,
    resolve_device,
)
from rfbench.sample import (
    Batching,
    Measuring,
    SampleRun,
    integrate,
    merge_runs,
    noise,
    reconstruct,
    trajectory,
)
from rfbench.samples_io import SavingStream, sample_writer
from rfbench.solvers import LABEL_PARTS, Setting, get_solver

log = logging.getLogger("rfbench")

INVERSION_SAMPLES = 256  # test-split samples sent through the data -> noise -> data round trip
SAVED_SAMPLES = 64  # first samples of each cell kept for the sample-grid figures
TRAJECTORIES = 128  # toy2d paths traced per fixed-step cell for the trajectory figures


@dataclass(frozen=True)
class Cell:
    """One solver setting at one noise seed, for every model of the run."""

    setting: Setting
    seed: int

    def columns(self) -> dict:
        return {**self.setting.columns(), "seed": self.seed}


@dataclass
class GridContext:
    """What the cells of one run share."""

    cfg: RunConfig
    quality: Quality
    n: int  # samples per cell
    batch_size: int
    device: torch.device
    progress: bool | None = None
    world: World = field(default_factory=World)
    run_dir: RunDir | None = None  # where rank 0 saves each cell's first samples
    inversion_data: torch.Tensor | None = None  # data for --metrics inversion


# Section: the grid.


def grid_cells(cfg: RunConfig, default_steps: tuple[int, ...]) -> list[Cell]:
    """Every (setting, seed) cell, in a stable order: seeds, then solvers; fixed-step
    solvers over grids x steps, adaptive ones over tolerances x stepping modes."""
    cells = []
    span = dict(t_start=cfg.t_start, t_end=cfg.t_end)
    for seed in cfg.seeds:
        for name in cfg.solvers:
            if get_solver(name).adaptive:
                settings = [
                    Setting(name, rtol=tol, atol=tol, stepping=mode, **span)
                    for tol in cfg.tols
                    for mode in cfg.stepping
                ]
            elif cfg.grid_times is not None:  # the given times, instead of grids x steps
                settings = [Setting(name, grid_times=cfg.grid_times, **span)]
            else:
                settings = [
                    Setting(name, steps=s, grid=g, **span)
                    for g in cfg.grids
                    for s in (cfg.steps or default_steps)
                ]
            cells += [Cell(s, seed) for s in settings]
    return cells


def plan(cfg: RunConfig) -> tuple[Preset, list[Cell]]:
    """Check what ``cfg`` asks for that needs no data and no model (dataset, preset,
    solvers, the NFE guard); return the preset and the grid's cells. A run calls this before
    it writes anything."""
    datamod.get_dataset(cfg.dataset)
    p = check_preset(cfg.preset, cfg.dataset)
    steps = (len(cfg.grid_times) - 1,) if cfg.grid_times else cfg.steps or p.steps
    check_nfe_guard(cfg.solvers, steps, cfg.max_nfe)
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


# Section: one cell.


def run_cell(cell: Cell, candidate: Candidate, grid: GridContext) -> dict | None:
    """Sample one cell and measure it; a failure becomes a row with status=failed.

    Samples stream into the quality metric batch by batch; the first SAVED_SAMPLES are
    written to the run directory for the sample-grid figures (with toy2d trajectories).

    With several processes, each solves every ``world.size``-th batch of the batches one
    process would solve (so batched adaptive solvers see the same batches), and rank 0
    puts the shares together, computes the metric once and returns the row; the other
    ranks return None.
    """
    world = grid.world
    row = {
        "dataset": grid.cfg.dataset,
        "model_id": candidate.model_id,
        **cell.columns(),
        "batch_size": grid.batch_size,
        "n_samples": grid.n,
        "device": device_label(grid.device),
        "world_size": world.size,
        **candidate.columns,
        **grid.quality.columns,
    }
    share = _solve_share(cell, candidate, grid)
    # The stream holds the metric's network: only its rows travel between processes.
    shares = world.gather(replace(share, stream=None)) if world.distributed else [share]
    if not world.main:
        return None
    try:
        row.update(_measure(cell, candidate, grid, shares))
        row["status"] = STATUS_OK
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
        log.debug("cell failed:\n%s", traceback.format_exc())
        message = str(e) if isinstance(e, _CellFailed) else f"{type(e).__name__}: {e}"
        row.update(status=STATUS_FAILED, error=message[:500])
        row.update(_share_columns(shares))
    return row


def _share_columns(shares: list[_Share]) -> dict:
    """What the shares say of how they ran: the batch size (after out-of-memory halving)."""
    columns = {"batch_size": min(s.batch_size for s in shares)}
    if any(s.oom_retries for s in shares):
        columns["oom_retries"] = max(s.oom_retries for s in shares)
    return columns


def _measure(cell: Cell, candidate: Candidate, grid: GridContext, shares: list[_Share]) -> dict:
    """The measured columns of a cell from its shares (rank 0); raises where it failed."""
    world, n = grid.world, grid.n
    columns = _share_columns(shares)
    errors = [
        f"rank {r}: {s.error}" if world.distributed else s.error
        for r, s in enumerate(shares)
        if s.error
    ]
    if errors:
        raise _CellFailed(errors[0])
    run = merge_runs([s.run for s in shares]) if world.distributed else shares[0].run
    columns.update(
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
    if run.per_sample_impl is not None:
        columns["per_sample_impl"] = run.per_sample_impl
    if all(v is not None for v in run.solver_nfe_per_solve):
        columns["solver_nfe"] = ";".join(map(str, run.solver_nfe_per_solve))
    nonfinite = sum(s.nonfinite for s in shares)
    if nonfinite:
        raise FloatingPointError(f"{nonfinite} of {n} samples hold NaN or Inf")
    stream = _gathered_stream(grid.quality, n, shares) if world.distributed else shares[0].stream
    columns.update(stream.result())
    if grid.run_dir is not None:
        _save_arrays(
            grid.run_dir, {**cell.columns(), "model_id": candidate.model_id}, run.x, candidate, cell
        )
    if grid.inversion_data is not None:
        rec = reconstruct(
            candidate.model,
            cell.setting,
            grid.inversion_data,
            device=grid.device,
            batch_size=grid.batch_size,
            max_nfe=grid.cfg.max_nfe,
            progress=grid.progress,
        )
        columns["inversion_rmse"] = rec.rmse
        columns["inversion_nfe"] = rec.encode.nfe_per_sample + rec.decode.nfe_per_sample
    return columns


class _CellFailed(Exception):
    """A failure already described (on one of the processes)."""


@dataclass
class _Share:
    """What one process solved of a cell."""

    run: SampleRun | None
    stream: SampleStream | None  # the metric's stream of this process's samples
    rows: dict  # its rows (features, or points), to send to rank 0
    nonfinite: int
    batch_size: int
    oom_retries: int
    error: str | None


def _solve_share(cell: Cell, candidate: Candidate, grid: GridContext) -> _Share:
    """Solve this process's share of a cell's samples, streaming them into the metric.

    On a GPU out of memory the batch is halved and the share tried again; the share's
    sample ranges stay those of the configured batch size, cut finer."""
    ranges = tuple(shard(batch_ranges(grid.n, grid.batch_size), grid.world))
    measuring = Measuring(
        repeats=grid.cfg.repeats, record=True, max_nfe=grid.cfg.max_nfe, progress=grid.progress
    )
    b, retries = grid.batch_size, 0
    stream, nonfinite, writer = None, [], None
    try:
        while True:
            stream = grid.quality.metric.stream(sum(hi - lo for lo, hi in ranges) or 1)
            nonfinite = []
            if grid.cfg.save_samples and grid.run_dir is not None:
                if writer is not None:
                    writer.abort()
                name = cell_id({"model_id": candidate.model_id, **cell.columns()})
                folder = grid.run_dir.path / ALL_SAMPLES
                writer = sample_writer(
                    grid.cfg.save_samples, folder, name, grid.n, candidate.sample_shape
                )
                stream = SavingStream(stream, writer)

            def sink(x: torch.Tensor, stream=stream, nonfinite=nonfinite) -> None:
                finite = torch.isfinite(x.flatten(1)).all(1)  # each batch into the metric
                if not finite.all():
                    nonfinite.append(int((~finite).sum()))
                elif not nonfinite:
                    stream.add(x)

            try:
                run = integrate(
                    candidate.model,
                    cell.setting,
                    grid.n,
                    lambda lo, hi: noise(cell.seed, range(lo, hi), candidate.sample_shape),
                    device=grid.device,
                    batching=Batching(b, ranges, sink, keep=SAVED_SAMPLES),
                    measuring=measuring,
                )
                break
            except torch.cuda.OutOfMemoryError:
                if b == 1:
                    raise
                b, retries = max(1, b // 2), retries + 1
                log.warning("out of memory: %s retried at batch size %d", cell.setting.solver, b)
                if grid.device.type == "cuda":
                    torch.cuda.empty_cache()
        if writer is not None:
            if nonfinite:
                writer.abort()
            else:
                log.debug("samples written to %s", writer.close())
    except BaseException as e:
        if writer is not None:
            writer.abort()
        if isinstance(e, UserError) or not isinstance(e, Exception):
            raise
        log.debug("cell failed:\n%s", traceback.format_exc())
        return _Share(None, None, {}, 0, b, retries, f"{type(e).__name__}: {e}")
    rows = stream.rows() if grid.world.distributed and not nonfinite else {}
    return _Share(run, stream, rows, sum(nonfinite), b, retries, None)


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


def _save_arrays(run_dir: RunDir, row: dict, x: torch.Tensor, candidate: Candidate, cell: Cell):
    if x.dim() == 4:
        run_dir.save_arrays("samples", row, x=to_uint8(x).numpy())
        return
    run_dir.save_arrays("samples", row, x=x.numpy())
    if not (cell.setting.adaptive or cell.setting.spec.multistep):  # toy2d, one-step
        # fixed-step solvers: trace their paths (multistep ones cannot restart mid-path)
        x0 = noise(cell.seed, range(TRAJECTORIES), candidate.sample_shape)
        ts, xs = trajectory(candidate.raw, cell.setting, x0)
        run_dir.save_arrays("trajectories", row, t=ts.numpy(), x=xs.float().numpy())


def _describe(row: dict) -> str:
    """A finished cell's log line: solver, setting (every part), seed and the numbers."""
    setting = Setting.from_row(row)
    head = f"{setting.solver} {setting.label(LABEL_PARTS)} seed={row['seed']}"
    if row.get("status") != STATUS_OK:
        return f"{head}: FAILED {row.get('error')}"
    q = " ".join(
        f"{k}={row[k]:.4g}" for k in ("fid", "kid_mean", "swd", "inversion_rmse") if k in row
    )
    return f"{head}: nfe={row['nfe']:.1f} {q} wall={row['wall_time_s']:.2f}s"


def _setup_logging(run_dir: RunDir) -> logging.Handler:
    handler = logging.FileHandler(run_dir.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


# Section: the run.


@dataclass
class _Inputs:
    """What a run checks and loads before it writes anything."""

    preset: Preset
    cells: list[Cell]
    device: torch.device
    n: int
    out: Path
    train_split: datamod.DataSplit
    test_split: datamod.DataSplit
    spec: object  # ModelSpec of the model the run trains where no --checkpoint is given
    candidates: list[Candidate]
    extractor: object  # the Inception Extractor, or None
    stats: object = None  # ReferenceStats of --reference-stats, or None


def _inputs(cfg: RunConfig, world: World) -> _Inputs:
    p, cells = plan(cfg)
    image_size = preset_image_size(p, cfg.dataset, cfg.image_size)
    device = resolve_device(world.device(cfg.device))
    out = Path(cfg.out or f"runs/{cfg.dataset}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(world.broadcast(str(out)))  # one directory, even if the clocks differ
    train_split = datamod.load_split(cfg.dataset, "train", cfg.data_root, image_size=image_size)
    test_split = datamod.load_split(cfg.dataset, "test", cfg.data_root, image_size=image_size)
    spec = model_spec(cfg.dataset, cfg.preset, train_split, cfg.train_seed, cfg.epochs)
    candidates = load_candidates(cfg, spec, device)
    extractor = None
    if wants_features(cfg.metrics):
        extractor = resolve_extractor(
            cfg.dataset, cfg.feature_extractor, cfg.inception_weights, train_split
        )
    elif datamod.get_dataset(cfg.dataset).kind != "toy":  # --metrics inversion alone
        unused = [
            option
            for option, given in (
                ("--feature-extractor", cfg.feature_extractor != "auto"),
                ("--inception-weights", cfg.inception_weights is not None),
                ("--reference", cfg.reference != DEFAULT_REFERENCE),
            )
            if given
        ]
        if unused:
            log.warning(
                "--metrics %s scores no features: %s unused",
                ",".join(cfg.metrics),
                ", ".join(unused),
            )
    stats = None
    if cfg.reference_stats is not None:
        stats = load_reference_stats(cfg.reference_stats, cfg.dataset, extractor, cfg.metrics)
    if cfg.save_samples is not None:
        if datamod.get_dataset(cfg.dataset).kind == "toy":
            raise UserError("--save-samples writes images; toy2d's points are not images")
        if world.distributed:
            raise UserError("--save-samples needs one process: each rank holds only its share")
    n = cfg.num_samples or p.num_samples
    return _Inputs(
        p, cells, device, n, out, train_split, test_split, spec, candidates, extractor, stats
    )


def _context(
    cfg: RunConfig, inputs: _Inputs, run_dir: RunDir, progress: bool | None, world: World
) -> tuple[GridContext, list[Candidate]]:
    """The run's models (trained or reused where none was given) and metric, its batch
    size, and each model prepared at every batch size it will see."""
    candidates = inputs.candidates
    if not candidates:
        trained = obtain_model(
            inputs.spec, inputs.train_split, inputs.device, progress, world, cfg.workers
        )
        candidates = [Candidate.of(trained)]
    with world.main_first():  # rank 0 trains and caches the classifier; the rest read it
        quality = build_quality(
            cfg.dataset,
            inputs.train_split,
            inputs.test_split,
            cfg.metrics,
            inputs.device,
            inputs.n,
            progress,
            cfg.reference,
            inputs.extractor,
            inputs.stats,
        )
    inversion = None
    if "inversion" in cfg.metrics:
        inversion = inputs.test_split.x[: min(inputs.n, INVERSION_SAMPLES)]
    options = Acceleration(cfg.precision, cfg.channels_last, cfg.compile)
    batch_size = _batch_size(
        cfg, inputs.preset.batch_size, inputs.n, candidates, options, inputs.device, world
    )
    inverted = 0 if inversion is None else len(inversion)
    sizes = sampling_batch_sizes(cfg, inputs.n, batch_size, world, inverted)
    candidates = [prepare(c, options, inputs.device, sizes) for c in candidates]
    grid = GridContext(
        cfg,
        quality,
        inputs.n,
        batch_size,
        inputs.device,
        progress,
        world,
        run_dir if world.main else None,
        inversion,
    )
    return grid, candidates


def _run_cells(
    grid: GridContext, cells: list[Cell], candidates: list[Candidate], rows: list[dict]
) -> list[dict]:
    """Every cell not done yet, for every model, each row written as it finishes. Several
    models alternate cell by cell, so that slow drifts of a shared machine reach them
    alike. A resumed run retries the cells that failed (``--keep-failed`` keeps them):
    their rows are replaced, never duplicated."""
    retried = [r for r in rows if r.get("status") != STATUS_OK]
    if retried and not grid.cfg.keep_failed:
        log.info("retrying %d failed cell(s) of the resumed run", len(retried))
        rows = [r for r in rows if r.get("status") == STATUS_OK]
    done = {cell_key(r) for r in rows}
    todo = [
        (c, m)
        for c in cells
        for m in candidates
        if cell_key({"model_id": m.model_id, **c.columns()}) not in done
    ]
    for cell, candidate in todo:
        row = run_cell(cell, candidate, grid)
        if not grid.world.main:
            continue
        rows.append(row)
        grid.run_dir.write_rows(rows)
        prefix = f"{candidate.model_id}: " if len(candidates) > 1 else ""
        log.info(prefix + _describe(row))
    return rows


def run(
    cfg: RunConfig,
    progress: bool | None = None,
    world: World | None = None,
    argv: list[str] | None = None,
) -> Path:
    """Run the grid of ``cfg`` and write its run directory.

    Args:
        cfg: the run (``rfbench run``'s options; ``RunConfig`` holds every default).
        progress: progress bars (None: on a terminal).
        world: the processes of a torchrun launch (default: this one alone). Every
            process trains (DDP) and samples its share of every cell; rank 0 writes.
        argv: the command line recorded in env.json (default: this process's).

    Returns:
        The run directory: config.json, env.json, results.csv, table.md, figures/, run.log.

    >>> from rfbench.config import RunConfig
    >>> out = run(RunConfig(dataset="toy2d", solvers=("euler",), steps=(1, 4), epochs=2,
    ...                     num_samples=200, out="/tmp/rfbench-doctest", resume=True),
    ...           progress=False)  # doctest: +SKIP
    """
    world = world or World()
    start = time.perf_counter()
    inputs = _inputs(cfg, world)  # everything checked and loaded before anything is written
    run_dir = RunDir(inputs.out)
    rows = world.on_main(lambda: run_dir.create(cfg.to_dict(), cfg.resume, argv))
    handler = _setup_logging(run_dir) if world.main else None
    finished = False
    try:
        grid, candidates = _context(cfg, inputs, run_dir, progress, world)
        rows = _run_cells(grid, inputs.cells, candidates, rows)
        if world.main:
            frame = run_dir.write_rows(rows)
            atomic_write_text(run_dir.path / "table.md", frame_to_markdown(frame))
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
