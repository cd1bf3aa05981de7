"""The quality metric of a run, behind one interface: torch-fidelity's FID, KID, precision
and recall and IS for images; exact sample distances for toy2d.

A metric gives a ``SampleStream`` for n samples; the stream takes the samples batch by
batch as the solver finishes them (``add``), or the rows another process computed from
its share (``add_rows``, after ``rows`` there), and ``result`` turns the n samples into
schema-named values (``fid``, ``kid_mean``, ..., or ``swd`` and ``energy_distance``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from rfbench import data as datamod
from rfbench.errors import UserError

log = logging.getLogger("rfbench")

TOY_REFERENCE_SEED = 12345  # seed of the fresh true-distribution sample that toy2d compares with
INCEPTION_FEATURE_DIM = 2048


@runtime_checkable
class SampleStream(Protocol):
    """The samples of one cell, streamed into a metric."""

    def add(self, x: torch.Tensor) -> None:
        """The next batch of samples, in sample order, on the CPU, in [-1, 1]."""

    def add_rows(self, rows: dict[str, torch.Tensor], count: int) -> None:
        """The next ``count`` samples, as the rows another process's stream kept."""

    def rows(self) -> dict[str, torch.Tensor]:
        """What this stream kept of its samples (features, or the points themselves)."""

    def result(self) -> dict[str, float]:
        """The metric's values over all the samples announced."""


@runtime_checkable
class QualityMetric(Protocol):
    """A quality metric against a fixed reference, for any number of sample sets."""

    def stream(self, n: int) -> SampleStream:
        """A stream for ``n`` samples."""


def wants_features(metrics: tuple[str, ...]) -> bool:
    """Whether any of ``metrics`` compares image features (FID, KID, precision and recall,
    IS); ``inversion`` alone needs no feature extractor."""
    return any(m != "inversion" for m in metrics)


@dataclass
class Quality:
    """The quality metric of a run and the constant columns it adds to each row."""

    metric: QualityMetric
    columns: dict  # feature_extractor, reference


def resolve_extractor(
    dataset: str, choice: str, weights: str | None, train_split: datamod.DataSplit
):
    """Check the extractor ``choice`` before any work: "auto" is Inception for RGB data
    (the papers' FID) and for unlabelled data, the classifier for grayscale data with labels
    (fast on a CPU, where ImageNet features fit 28x28 digits poorly and cost most);
    Inception's ``weights`` are located and verified here.
    Returns the Inception Extractor, or None for the classifier (trained later) and for
    toy2d."""
    if datamod.get_dataset(dataset).kind == "toy":
        return None
    if choice == "auto":
        rgb = train_split.x.shape[1] == 3
        choice = "classifier" if train_split.labels is not None and not rgb else "inception"
    if choice == "classifier":
        if train_split.labels is None:
            raise UserError(
                f"dataset {dataset!r} has no labels, so the classifier extractor cannot be "
                "trained; use --feature-extractor inception"
            )
        return None
    from rfbench.metrics.inception import inception_extractor

    return inception_extractor(weights)


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
    stats=None,
) -> Quality:
    """The quality metric of a run: exact distances for toy2d; torch-fidelity for images,
    against the ``reference`` split or else ``stats`` (from ``load_reference_stats``:
    FID only), with ``extractor`` (from ``resolve_extractor``) or else the offline
    classifier."""
    if datamod.get_dataset(dataset).kind == "toy":
        from rfbench.metrics.toy import ToyDistances

        ref = datamod.toy2d_sample(n, TOY_REFERENCE_SEED)
        return Quality(ToyDistances(ref), {"reference": f"toy2d-true-n{n}"})
    from rfbench.metrics.fidelity import FidelityMetrics

    ref = train_split if reference == "train" else test_split
    if not wants_features(metrics):  # no extractor to train, load or download
        return Quality(FidelityMetrics(ref, None, (), device=device), {})

    extractor, feature_dim = ready_extractor(extractor, train_split, test_split, device, progress)
    if stats is not None:
        from rfbench.metrics.refstats import STATS_ONLY_METRICS, check_compatible

        check_compatible(stats, extractor.label, feature_dim, "--reference-stats")
        metrics = tuple(m for m in metrics if m in STATS_ONLY_METRICS)
        metric = FidelityMetrics(None, extractor, metrics, device=device, stats=stats)
        columns = {"feature_extractor": extractor.label, "reference": stats.label}
        warn_rank_deficient(n, feature_dim)
        return Quality(metric, columns)
    warn_rank_deficient(n, feature_dim)
    return Quality(
        FidelityMetrics(ref, extractor, metrics, device=device),
        {
            "feature_extractor": extractor.label,
            "reference": f"{dataset}-{ref.split}-{ref.content_hash[:8]}",
        },
    )


def ready_extractor(extractor, train_split, test_split, device, progress=None):
    """The Extractor that ``resolve_extractor`` chose (Inception), or else the dataset's
    classifier, trained now or read from its cache; and its feature dimension."""
    if extractor is not None:
        return extractor, INCEPTION_FEATURE_DIM
    from rfbench.metrics.classifier import FEATURE_DIM, get_classifier
    from rfbench.metrics.fidelity import CLASSIFIER_EXTRACTOR, Extractor

    info = get_classifier(train_split, test_split, device=device, progress=progress)
    log.info("feature extractor %s (test accuracy %.4f)", info.name, info.test_accuracy)
    return Extractor(CLASSIFIER_EXTRACTOR, info.name, info.path), FEATURE_DIM


def load_reference_stats(path: str, dataset: str, extractor, metrics: tuple[str, ...]):
    """Read ``--reference-stats`` and check, before any work, that the run's features can
    be compared with it (their dimension); returns the ``ReferenceStats``. Only FID needs
    nothing but mu and sigma: other metrics asked for are left out, and the log says so."""
    from rfbench.metrics.classifier import FEATURE_DIM
    from rfbench.metrics.refstats import STATS_ONLY_METRICS, check_compatible, read_stats

    if datamod.get_dataset(dataset).kind == "toy":
        raise UserError("--reference-stats holds image features; toy2d uses exact distances")
    stats = read_stats(path)
    where = f"--reference-stats {path}"
    if extractor is not None:  # Inception: its label is known now, so check it all now
        check_compatible(stats, extractor.label, INCEPTION_FEATURE_DIM, where)
    elif stats.dim != FEATURE_DIM:  # the classifier's label comes once it is trained
        raise UserError(
            f"{where} holds {stats.dim}-dimensional statistics, but the classifier features "
            f"are {FEATURE_DIM}-dimensional; for Inception statistics give "
            "--feature-extractor inception"
        )
    left_out = [m for m in metrics if m in ("kid", "prc", "isc")]
    if left_out:
        log.warning(
            "--reference-stats holds mu and sigma only: %s left out (%s only)",
            ", ".join(left_out),
            ", ".join(STATS_ONLY_METRICS),
        )
    log.info(
        "reference statistics %s: %s layout, %d dimensions, sha256 %s",
        path,
        stats.layout,
        stats.dim,
        stats.sha256[:16],
    )
    return stats


def warn_rank_deficient(n: int, feature_dim: int) -> None:
    if n < feature_dim:
        log.warning(
            "%d samples < %d feature dimensions: the sample covariance is rank-deficient and "
            "FID is strongly biased; compare only rows of equal n_samples",
            n,
            feature_dim,
        )
