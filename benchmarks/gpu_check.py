"""The GPU check: the project's one short, prepared script, run whenever a GPU is lent.

A lent GPU session is 15 minutes in all, machine start-up included, so the check keeps to
``--budget-s`` (default 480 s on one H100). Its steps run most valuable first; a step that
may need more than what is left is skipped, and the report says so; a step that fails has
its error's first line written into the report, and the check goes on. The report is
rewritten after every step, so a session cut short still keeps what was measured.

Steps, with their default sizes and the time each may need on one H100 (less left: skipped):

1. environment: device, GPU memory, torch, CUDA, bf16, GPU count, git commit       (always)
2. training throughput of each preset's UNet on random tensors in [-1, 1]: median s/step
   of ``train_step`` (AdamW, clipping, EMA) over up to 40 steps after 5 warm-up steps, at
   most 15 s a preset, at the preset's batch; the full training's time extrapolated  60 s
3. ``rfbench run`` end to end on Fashion-MNIST: quick preset (trains its model, 1 epoch,
   unless cached), euler 1/2/4/8 and rk45, 10,000 samples, ``--batch-size auto``      150 s
4. sampling cost per solver family, step 3's model, one batch of 2048: euler 8 steps, rk4
   4 steps, dopri5 and scipy rk45 at rtol = atol = 1e-3; median of 3 repeats           40 s
5. the CUDA path options, ms per forward at batch 2048: fp32, bf16, channels_last,
   torch.compile, all three; max |difference| from fp32           20 s, +75 s per compile
6. torchrun, 2 processes on the one GPU, against 1 process: step 3's grid on its model;
   the results must agree (at most 150 s per command)                                120 s
7. reflow (least important): 10k dopri5 pairs, a 2-RF for 3 epochs, both at 1/2/4 Euler
   steps                                                                              60 s

Usage:

    python benchmarks/gpu_check.py --data-root DIR --out "$OUT"  # on the GPU machine
    python benchmarks/gpu_check.py --smoke --device cpu --out /tmp/gpu-check   # ~1 min

It writes ``<out>/<YYYY-MM-DD>.md``, and the run directories of steps 3, 6 and 7 under
``<out>/<YYYY-MM-DD>/`` (small: commit them under results/gpu/), and prints the report's
path. Each step starts its run directories afresh, so every number is from this run.
Without CUDA it refuses to run (exit 2) unless given ``--smoke`` (tiny sizes, toy2d) or
``--device cpu``. It exits 1 when a step failed (the report says which and why).

The lent GPU machine reaches no network: carry the Fashion-MNIST IDX files (a copy of
/usr/share/datasets/fashion-mnist in an ignored folder) and pass ``--data-root``, and carry
as wheels whatever Python packages it lacks (torch-fidelity, torchdiffeq).
"""

# No `from __future__ import annotations`: the tests load this file as a module that is not in
# sys.modules, and dataclasses cannot resolve string annotations there.
import argparse
import copy
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from rfbench import candidates, reflow, runner, runtime
from rfbench import data as datamod
from rfbench.atomic import atomic_write_text
from rfbench.cli import DefaultsFormatter
from rfbench.config import PRESETS, RunConfig
from rfbench.errors import first_line
from rfbench.flow import sample_t
from rfbench.models import build_model, count_parameters
from rfbench.results import STATUS_OK, environment
from rfbench.runtime import Acceleration, accelerate, compile_or_fall_back, device_label
from rfbench.sample import generate, synchronizer, warm_up
from rfbench.train import TrainedModel, load_model, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (1, 28, 28)  # the quick model's images (Fashion-MNIST) where step 3 gave none
AGREE_RTOL = 1e-6  # torchrun against one process: the quality metric's relative tolerance
# preset -> (image shape, training set, its size): the data each preset is made for.
TRAINING_SETS = {
    "quick": ((1, 28, 28), "Fashion-MNIST", 60_000),
    "blog": ((1, 28, 28), "MNIST / Fashion-MNIST", 60_000),
    "blog-afhq": ((3, 128, 128), "AFHQ-cat train (Choi et al. 2020)", 5_153),
    "blog-afhq-300": ((3, 128, 128), "AFHQ-cat train (Choi et al. 2020)", 5_153),
    "paper": ((3, 32, 32), "CIFAR-10", 50_000),
}
SOLVER_SETTINGS = (  # one solver of each family, at a setting of similar accuracy
    ("euler", "fixed-step", {"steps": 8}),
    ("rk4", "fixed-step", {"steps": 4}),
    ("dopri5", "torchdiffeq", {"rtol": 1e-3, "atol": 1e-3}),
    ("rk45", "scipy (numpy round trip every call)", {"rtol": 1e-3, "atol": 1e-3}),
    ("rk45-torch", "torch (scipy's RK45 control, on the device)", {"rtol": 1e-3, "atol": 1e-3}),
)
MIN_TORCH_RK45_SPEEDUP = 10.0  # GPU target: rk45-torch >= 10x faster than scipy at equal nfev
OPTIONS = (
    ("fp32", Acceleration()),
    ("bf16", Acceleration(precision="bf16")),
    ("channels_last", Acceleration(channels_last=True)),
    ("compile", Acceleration(compile=True)),
    ("bf16+channels_last+compile", Acceleration("bf16", channels_last=True, compile=True)),
)


@dataclass(frozen=True)
class Sizes:
    """How big each step is, and how long each may need (s): a step is skipped with less."""

    name: str
    train_batch: int | None  # None: each preset's training batch
    train_warmup: int
    train_steps: int  # at most this many timed steps a preset ...
    train_cap_s: float  # ... and no more once this long has passed (after 3 timed steps)
    fid_samples: int
    fid_epochs: int | None  # None: the quick preset's
    sample_batch: int
    sample_repeats: int
    option_batch: int
    option_repeats: int
    compile_backend: str
    compile_need_s: float
    torchrun_batch: int | None  # None: the batch size that step 3's "auto" chose
    torchrun_timeout_s: float  # per command
    reflow_pairs: int
    reflow_epochs: int
    need_s: dict[str, float] = field(default_factory=dict)  # step function -> seconds


GPU = Sizes(
    "GPU defaults",
    train_batch=None,
    train_warmup=5,
    train_steps=40,
    train_cap_s=15,
    fid_samples=10_000,
    fid_epochs=None,
    sample_batch=2048,
    sample_repeats=3,
    option_batch=2048,
    option_repeats=20,
    compile_backend="inductor",
    compile_need_s=75,
    torchrun_batch=None,
    torchrun_timeout_s=150,
    reflow_pairs=10_000,
    reflow_epochs=3,
    need_s={
        "training": 60,
        "fid_run": 150,
        "sampling": 40,
        "options": 20,
        "torchrun": 120,
        "reflow": 60,
    },
)
SMOKE = Sizes(
    "smoke (tiny, toy2d)",
    train_batch=2,
    train_warmup=1,
    train_steps=2,
    train_cap_s=5,
    fid_samples=200,
    fid_epochs=2,
    sample_batch=32,
    sample_repeats=3,
    option_batch=8,
    option_repeats=5,
    compile_backend="eager",
    compile_need_s=10,
    torchrun_batch=64,
    torchrun_timeout_s=120,
    reflow_pairs=256,
    reflow_epochs=1,
    need_s={
        "training": 10,
        "fid_run": 30,
        "sampling": 5,
        "options": 5,
        "torchrun": 20,
        "reflow": 10,
    },
)


class Budget:
    """The check's seconds: elapsed, left, and what each step took."""

    def __init__(self, total_s: float):
        self.total_s, self.start = total_s, time.perf_counter()
        self.spent: dict[str, float | None] = {}  # step -> seconds, None when skipped

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def fits(self, need_s: float) -> bool:
        return self.left() >= need_s

    def skip_line(self, need_s: float) -> str:
        return f"skipped: {max(self.left(), 0):.0f} s left (this may need {need_s:.0f} s)"

    def summary(self) -> str:
        per = ", ".join(
            f"{k} {'skipped' if s is None else f'{s:.0f} s'}" for k, s in self.spent.items()
        )
        return f"Budget: {self.elapsed():.0f} s used of {self.total_s:.0f} s; per step: {per}"


@dataclass
class Check:
    """What the steps share: the arguments, sizes, budget, and what earlier steps made."""

    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    budget: Budget
    runs: Path  # the run directories of this check
    dataset: str
    env: dict
    trained: TrainedModel | None = None  # step 3's quick model
    fid_batch: int | None = None  # the batch size step 3's "auto" chose


# Section: helpers.


def md_table(rows: list[dict]) -> list[str]:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]


def quick_model(ck: Check, image: bool) -> tuple[torch.nn.Module, tuple[int, ...], str]:
    """Step 3's trained quick model (an image model, if ``image``), else a random quick UNet."""
    t = ck.trained
    if t is not None and (not image or len(t.spec.sample_shape) == 3):
        return t.model, t.spec.sample_shape, f"step 3's trained quick model {t.model_id}"
    torch.manual_seed(0)
    p = PRESETS["quick"]
    model = build_model(IMAGE_SHAPE, p.unet, p.mlp).to(ck.device).eval().requires_grad_(False)
    why = "step 3 made none" if t is None else "step 3's model is not an image model"
    return model, IMAGE_SHAPE, f"a randomly initialised quick UNet ({why})"


def needs_trained(ck: Check) -> TrainedModel:
    if ck.trained is None:
        raise RuntimeError("this step needs step 3's quick model, and step 3 made none")
    return ck.trained


def median_forward_ms(model, x, t, repeats: int, device) -> tuple[float, torch.Tensor]:
    sync, times = synchronizer(device), []
    with torch.no_grad():
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            out = model(x, t)
            sync()
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), out.float()


def launch(cmd: list[str], timeout_s: float) -> float:
    """Run ``cmd`` in its own process group; its elapsed seconds. Past the timeout, the
    whole group (torchrun's workers too) is killed and this raises."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... did not end in {timeout_s:.0f} s") from None
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(output[-5000:])
        lines = [line for line in output.splitlines() if re.search(r"[A-Za-z]", line)]
        ours = [line for line in lines if line.startswith("rfbench: error")]  # the CLI's line
        last = (ours or lines or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... exit {proc.returncode}: {last[:300]}")
    return elapsed


# Section: the steps, one function each, returning the lines of its section.


def step_environment(ck: Check) -> list[str]:
    env, cuda = ck.env, torch.cuda.is_available()
    commit = f"{env['git_commit']}{' (uncommitted changes)' if env['git_dirty'] else ''}"
    facts = {
        "device": device_label(ck.device),
        "torch": env["torch"],
        "CUDA (torch build)": torch.version.cuda,
        "CUDA available": cuda,
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        facts |= {
            "GPUs": torch.cuda.device_count(),
            "GPU memory total / free": f"{total / 2**30:.1f} / {free / 2**30:.1f} GiB",
            "compute capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "bf16 supported": torch.cuda.is_bf16_supported(),
            "cuDNN": torch.backends.cudnn.version(),
            "TF32 matmul / cuDNN": f"{torch.backends.cuda.matmul.allow_tf32} / "
            f"{torch.backends.cudnn.allow_tf32}",
        }
    facts |= {"git commit": commit, "python": env["python"], "CPU cores": env["cpu_count"]}
    facts |= {pkg: env["packages"].get(pkg) for pkg in ("torchdiffeq", "scipy", "torch-fidelity")}
    return md_table([{"fact": k, "value": v} for k, v in facts.items()])


def time_training(ck: Check, name: str, shape: tuple[int, ...]) -> dict:
    """Median seconds per optimisation step, as train() runs one: noise and t drawn on the
    CPU, the batch copied in, ``train_step`` (AdamW, clipping, EMA), the loss read back."""
    p, s, device = PRESETS[name], ck.sizes, ck.device
    cfg, batch = p.train, ck.sizes.train_batch or p.train.batch_size
    torch.manual_seed(0)
    model = build_model(shape, p.unet, p.mlp).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"
    x1_host = torch.rand(batch, *shape, generator=g) * 2 - 1  # random "data" in [-1, 1]
    x1_host = x1_host.pin_memory() if pin else x1_host
    sync, times, start = synchronizer(device), [], time.perf_counter()
    for step in range(s.train_warmup + s.train_steps):
        sync()
        t0 = time.perf_counter()
        x1 = x1_host.to(device, non_blocking=pin)
        noise = torch.randn(batch, *shape, generator=g).to(device, non_blocking=pin)
        t = sample_t(batch, generator=g, dist=cfg.timesteps).to(device)
        float(train_step(model, ema, opt, noise, x1, t, cfg, step))  # train() reads the loss
        sync()
        if step >= s.train_warmup:
            times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > s.train_cap_s:
            break
    params = count_parameters(model)
    del model, ema, opt
    if pin:
        torch.cuda.empty_cache()
    return {
        "params": params,
        "batch": batch,
        "steps": len(times),
        "s_per_step": statistics.median(times),
    }


def step_training(ck: Check) -> list[str]:
    rows, measured = [], {}
    for name, (shape, dataset, n_train) in TRAINING_SETS.items():
        p = PRESETS[name]
        key = (p.unet, shape, p.train.batch_size)  # blog-afhq-300 trains blog-afhq's network
        if key not in measured:
            measured[key] = time_training(ck, name, shape)
        m = measured[key]
        steps = math.ceil(n_train / m["batch"]) * p.train.epochs
        rows.append(
            {
                "preset": name,
                "resolution": "x".join(map(str, shape)),
                "parameters": m["params"],
                "batch": m["batch"],
                "timed steps": m["steps"],
                "s/step (median)": m["s_per_step"],
                "images/s": m["batch"] / m["s_per_step"],
                "training set": f"{dataset}, {n_train}",
                "epochs": p.train.epochs,
                "steps in all": steps,
                "estimated hours": steps * m["s_per_step"] / 3600,
            }
        )
    missing = sorted(set(PRESETS) - set(TRAINING_SETS))
    s = ck.sizes
    batch = f"batch {s.train_batch} (smoke)" if s.train_batch else "its training batch"
    return [
        f"Each preset's UNet on random tensors in [-1, 1], at {batch}: {s.train_warmup} "
        f"warm-up step(s), then up to {s.train_steps} timed steps (stopping after "
        f"{s.train_cap_s:g} s once 3 are timed).",
        "",
        *md_table(rows),
        "",
        "The estimated hours are an extrapolation from the measured steps: s/step x "
        "ceil(training images / batch) x epochs on one device. Data loading is excluded (the "
        "data are random tensors already in memory), and so are random flips and the "
        "learning-rate warm-up; evaluation and checkpoints are not counted.",
        *([f"Presets without a known training set here: {', '.join(missing)}."] if missing else []),
    ]


def step_fid_run(ck: Check) -> list[str]:
    s, out = ck.sizes, ck.runs / "fid-run"
    shutil.rmtree(out, ignore_errors=True)  # every number in the report comes from this run
    cfg = RunConfig(
        dataset=ck.dataset,
        solvers=("euler", "rk45"),
        steps=(1, 2, 4, 8),
        preset="quick",
        num_samples=s.fid_samples,
        data_root=ck.args.data_root,
        out=str(out),
        resume=True,
        device=ck.args.device,
        batch_size="auto",
        epochs=s.fid_epochs,
    )
    train_split = datamod.load_split(ck.dataset, "train", ck.args.data_root)
    path = candidates.model_cache_path(
        candidates.model_spec(ck.dataset, "quick", train_split, cfg.train_seed, cfg.epochs)
    )
    start = time.perf_counter()
    run_dir = runner.run(cfg, progress=False)
    took = time.perf_counter() - start
    ck.trained = load_model(path, ck.device)
    frame = pd.read_csv(run_dir / "results.csv")
    batches = sorted({int(b) for b in frame["batch_size"].dropna()})
    ck.fid_batch = batches[0] if batches else None
    trained = re.search(r"trained \S+ in ([\d.]+) s", (run_dir / "run.log").read_text())
    model_line = (
        f"the quick model was trained in this run, in {trained.group(1)} s"
        if trained
        else "the quick model came from rfbench's cache (trained before this run)"
    )
    failed = int((frame["status"] != STATUS_OK).sum())
    return [
        f"`rfbench run --dataset {ck.dataset} --solvers euler,rk45 --steps 1,2,4,8 --preset "
        f"quick --num-samples {s.fid_samples} --batch-size auto"
        f"{f' --epochs {s.fid_epochs}' if s.fid_epochs else ''}`: {took:.1f} s in all; "
        f"{model_line} ({ck.trained.model_id}).",
        f"The batch size `auto` chose: {', '.join(map(str, batches))}. Cells not ok: {failed}.",
        f"Run directory: `{run_dir}`.",
        "",
        (run_dir / "table.md").read_text().strip(),
    ]


def step_sampling(ck: Check) -> list[str]:
    model, shape, which = quick_model(ck, image=False)
    b, device = ck.sizes.sample_batch, ck.device
    warm_up(model, shape, b, device)
    rows, finals = [], {}

    def sample(solver: str, **setting):
        return generate(
            model,
            solver,
            b,
            shape,
            seed=0,
            batch_size=b,
            device=device,
            repeats=ck.sizes.sample_repeats,
            progress=False,
            **setting,
        )

    for solver, family, setting in SOLVER_SETTINGS:
        run = sample(solver, **setting)
        finals[solver], nfe = run.x, run.nfe_per_solve[0]
        rows.append(
            {
                "solver": solver,
                "family": family,
                "setting": ", ".join(f"{k}={v:g}" for k, v in setting.items()),
                "NFE per batch": nfe,
                "wall s": run.wall_time_s,
                "model s": run.model_time_s,
                "overhead s": run.overhead_time_s,
                "overhead %": 100 * run.overhead_time_s / run.wall_time_s,
                "wall ms per NFE": 1e3 * run.wall_time_s / nfe,
            }
        )
    walls = {r["solver"]: r["wall s"] for r in rows}
    diff = (finals["rk45"] - finals["dopri5"]).abs().max().item()
    caveat = (
        ""
        if ck.trained is not None and ck.trained.model is model
        else " Adaptive NFE on a random network is not that of a trained one (whose field is "
        "much smoother): read the adaptive rows for their overhead, not their NFE."
    )
    nfes = {r["solver"]: r["NFE per batch"] for r in rows}
    speedup = walls["rk45"] / walls["rk45-torch"]
    same = nfes["rk45"] == nfes["rk45-torch"]
    twin = (finals["rk45"] - finals["rk45-torch"]).abs().max().item()
    verdict = (
        target(
            "rk45 / rk45-torch wall time at equal nfev",
            speedup if same else 0.0,
            ">=",
            MIN_TORCH_RK45_SPEEDUP,
        )
        if device.type == "cuda"
        else f"rk45 / rk45-torch wall time: {speedup:.2f} (the >= {MIN_TORCH_RK45_SPEEDUP:g}x "
        "target is for a GPU, where the host round trip crosses PCIe)"
    )
    # the same solver with per-sample stepping, vectorised: each sample its own steps
    setting = next(st for name, _, st in SOLVER_SETTINGS if name == "rk45-torch")
    vec = sample("rk45-torch", stepping="per-sample", **setting)
    per = vec.nfe_of_samples
    vectorised = (
        f"rk45-torch with per-sample stepping ({vec.per_sample_impl}): NFE per sample "
        f"{per.mean():.1f} ± {per.std():.2f} ({per.min():.0f} to {per.max():.0f}) against "
        f"the batch's {nfes['rk45-torch']}; wall {vec.wall_time_s:.3g} s, "
        f"{vec.wall_time_s / walls['rk45-torch']:.2f}x the batched solve's."
    )
    return [
        f"Model: {which}, samples of shape {list(shape)}; one batch of {b}; wall time is the "
        f"median of {ck.sizes.sample_repeats} timed solves after a warm-up.{caveat}",
        "",
        *md_table(rows),
        "",
        f"The scipy round-trip cost versus dopri5 (the same Dormand-Prince 5(4) pair, torch-"
        f"native): wall-time ratio rk45 / dopri5 = {walls['rk45'] / walls['dopri5']:.2f}; the "
        f"largest |difference| of their final samples = {diff:.3g}.",
        "",
        f"scipy's rk45 against rk45-torch (the same steps, state on the device): nfev "
        f"{nfes['rk45']} and {nfes['rk45-torch']} ({'equal' if same else 'NOT equal'}), "
        f"largest |difference| of the final samples {twin:.3g}.",
        "",
        verdict,
        "",
        vectorised,
    ]


DIFF = "max abs diff vs fp32"


def step_options(ck: Check) -> list[str]:
    base, shape, which = quick_model(ck, image=True)
    b, device, s = ck.sizes.option_batch, ck.device, ck.sizes
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(b, *shape, generator=g).to(device), torch.rand(b, generator=g).to(device)
    rows, reference = [], None
    for label, requested in OPTIONS:
        requested = replace(requested, compile_backend=s.compile_backend)
        row = {"option": label, "compute_dtype": "", "channels_last": "", "compiled": ""}
        if requested.compile and not ck.budget.fits(s.compile_need_s):
            blank = dict.fromkeys(("warm-up s", "ms per forward", "images/s", DIFF), "")
            rows.append({**row, **blank, "note": ck.budget.skip_line(s.compile_need_s)})
            continue
        start = time.perf_counter()
        model, effective = accelerate(copy.deepcopy(base), requested, device, shape)
        model, effective = compile_or_fall_back(
            model, effective, lambda m: warm_up(m, shape, b, device)
        )
        warm_s = time.perf_counter() - start
        ms, out = median_forward_ms(model, x, t, s.option_repeats, device)
        reference = out if reference is None else reference
        dropped = [k for k, v in requested.columns().items() if effective.columns()[k] != v]
        rows.append(
            {
                **row,
                **effective.columns(),
                "warm-up s": warm_s,
                "ms per forward": ms,
                "images/s": b / ms * 1e3,
                DIFF: (out - reference).abs().max().item(),
                "note": f"not in effect here: {', '.join(dropped)}" if dropped else "",
            }
        )
        del model
    return [
        f"Model: {which}; batch {b}, samples {list(shape)}; median of {s.option_repeats} "
        f"forwards after the warm-up (2 forwards, the compile included); torch.compile backend "
        f"{s.compile_backend}. The columns compute_dtype, channels_last and compiled are the "
        "options in effect (what rows of `rfbench run` record), not those asked for.",
        "",
        *md_table(rows),
    ]


def step_torchrun(ck: Check) -> list[str]:
    trained, s = needs_trained(ck), ck.sizes
    batch = s.torchrun_batch or ck.fid_batch
    args = [
        "run",
        "--dataset",
        ck.dataset,
        "--solvers",
        "euler,rk45",
        "--steps",
        "1,2,4,8",
        "--preset",
        "quick",
        "--num-samples",
        str(s.fid_samples),
        "--batch-size",
        str(batch),
        "--checkpoint",
        str(Path(trained.path).resolve()),
        "--device",
        ck.args.device,
    ]
    if ck.args.data_root:
        args += ["--data-root", str(Path(ck.args.data_root).resolve())]
    dirs = {n: (ck.runs / f"torchrun-{n}").resolve() for n in (1, 2)}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    timeout = min(s.torchrun_timeout_s, max(ck.budget.left() / 2, 10))
    elapsed = {
        1: launch([sys.executable, "-m", "rfbench", *args, "--out", str(dirs[1])], timeout),
        2: launch(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "rfbench",
                *args,
                "--out",
                str(dirs[2]),
            ],
            timeout,
        ),
    }
    keys = ["solver", "steps", "rtol", "seed"]
    one, two = (pd.read_csv(dirs[n] / "results.csv").fillna({k: -1 for k in keys}) for n in (1, 2))
    metric = "fid" if "fid" in one and one["fid"].notna().any() else "swd"
    both = one.merge(two, on=keys, suffixes=(" 1", " 2"))
    rel = (both[f"{metric} 2"] - both[f"{metric} 1"]).abs() / both[f"{metric} 1"].abs().clip(1e-12)
    rows = [
        {
            "solver": r["solver"],
            "steps": r["steps"] if r["steps"] >= 0 else "",
            "rtol": r["rtol"] if r["rtol"] >= 0 else "",
            "nfe_per_batch 1": r["nfe_per_batch 1"],
            "nfe_per_batch 2": r["nfe_per_batch 2"],
            f"{metric} 1": r[f"{metric} 1"],
            f"{metric} 2": r[f"{metric} 2"],
            "relative diff": d,
            "wall_time_s 1": r["wall_time_s 1"],
            "wall_time_s 2": r["wall_time_s 2"],
        }
        for (_, r), d in zip(both.iterrows(), rel)
    ]
    agree = (
        len(both) == len(one) == len(two) > 0
        and (both["status 1"] == STATUS_OK).all()
        and (both["status 2"] == STATUS_OK).all()
        and (both["nfe_per_batch 1"] == both["nfe_per_batch 2"]).all()
        and bool((rel <= AGREE_RTOL).all())
    )
    verdict = (
        f"the 1- and 2-process results agree (every cell ok, nfe_per_batch equal, {metric} "
        f"within {AGREE_RTOL:g} relative)"
        if agree
        else f"the 1- and 2-process results DISAGREE (see the table; tolerance {AGREE_RTOL:g})"
    )
    return [
        f"`rfbench run` of step 3's grid on its model ({trained.model_id}), --batch-size "
        f"{batch}, once as 1 process and once under `torchrun --nproc-per-node=2` (both "
        "processes on the same device), OMP_NUM_THREADS=1 for both.",
        f"Elapsed, whole command (start-up, data and metric set-up included): 1 process "
        f"{elapsed[1]:.1f} s, 2 processes {elapsed[2]:.1f} s.",
        "",
        *md_table(rows),
        "",
        f"Verdict: {verdict}.",
    ]


def step_reflow(ck: Check) -> list[str]:
    trained, s = needs_trained(ck), ck.sizes
    out = ck.runs / "reflow-run"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-reflow-") as tmp:  # pairs are large
        start = time.perf_counter()
        spec = reflow.pair_spec(
            trained, s.reflow_pairs, "dopri5", rtol=1e-3, atol=1e-3, shard_size=s.reflow_pairs
        )
        store = reflow.generate_pairs(
            trained, spec, tmp, batch_size=s.sample_batch, device=ck.device, progress=False
        )
        pairs_s = time.perf_counter() - start
        recipe = replace(trained.spec.train, epochs=s.reflow_epochs)
        two = reflow.reflow(
            trained, store, recipe, Path(tmp) / "2rf.pt", device=ck.device, progress=False
        )
        train_s = time.perf_counter() - start - pairs_s
        run_dir = runner.run(
            RunConfig(
                dataset=ck.dataset,
                solvers=("euler",),
                steps=(1, 2, 4),
                preset="quick",
                checkpoint=(trained.path, str(Path(tmp) / "2rf.pt")),
                device=ck.args.device,
                num_samples=s.fid_samples,
                data_root=ck.args.data_root,
                out=str(out),
                resume=True,
                batch_size=ck.fid_batch,
            ),
            progress=False,
        )
    return [
        f"{spec.pairs} dopri5 (rtol = atol = 1e-3) pairs from {trained.model_id} in "
        f"{pairs_s:.1f} s; the 2-RF {two.model_id} trained on them for {s.reflow_epochs} "
        f"epoch(s) in {train_s:.1f} s; both at 1, 2 and 4 Euler steps:",
        "",
        (run_dir / "table.md").read_text().strip(),
    ]


STEPS: tuple[tuple[str, str, Callable[[Check], list[str]]], ...] = (  # most valuable first
    ("environment", "Environment", step_environment),
    ("training", "Training throughput per preset (extrapolated training time)", step_training),
    ("fid_run", "FID run end to end (`rfbench run`, quick preset)", step_fid_run),
    ("sampling", "Sampling cost per solver family", step_sampling),
    ("options", "CUDA path options: time per forward", step_options),
    ("torchrun", "torchrun: 2 processes against 1", step_torchrun),
    ("reflow", "Reflow: 1-RF against 2-RF at few Euler steps", step_reflow),
)


def run_step(ck: Check, number: int, key: str, title: str, fn) -> tuple[list[str], bool]:
    """The step's section (skipped when it may not fit; its error's first line when it
    fails), and whether it failed."""
    lines, need, failed = [f"## {number}. {title}", ""], ck.sizes.need_s.get(key, 0), False
    label = f"{number}. {key}"
    if not ck.budget.fits(need):
        ck.budget.spent[label] = None
        return [*lines, ck.budget.skip_line(need), ""], False
    start = time.perf_counter()
    try:
        lines += fn(ck)
    except Exception as e:  # noqa: BLE001 - one failed step must not lose the others
        traceback.print_exc()
        lines.append(f"failed: {first_line(e, 300)}")
        failed = True
    ck.budget.spent[label] = time.perf_counter() - start
    return [*lines, ""], failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter
    )
    p.add_argument("--out", default="results/gpu", help="writes <out>/<YYYY-MM-DD>.md")
    p.add_argument("--device", default="auto", help="auto (CUDA), cuda, cuda:N, cpu")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset of steps 3, 6 and 7")
    p.add_argument("--data-root", default=None, help="where the dataset's files are")
    p.add_argument("--budget-s", type=float, default=480, help="seconds the check may take")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and toy2d, for a CPU test")
    p.add_argument(
        "--skip",
        default="",
        metavar="S1,S2",
        help=f"steps not to run, from: {', '.join(k for k, _, _ in STEPS)}",
    )
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {k for k, _, _ in STEPS}
    if unknown:
        print(f"gpu_check: unknown --skip step(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.smoke and args.device != "cpu":
        print(
            "gpu_check: no CUDA device here; this check is for a lent GPU (use --smoke for a "
            "small test, or --device cpu to run the full sizes on the CPU)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    budget = Budget(args.budget_s)
    device = runtime.resolve_device(args.device)
    sizes, date = SMOKE if args.smoke else GPU, time.strftime("%Y-%m-%d")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / f"{date}.md"
    ck = Check(
        args,
        device,
        sizes,
        budget,
        out / date,
        "toy2d" if args.smoke else args.dataset,
        environment(),
    )
    commit = f"{ck.env['git_commit']}{' (uncommitted changes)' if ck.env['git_dirty'] else ''}"
    report = [
        f"# rfbench GPU check, {date}",
        "",
        f"- command: `python benchmarks/gpu_check.py {' '.join(argv)}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- device: {device_label(device)}",
        f"- torch: {torch.__version__} (CUDA {torch.version.cuda})",
        f"- commit: {commit}",
        f"- sizes: {sizes.name}; dataset {ck.dataset}; budget {args.budget_s:g} s",
        "",
    ]
    failures = 0
    for number, (key, title, fn) in enumerate(STEPS, 1):
        if key in skip:
            report += [f"## {number}. {title}", "", "skipped: --skip", ""]
            continue
        lines, failed = run_step(ck, number, key, title, fn)
        report += lines
        failures += failed
        atomic_write_text(report_path, "\n".join([*report, budget.summary(), ""]))
    print(report_path)
    if failures:
        print(f"gpu_check: {failures} step(s) failed; the report says why", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
