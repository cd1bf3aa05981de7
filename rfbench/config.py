"""Frozen configuration and every default, shared by the Python API and the CLI.

Nothing else in rfbench defines a default value: the CLI's help text reads them from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

# Sampling and grid defaults.
DEFAULT_STEPS: tuple[int, ...] = (1, 2, 4, 8, 16)
DEFAULT_RTOL: float = 1e-5  # Liu et al. 2023 sample with RK45 at 1e-5; scipy's own default is 1e-3.
DEFAULT_TOLS: tuple[float, ...] = (DEFAULT_RTOL,)
DEFAULT_SEEDS: tuple[int, ...] = (0,)
DEFAULT_METRICS: tuple[str, ...] = ("fid", "kid")
METRIC_NAMES: tuple[str, ...] = ("fid", "kid", "prc", "isc", "inversion")
DEFAULT_REFERENCE: str = "train"
SAMPLE_LAYOUTS: tuple[str, ...] = ("npz", "png")  # --save-samples: ADM's arr_0, or PNG files
DEFAULT_GRIDS: tuple[str, ...] = ("uniform",)
DEFAULT_STEPPING: tuple[str, ...] = ("batched",)
DEFAULT_REPEATS: int = 1
DEFAULT_MAX_NFE: int = 10_000  # per batch solve; a cell that needs more fails, the grid goes on


@dataclass(frozen=True)
class UNetConfig:
    """Width and depth of the compact UNet; the image shape comes from the dataset."""

    base_channels: int = 16  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 1  # residual blocks per level
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes that get self-attention
    norm_groups: int = 4  # GroupNorm groups; must divide every channel count
    dropout: float = 0.0


@dataclass(frozen=True)
class MLPConfig:
    """Velocity MLP for toy2d."""

    hidden: int = 128
    depth: int = 3  # hidden layers
    time_features: int = 16  # sinusoidal features of t


@dataclass(frozen=True)
class TrainConfig:
    """The rectified-flow training recipe."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-4  # AdamW, as in the blog recipe
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # with warm-up: min(decay, (1 + step) / (10 + step))
    max_train_images: int | None = None  # a prefix of the training split; None = all
    seed: int = 0
    timesteps: str = "uniform"  # the distribution of training t: uniform or u-shaped
    loss: str = "l2"  # distillation only: l2, or lpips where its weights are present
    warmup_steps: int = 0  # linear learning-rate warm-up over this many steps
    random_flip: bool = False  # flip each training image left-right with probability 1/2


NOT_MEASURED = "not yet measured"


@dataclass(frozen=True)
class Preset:
    """A named bundle of model size, training recipe and evaluation size."""

    name: str
    description: str
    unet: UNetConfig
    mlp: MLPConfig
    train: TrainConfig
    toy_train: TrainConfig  # the recipe used when the dataset is toy2d
    num_samples: int  # generated samples per cell (FID sample count)
    batch_size: int  # sampling batch size
    steps: tuple[int, ...] = DEFAULT_STEPS
    datasets: tuple[str, ...] | None = None  # the image datasets it is for (None: any); toy2d
    # always takes the toy recipe
    image_size: int | None = None  # image-folder: resize and centre-crop to this by default
    h100_time: str = NOT_MEASURED  # expected training time on one H100, with its source
    source: str = ""  # where the recipe comes from


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        description="Minutes on a 2-core CPU: 16-channel UNet, 1 epoch at lr 1e-3, 1000 samples.",
        unet=UNetConfig(),
        mlp=MLPConfig(),
        train=TrainConfig(epochs=1, lr=1e-3),
        toy_train=TrainConfig(epochs=40, batch_size=256, lr=1e-3),
        num_samples=1000,
        batch_size=250,
        source="rfbench's own, for CI and first runs",
    ),
    "blog": Preset(
        name="blog",
        description="The blog recipe for MNIST and Fashion-MNIST: AdamW lr 1e-4, clipping "
        "1.0, 10 epochs, 32-channel UNet, 10k samples.",
        unet=UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, norm_groups=8),
        mlp=MLPConfig(hidden=256),
        train=TrainConfig(epochs=10, lr=1e-4),
        toy_train=TrainConfig(epochs=200, batch_size=256, lr=1e-3),
        num_samples=10_000,
        batch_size=500,
        datasets=("mnist", "fashion-mnist"),
        source="the blog post's MNIST / Fashion-MNIST recipe (docs/design.md)",
    ),
    "blog-afhq": Preset(
        name="blog-afhq",
        description="The blog's AFHQ-cat run: image-folder at 128x128, 100 epochs, AdamW lr "
        "1e-4, clipping 1.0, a 64-channel UNet with 5 levels (128 to 8 px).",
        unet=UNetConfig(
            base_channels=64,
            channel_mults=(1, 1, 2, 2, 4),
            num_res_blocks=2,
            norm_groups=32,
            attention_resolutions=(16,),
        ),
        mlp=MLPConfig(hidden=256),
        train=TrainConfig(epochs=100, batch_size=64, lr=1e-4, random_flip=True),
        toy_train=TrainConfig(epochs=200, batch_size=256, lr=1e-3),
        num_samples=5_000,
        batch_size=250,
        datasets=("image-folder",),
        image_size=128,
        source="the blog post's AFHQ-cat runs (docs/design.md); AFHQ: Choi et al. 2020",
    ),
    "paper": Preset(
        name="paper",
        description="CIFAR-10 as in Liu et al. 2023: DDPM++-sized UNet (128 channels, "
        "mults 1,2,2,2, 4 blocks, attention at 16 px, dropout 0.15), batch 128, lr 2e-4 with "
        "5000 warm-up steps, EMA 0.999999, flips, 1.3M steps; 50k samples.",
        unet=UNetConfig(
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=4,
            norm_groups=32,
            attention_resolutions=(16,),
            dropout=0.15,
        ),
        mlp=MLPConfig(hidden=512, depth=4),
        # 1,300,001 steps at batch 128; an epoch of 50,000 images is 391 steps: 3325 epochs.
        train=TrainConfig(
            epochs=3325,
            batch_size=128,
            lr=2e-4,
            ema_decay=0.999999,
            warmup_steps=5000,
            random_flip=True,
        ),
        toy_train=TrainConfig(epochs=400, batch_size=512, lr=1e-3),
        num_samples=50_000,
        batch_size=1000,
        datasets=("cifar10", "image-folder"),
        image_size=32,
        source="gnobitab/RectifiedFlow configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py "
        "and configs/default_cifar10_configs.py (Liu et al. 2023)",
    ),
}
PRESETS["blog-afhq-300"] = dataclasses.replace(
    PRESETS["blog-afhq"],
    name="blog-afhq-300",
    description="The blog's longer AFHQ-cat run: as blog-afhq, for 300 epochs.",
    train=dataclasses.replace(PRESETS["blog-afhq"].train, epochs=300),
)
DEFAULT_PRESET = "quick"


def cache_path() -> Path:
    """Where rfbench's cache is: $RFBENCH_CACHE or ~/.cache/rfbench (unchecked: for text
    that names it; ``cache_dir`` for a cache about to be used)."""
    env = os.environ.get("RFBENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfbench"


def cache_dir() -> Path:
    """rfbench's cache (models, classifiers, reference statistics): ``cache_path``, made
    and proven writable, where a path that exists and is not a directory, a broken link,
    or a directory that cannot be written is a UserError."""
    from rfbench.errors import UserError

    path = cache_path()
    env = os.environ.get("RFBENCH_CACHE")
    named = f"RFBENCH_CACHE={env}" if env else f"the cache {path}"
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            raise UserError(f"{named} cannot be a cache directory: {p} is a broken link")
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{named} cannot be a cache directory: {p} is not a directory")
            break
    from rfbench.atomic import ensure_writable_dir

    return ensure_writable_dir(path, named)


SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63: numpy's SeedSequence and torch take them


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` if it is an integer in [0, 2**63), else a UserError naming ``what``."""
    from rfbench.errors import UserError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{what} must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return seed


def _check_count(value, what: str) -> None:
    """``value`` must be an integer >= 1 (not a bool, not a float)."""
    from rfbench.errors import UserError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything `rfbench run` needs; written to the run directory as config.json."""

    dataset: str
    solvers: tuple[str, ...]
    preset: str = DEFAULT_PRESET
    steps: tuple[int, ...] | None = None  # None = the preset's steps
    tols: tuple[float, ...] = DEFAULT_TOLS  # rtol values; atol = rtol
    grids: tuple[str, ...] = DEFAULT_GRIDS  # time grids of the fixed-step solvers
    grid_times: tuple[float, ...] | None = None  # fixed-step solvers step on these instead
    t_start: float = 0.0  # every solve runs from t_start (noise side) to t_end
    t_end: float = 1.0
    stepping: tuple[str, ...] = DEFAULT_STEPPING  # adaptive solvers: batched, per-sample
    repeats: int = DEFAULT_REPEATS  # timed repeats of every solve; the median counts
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    num_samples: int | None = None  # None = the preset's
    batch_size: int | str | None = None  # None = the preset's; "auto" = what fits the GPU
    metrics: tuple[str, ...] = DEFAULT_METRICS
    reference: str = DEFAULT_REFERENCE  # the split FID compares with: train or test
    feature_extractor: str = "auto"  # auto, classifier or inception
    inception_weights: str | None = None  # path of weights-inception-2015-12-05-6726825d.pth
    reference_stats: str | None = None  # an .npz of mu and sigma: FID against it, not a split
    save_samples: str | None = None  # write every sample of each cell: npz or png
    checkpoint: tuple[str, ...] | None = None  # models to evaluate; None = train or reuse
    data_root: str | None = None
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    train_seed: int = 0
    epochs: int | None = None  # override the preset's training epochs
    max_nfe: int = DEFAULT_MAX_NFE
    image_size: int | None = None  # image-folder only: resize and centre-crop to this size
    precision: str = "fp32"  # the network's forward: fp32, or bf16 autocast (CUDA)
    channels_last: bool = False  # image networks in NHWC memory format
    compile: bool = False  # torch.compile the network
    workers: int = 0  # DataLoader worker processes when training
    keep_failed: bool = False  # --resume: keep failed cells as done instead of retrying them
    noise_at: int = 0  # external models: the t at which their noise lies (rfbench: 0)
    time_scale: float = 1.0  # external models: they take t * time_scale (999: DDPM-style)
    model_config: str | None = None  # external models: JSON file of constructor arguments

    def __post_init__(self) -> None:
        """The checks the command line makes, for configs from the API and --config too."""
        from rfbench.errors import UserError

        for seed in self.seeds:
            check_seed(seed, "each of --seeds")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds repeats a seed: {list(self.seeds)}")
        check_seed(self.train_seed, "--train-seed")
        for name in ("solvers", "grids", "stepping", "metrics", "checkpoint"):
            value = getattr(self, name)
            if value is None and name == "checkpoint":
                continue
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise UserError(f"--{name} must be a list of names, got {value!r}")
        for value, what, choices in (
            *((m, "each of --metrics", METRIC_NAMES) for m in self.metrics),
            *((m, "each of --stepping", ("batched", "per-sample")) for m in self.stepping),
            (self.reference, "--reference", ("train", "test")),
            (self.feature_extractor, "--feature-extractor", ("auto", "classifier", "inception")),
            (self.save_samples, "--save-samples", (None, *SAMPLE_LAYOUTS)),
        ):
            if value not in choices:
                raise UserError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for v in self.steps or ():
            _check_count(v, "each of --steps")
        for v in self.tols:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise UserError(f"each of --tols must be a finite number > 0, got {v!r}")
        for value, what in (
            (self.repeats, "--repeats"),
            (self.max_nfe, "--max-nfe"),
            (self.num_samples, "--num-samples"),
            (self.epochs, "--epochs"),
            (self.image_size, "--image-size"),
            (None if self.batch_size == "auto" else self.batch_size, "--batch-size"),
        ):
            if value is not None:
                _check_count(value, what)
        if self.reference_stats is not None:
            if self.reference != DEFAULT_REFERENCE:
                raise UserError("--reference chooses a split; --reference-stats replaces it")
            if "fid" not in self.metrics:
                raise UserError("--reference-stats gives FID only: add fid to --metrics")
        if self.grid_times is not None:
            if not isinstance(self.grid_times, tuple) or not self.grid_times:
                raise UserError(f"--grid-times must be a list of times, got {self.grid_times!r}")
            if self.steps is not None:
                raise UserError("--grid-times set the steps themselves; leave out --steps")
        for value, what in ((self.t_start, "--t-start"), (self.t_end, "--t-end")):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise UserError(f"{what} must be a number in [0, 1], got {value!r}")
        if not self.t_start < self.t_end:
            raise UserError(f"--t-start {self.t_start:g} must be below --t-end {self.t_end:g}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise UserError(f"--workers must be an integer >= 0, got {self.workers!r}")
        if self.compile and "per-sample" in self.stepping:
            from rfbench.solvers import SOLVERS

            vectorised = [s for s in self.solvers if s in SOLVERS and SOLVERS[s].per_sample_fn]
            if vectorised:
                raise UserError(
                    f"--compile with --stepping per-sample: {', '.join(vectorised)} then runs "
                    "the network at every batch size as samples finish, and the compiled "
                    "network is compiled for fixed sizes; leave out --compile or per-sample"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def replay(cls, path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
        """The config of an earlier run (its config.json), with ``overrides``: a new run
        of the same grid. Its ``out`` and ``resume`` are not taken over (the replay goes
        to a new directory unless ``overrides`` says otherwise)."""
        import json

        from rfbench.errors import UserError

        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read --config {path}: {e}") from None
        if not isinstance(saved, dict):
            raise UserError(f"--config {path} is not a run's config.json")
        names = cls.field_names()
        unknown = sorted(set(saved) - set(names) - {"measurement_version"})
        if unknown:
            raise UserError(
                f"--config {path} holds options this rfbench lacks: {', '.join(unknown)}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names}
        overrides = overrides or {}
        values.update({"out": None, "resume": False, **overrides})
        # --steps and --grid-times each replace the other (both set the fixed-step cells)
        if "grid_times" in overrides and "steps" not in overrides:
            values["steps"] = None
        if "steps" in overrides and "grid_times" not in overrides:
            values["grid_times"] = None
        try:
            return cls(**values)
        except TypeError as e:
            raise UserError(f"--config {path} is not a run's config.json: {e}") from None


def preset(name: str) -> Preset:
    return PRESETS[name]


def check_preset(name: str, dataset: str) -> Preset:
    """The preset, if it is made for ``dataset``; otherwise one clear error naming those
    that are (toy2d takes every preset's toy recipe)."""
    from rfbench.errors import UserError

    p = PRESETS[name]
    if dataset == "toy2d" or p.datasets is None or dataset in p.datasets:
        return p
    fits = [q.name for q in PRESETS.values() if q.datasets is None or dataset in q.datasets]
    raise UserError(
        f"preset {name} is for {', '.join(p.datasets)}, not {dataset}; for {dataset} use "
        f"{' or '.join(fits)}"
    )


FIGURE_FORMATS = ("pdf", "png", "svg")  # what `rfbench figures` writes by default
