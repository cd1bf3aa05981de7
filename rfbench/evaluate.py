"""Scoring images that are already on disk, and writing reference statistics.

``rfbench eval`` scores saved samples (an ADM-style ``.npz``, an image folder, or the
``all-samples/`` a run wrote with ``--save-samples``) with the same metrics, extractor and
row schema as ``rfbench run``, so that samples of other generators sit in the same tables.
``rfbench stats`` writes a split's FID statistics in the ``.npz`` layout that papers
publish, which ``--reference-stats`` reads back.

samples on disk (rfbench.samples_io) -> features (rfbench.metrics) -> rows (rfbench.results)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rfbench import data as datamod
from rfbench.atomic import atomic_write_text
from rfbench.errors import UserError
from rfbench.metrics.quality import warn_rank_deficient
from rfbench.results import ALL_SAMPLES, STATUS_OK, RunDir, cell_id, read_run
from rfbench.samples_io import SampleSource, open_samples

log = logging.getLogger("rfbench")

# The columns a run's row takes from the run; the metric's columns are computed anew.
QUALITY_COLUMNS = (
    "fid",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "isc_mean",
    "isc_std",
    "feature_extractor",
    "reference",
)
EXTERNAL = "external"  # the solver and family of samples that no rfbench run made


@dataclass(frozen=True)
class Reference:
    """What samples are scored against: a dataset split, or a statistics file."""

    dataset: str | None
    split: str
    stats_path: str | None
    data_root: str | None = None
    image_size: int | None = None


@dataclass(frozen=True)
class Job:
    """One set of samples to score, with the columns it brings (a run's row, or a name)."""

    source: SampleSource
    columns: dict


def find_jobs(paths: list[str]) -> list[Job]:
    """Each path as the sample sets it holds: a run directory gives one per saved cell, an
    ``.npz`` or an image folder one. Everything is opened (and checked) here, before any
    scoring."""
    jobs: list[Job] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.resolve() in seen:
            raise UserError(f"{given} is given twice")
        seen.add(path.resolve())
        if path.is_dir() and (path / "results.csv").is_file():
            jobs += _run_jobs(path)
        else:
            source = open_samples(path)
            name = path.name.removesuffix(".npz")
            # the content's hash tells apart files of one name (a/s.npz, b/s.npz)
            model_id = f"samples:{name}-{source.content_sha256()[:8]}"
            columns = {"model_id": model_id, "solver": EXTERNAL, "family": EXTERNAL}
            jobs.append(Job(source, {**columns, "samples": str(path)}))
    ids = [job.columns.get("model_id") for job in jobs if job.columns.get("solver") == EXTERNAL]
    if len(set(ids)) < len(ids):
        raise UserError("two of the sample sets given hold the same images")
    return jobs


def _run_jobs(path: Path) -> list[Job]:
    folder = path / ALL_SAMPLES
    if not folder.is_dir():
        raise UserError(
            f"{path} is a run directory without saved samples; run it with --save-samples"
        )
    frame = read_run(path)
    jobs, missing = [], []
    for row in frame[frame["status"] == STATUS_OK].to_dict("records"):
        name = cell_id(row)
        found = [p for p in (folder / f"{name}.npz", folder / name) if p.exists()]
        if not found:
            missing.append(name)
            continue
        source = open_samples(found[0])
        if source.n != row["n_samples"]:
            raise UserError(
                f"{found[0]} holds {source.n} images, but its cell made {row['n_samples']}: "
                "the saved samples are not the cell's"
            )
        kept = {k: v for k, v in row.items() if k not in QUALITY_COLUMNS and k != "run"}
        jobs.append(Job(source, {**kept, "samples": str(found[0])}))
    if missing:
        raise UserError(
            f"{folder} lacks the saved samples of {len(missing)} successful cell(s), e.g. "
            f"{missing[0]}: every cell of the run is scored, or none"
        )
    if not jobs:
        raise UserError(f"{path} has no successful cells to score")
    return jobs


def evaluate(
    paths: list[str],
    reference: Reference,
    metrics: tuple[str, ...],
    feature_extractor: str,
    inception_weights: str | None,
    out: str,
    device: torch.device,
    progress: bool | None = None,
) -> Path:
    """Score every sample set of ``paths`` against ``reference``; the rows go to the run
    directory ``out`` (results.csv, table.md) as each set is scored."""
    from rfbench.metrics.fidelity import PRC_NEIGHBOURS, FidelityMetrics
    from rfbench.metrics.quality import load_reference_stats, ready_extractor, resolve_extractor
    from rfbench.metrics.refstats import STATS_ONLY_METRICS, check_compatible
    from rfbench.report import frame_to_markdown

    jobs = find_jobs(paths)
    for job in jobs:
        if job.source.n < 2:
            raise UserError(f"{job.source.path} holds {job.source.n} image: FID needs at least 2")
        if "prc" in metrics and job.source.n <= PRC_NEIGHBOURS:
            raise UserError(
                f"{job.source.path} holds {job.source.n} images: precision and recall need more "
                f"than {PRC_NEIGHBOURS} (their k-th neighbour)"
            )
    train = test = None
    if reference.dataset is not None:
        spec = datamod.get_dataset(reference.dataset)
        if spec.kind == "toy":
            raise UserError("rfbench eval scores images; toy2d's samples are points")
        load = lambda split: datamod.load_split(  # noqa: E731
            reference.dataset, split, reference.data_root, image_size=reference.image_size
        )
        train, test = load("train"), load("test")
    elif feature_extractor == "classifier":
        raise UserError("the classifier extractor is trained on a dataset: give --dataset")
    if train is None:
        extractor = resolve_extractor("image-folder", "inception", inception_weights, None)
    else:
        extractor = resolve_extractor(
            reference.dataset, feature_extractor, inception_weights, train
        )
    stats = None
    if reference.stats_path is not None:
        stats = load_reference_stats(
            reference.stats_path, reference.dataset or "image-folder", extractor, metrics
        )
        metrics = tuple(m for m in metrics if m in STATS_ONLY_METRICS)
        if not metrics:
            raise UserError("--reference-stats gives FID only: add fid to --metrics")
    if extractor is None:  # the classifier sees the dataset's own image shape only
        for job in jobs:
            if job.source.shape != tuple(train.sample_shape):
                raise UserError(
                    f"{job.source.path} holds {list(job.source.shape)} images, {reference.dataset}"
                    f" {list(train.sample_shape)}: the classifier extractor takes the dataset's "
                    "shape only (--feature-extractor inception takes any)"
                )
    run_dir = RunDir(out)
    config = {
        "command": "eval",
        "samples": [str(p) for p in paths],
        "dataset": reference.dataset,
        "split": None if reference.stats_path else reference.split,
        "reference_stats": reference.stats_path,
        "metrics": list(metrics),
        "feature_extractor": feature_extractor,
        "inception_weights": inception_weights,
    }
    rows = run_dir.create(config, resume=False)
    finished = False
    try:
        extractor, dim = ready_extractor(extractor, train, test, device, progress)
        warn_rank_deficient(min(job.source.n for job in jobs), dim)
        if stats is not None:
            check_compatible(stats, extractor.label, dim, "--reference-stats")
            fm = FidelityMetrics(None, extractor, metrics, device=device, stats=stats)
            ref_label = stats.label
        else:
            ref = train if reference.split == "train" else test
            fm = FidelityMetrics(ref, extractor, metrics, device=device)
            ref_label = f"{reference.dataset}-{ref.split}-{ref.content_hash[:8]}"
        dataset = reference.dataset or (stats.meta.get("dataset") if stats else None)
        for job in jobs:
            rows.append(_score(job, fm, extractor.label, ref_label, dataset, device, progress))
            run_dir.write_rows(rows)
            log.info("%s: %s", job.source.path, _numbers(rows[-1]))
        frame = run_dir.write_rows(rows)
        atomic_write_text(run_dir.path / "table.md", frame_to_markdown(frame))
        finished = True
    finally:
        if not finished and getattr(run_dir, "fresh", False):  # all or nothing: a set that
            for name in ("results.csv", "results.parquet", "table.md"):  # fails undoes the rest
                (run_dir.path / name).unlink(missing_ok=True)
            run_dir.discard()
        run_dir.close()
    return run_dir.path


def _score(job: Job, fm, extractor_label, ref_label, dataset, device, progress) -> dict:
    source = job.source
    stream = fm.stream(source.n)
    batches = source.batches(fm.extractor.batch_size)
    total = -(-source.n // fm.extractor.batch_size)
    bar = tqdm(
        batches,
        total=total,
        desc=f"features of {source.path.name}",
        leave=False,
        disable=None if progress is None else not progress,
    )
    try:
        for images in bar:
            stream.add_uint8(images)
        values = stream.result()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a metric that cannot be computed on these images
        raise UserError(f"{source.path}: the metrics failed: {type(e).__name__}: {e}") from None
    row = {
        "dataset": dataset,
        "device": str(device),
        **job.columns,
        "n_samples": source.n,  # what was scored (a run's row says the same: checked)
        "feature_extractor": extractor_label,
        "reference": ref_label,
        **values,
        "status": STATUS_OK,
    }
    return row


def _numbers(row: dict) -> str:
    return " ".join(
        f"{k}={row[k]:.4g}" for k in ("fid", "kid_mean", "precision", "recall") if k in row
    )


def write_reference_stats(
    dataset: str,
    split: str,
    out: str,
    feature_extractor: str,
    inception_weights: str | None,
    data_root: str | None,
    image_size: int | None,
    device: torch.device,
    progress: bool | None = None,
    force: bool = False,
):
    """Compute (or read from the feature cache) a split's features and write its FID
    statistics to ``out`` (an existing file only with ``force``); returns the
    ``ReferenceStats`` read back from the file."""
    from rfbench.atomic import ensure_writable_dir
    from rfbench.metrics.fidelity import FidelityMetrics
    from rfbench.metrics.quality import ready_extractor, resolve_extractor
    from rfbench.metrics.refstats import write_stats

    if datamod.get_dataset(dataset).kind == "toy":
        raise UserError("rfbench stats describes image features; toy2d has none")
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name such as stats.npz")
    if path.exists() and not force:
        raise UserError(f"--out {path} exists; pass --force to replace it, or choose another")
    ensure_writable_dir(path.parent, "--out")
    load = lambda s: datamod.load_split(dataset, s, data_root, image_size=image_size)  # noqa: E731
    train, test = load("train"), load("test")
    extractor = resolve_extractor(dataset, feature_extractor, inception_weights, train)
    extractor, _ = ready_extractor(extractor, train, test, device, progress)
    ref = train if split == "train" else test
    fm = FidelityMetrics(ref, extractor, ("fid",), device=device)
    features = fm.reference_features()[fm.layers["fid"]]
    try:
        return write_stats(
            path,
            features.numpy(),
            feature_extractor=extractor.label,
            dataset=dataset,
            split=split,
            data_sha256=ref.content_hash,
        )
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
