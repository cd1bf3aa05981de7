"""Reliability evidence: bad inputs and injected faults, each through the real command line.

    python benchmarks/reliability.py --out results/reliability.md

Every bad input runs as its own `python -m rfbench` process beside a finished run
directory; it passes when the process exits 2 with exactly one line on stderr, no
traceback, the finished run directory's files unchanged, and no run directory left at a
fresh --out (which would force --resume on the next try). An input that is valid but
once crashed may be given with the exit code it must end in instead. Faults: SIGKILL
during a grid and during training, then a resume; a second run on a busy directory.
"Lost" compares the final results (or model) with an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TOY = ["run", "--dataset", "toy2d", "--epochs", "2", "--num-samples", "200"]
SLOW = [
    *TOY,
    "--solvers",
    "euler,rk45",
    "--steps",
    "1,2",
    "--tols",
    "1e-2,1e-3,1e-4,1e-5",
    "--stepping",
    "per-sample",
]
TIMING = ["wall_time_s", "model_time_s", "overhead_time_s", "record_time_s", "images_per_s"]


def rfbench(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rfbench", *map(str, argv)], capture_output=True, text=True, **kw
    )


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ".lock":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _idx(path: Path, shape: tuple[int, ...], keep: int | None = None) -> None:
    """An IDX file of zeros with this shape; ``keep`` bytes of its data only (truncated)."""
    header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    data = bytes(int(np.prod(shape)))
    path.write_bytes(header + (data if keep is None else data[:keep]))


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def bad_inputs(work: Path) -> list[tuple]:
    """(kind, case, argv, expected exit, environment) for every bad input tried."""
    run = work / "done"
    ck = work / "model" / "checkpoint.pt"
    idx = work / "idx"
    idx.mkdir()
    for split, n in (("train", 5), ("t10k", 3)):  # all four files; train images cut short
        _idx(idx / f"{split}-images-idx3-ubyte", (n, 28, 28), 100 if split == "train" else None)
        _idx(idx / f"{split}-labels-idx1-ubyte", (n,))
    import torch

    from rfbench.train import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT}, work / "bare.pt")
    garbage = _copy_run(run, work / "garbage-csv")
    (garbage / "results.csv").write_bytes(os.urandom(400))
    words = _copy_run(run, work / "word-seed")
    (words / "results.csv").write_text((run / "results.csv").read_text().replace(",0,", ",x,", 1))
    bad_config = _copy_run(run, work / "bad-config")
    (bad_config / "config.json").write_text("{ not json")
    frame = pd.read_csv(run / "results.csv")
    frame.drop(columns="grid").to_csv(work / "no-grid.csv", index=False)
    frame.astype({"nfe": object}).assign(nfe="many").to_csv(work / "many.csv", index=False)
    cache_file = work / "cache-file"
    cache_file.write_text("")
    models = work / "cache" / "models"
    cached = next(models.glob("toy2d-quick-e2-*.pt"))
    cut_cache = work / "cut-cache"
    shutil.copytree(work / "cache", cut_cache)
    (cut_cache / "models" / cached.name).write_bytes(cached.read_bytes()[:400])
    (work / "evil.pt").write_bytes(pickle.dumps({"format": "x", "p": os.system}))
    (work / "cut.pt").write_bytes(ck.read_bytes()[:300])
    (work / "empty").mkdir()
    not_a_dir = work / "a-file"
    not_a_dir.write_text("")
    cases = [
        ("number <= 0", "--steps 0", [*TOY, "--steps", "0"]),
        ("number <= 0", "--tols -1e-3", [*TOY, "--tols=-1e-3"]),
        ("number <= 0", "--num-samples 0", [*TOY, "--num-samples", "0"]),
        ("number <= 0", "--tols inf", [*TOY, "--tols", "inf"]),
        (
            "number <= 0",
            "reflow --pairs 0",
            ["reflow", "--checkpoint", ck, "--pairs", "0", "--out", work / "r"],
        ),
        ("unknown name", "--solvers euler,nope", [*TOY, "--solvers", "euler,nope"]),
        ("unknown name", "--dataset nope", ["run", "--dataset", "nope"]),
        ("unknown name", "--preset huge", [*TOY, "--preset", "huge"]),
        ("unknown name", "--grids wavy", [*TOY, "--grids", "wavy"]),
        ("unknown name", "--device tpu", [*TOY, "--device", "tpu"]),
        ("malformed list", "--steps 1,,4", [*TOY, "--steps", "1,,4"]),
        ("malformed list", "--seeds 1,1", [*TOY, "--seeds", "1,1"]),
        ("malformed list", "--steps=--", [*TOY, "--steps=--"]),
        ("number out of range", "--seeds=-1", [*TOY, "--seeds=-1"]),
        ("number out of range", "--train-seed 2**70", [*TOY, "--train-seed", str(2**70)]),
        (
            "number out of range",
            "--steps 20000 beyond the default --max-nfe",
            [*TOY, "--steps", "20000"],
        ),
        (
            "conflicting options",
            "report --baseline without paired",
            ["report", run, "--baseline", "euler"],
        ),
        (
            "conflicting options",
            "reflow --loss lpips without --distill",
            ["reflow", "--checkpoint", ck, "--pairs", "5", "--loss", "lpips", "--out", work / "r"],
        ),
        (
            "existing output",
            "run into a finished run without --resume",
            [*TOY, "--solvers", "euler", "--steps", "1", "--out", run],
        ),
        (
            "existing output",
            "resume with another config",
            [*TOY, "--solvers", "euler", "--steps", "1,2", "--out", run, "--resume"],
        ),
        (
            "bad data",
            "truncated IDX file (all four present)",
            ["run", "--dataset", "mnist", "--data-root", idx],
        ),
        (
            "bad data",
            "empty image folder",
            ["run", "--dataset", "image-folder", "--data-root", work / "empty"],
        ),
        ("bad checkpoint", "missing file", [*TOY, "--checkpoint", work / "none.pt"]),
        ("bad checkpoint", "truncated file", [*TOY, "--checkpoint", work / "cut.pt"]),
        ("bad checkpoint", "malicious pickle", [*TOY, "--checkpoint", work / "evil.pt"]),
        (
            "bad checkpoint",
            "a dict holding only its format",
            [*TOY, "--checkpoint", work / "bare.pt"],
        ),
        (
            "bad cache",
            "a truncated cached model",
            [*TOY, "--solvers", "euler", "--steps", "1"],
            2,
            {"RFBENCH_CACHE": str(cut_cache)},
        ),
        (
            "bad cache",
            "RFBENCH_CACHE names a regular file",
            TOY,
            2,
            {"RFBENCH_CACHE": str(cache_file)},
        ),
        (
            "damaged run directory",
            "results.csv replaced by random bytes, --resume",
            [*TOY, "--solvers", "euler", "--steps", "1", "--out", garbage, "--resume"],
        ),
        (
            "damaged run directory",
            "a non-numeric seed in results.csv, --resume",
            [*TOY, "--solvers", "euler", "--steps", "1", "--out", words, "--resume"],
        ),
        (
            "damaged run directory",
            "config.json not JSON, --resume",
            [*TOY, "--solvers", "euler", "--steps", "1", "--out", bad_config, "--resume"],
        ),
        (
            "bad checkpoint",
            "made for another dataset (a toy2d model, a Fashion-MNIST run)",
            ["run", "--dataset", "fashion-mnist", "--checkpoint", ck],
        ),
        (
            "unwritable output",
            "--out under a regular file",
            [*TOY, "--out", not_a_dir / "run"],
        ),
        (
            "bad threshold",
            "compare --max-fid-increase lots",
            ["compare", run, run, "--max-fid-increase", "lots"],
        ),
        ("bad run directory", "report on a folder with no results", ["report", work / "empty"]),
        (
            "bad results file",
            "compare with nfe='many' in a row",
            ["compare", run, work / "many.csv"],
        ),
        (
            "bad results file",
            "compare against a CSV without a grid column",
            ["compare", run, work / "no-grid.csv"],
        ),
    ]
    return [(*c, 2, None) if len(c) == 3 else (*c, None) if len(c) == 4 else c for c in cases]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/reliability.md")
    args = p.parse_args(argv)
    rows, faults = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["RFBENCH_CACHE"] = str(work / "cache")
        assert (
            rfbench(
                "train", "--dataset", "toy2d", "--epochs", "2", "--out", work / "model"
            ).returncode
            == 0
        )
        assert (
            rfbench(*TOY, "--solvers", "euler", "--steps", "1", "--out", work / "done").returncode
            == 0
        )
        before = digest(work / "done")
        for kind, case, argv_, expected, env in bad_inputs(work):
            fresh = work / "fresh-out"
            if "--out" not in map(str, argv_) and argv_[0] == "run":
                argv_ = [*argv_, "--out", fresh]
            start = time.perf_counter()
            out = rfbench(*argv_, env={**os.environ, **(env or {})})
            seconds = time.perf_counter() - start
            err = out.stderr.strip().splitlines()
            last = err[-1] if err else ""
            one_line = len(err) == 1 and last.startswith("rfbench") if expected == 2 else True
            left = fresh.exists()
            ok = (
                out.returncode == expected
                and "Traceback" not in out.stderr
                and one_line
                and not left
            )
            rows.append(
                {
                    "kind": kind,
                    "case": case,
                    "exit": out.returncode,
                    "expected": expected,
                    "stderr lines": len(err),
                    "run dir left": left,
                    "s": round(seconds, 1),
                    "message": last[:110],
                    "passed": ok,
                }
            )
            shutil.rmtree(fresh, ignore_errors=True)
        lost_inputs = "nothing" if digest(work / "done") == before else "the run directory changed"

        # Faults.
        whole = work / "whole"
        rfbench(*SLOW, "--out", whole)
        reference = pd.read_csv(whole / "results.csv").drop(columns=TIMING)
        killed = work / "killed"
        for rows_before_kill in (3, 4):
            proc = subprocess.Popen(
                [sys.executable, "-m", "rfbench", *SLOW, "--out", killed, "--resume"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while (
                not (killed / "results.csv").exists()
                or len(pd.read_csv(killed / "results.csv")) < rows_before_kill
            ):
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        partial = len(pd.read_csv(killed / "results.csv"))
        rfbench(*SLOW, "--out", killed, "--resume")
        final = pd.read_csv(killed / "results.csv").drop(columns=TIMING)
        same = (
            final.sort_values(["solver", "steps", "rtol"])
            .reset_index(drop=True)
            .equals(reference.sort_values(["solver", "steps", "rtol"]).reset_index(drop=True))
        )
        faults.append(
            {
                "fault": "SIGKILL during a grid, twice, then --resume",
                "outcome": f"{partial} of 6 cells on disk after the kills; resumed to 6",
                "lost": "nothing (equal to an uninterrupted run but timing)"
                if same
                else "RESULTS DIFFER",
            }
        )

        t_argv = ["train", "--dataset", "toy2d", "--epochs", "12"]
        rfbench(*t_argv, "--out", work / "t-whole")
        ck = work / "t-killed" / "checkpoint.pt"
        proc = subprocess.Popen(
            [sys.executable, "-m", "rfbench", *t_argv, "--out", work / "t-killed"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not ck.exists():
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        from rfbench.train import load_model

        epoch = load_model(ck).epochs_done
        rfbench(*t_argv, "--out", work / "t-killed", "--resume")
        same = load_model(ck).model_id == load_model(work / "t-whole" / "checkpoint.pt").model_id
        faults.append(
            {
                "fault": "SIGKILL during training (12 epochs), then --resume",
                "outcome": f"killed after epoch {epoch}; resumed to 12",
                "lost": "nothing (same weights as uninterrupted)" if same else "WEIGHTS DIFFER",
            }
        )

        busy = work / "busy"
        proc = subprocess.Popen(
            [sys.executable, "-m", "rfbench", *SLOW, "--out", busy],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not (busy / "results.csv").exists():
            time.sleep(0.02)
        second = rfbench(*SLOW, "--out", busy, "--resume")
        proc.wait()
        faults.append(
            {
                "fault": "a second run on a directory in use",
                "outcome": f"exit {second.returncode}: "
                f"{second.stderr.strip().splitlines()[-1][:90]}",
                "lost": "nothing (the first run finished: "
                f"{len(pd.read_csv(busy / 'results.csv'))} of 6 cells)",
            }
        )

    table = pd.DataFrame(rows)
    summary = (
        table.groupby("kind", sort=False)
        .agg(cases=("case", "size"), passed=("passed", "sum"))
        .reset_index()
    )
    text = [
        "# Reliability: bad input and injected faults",
        "",
        "Command: `python benchmarks/reliability.py --out results/reliability.md` (2-core CPU).",
        "",
        f"## Bad input: {int(table.passed.sum())} of {len(table)} cases end in exactly one "
        "line on stderr and exit code 2, with no traceback and no run directory left behind",
        "",
        summary.to_markdown(index=False),
        "",
        f"Lost: {lost_inputs} (a finished run directory beside every case, compared by sha256).",
        "",
        table.to_markdown(index=False),
        "",
        "## Faults",
        "",
        pd.DataFrame(faults).to_markdown(index=False),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))
    return 0 if table.passed.all() else 1


if __name__ == "__main__":
    sys.exit(main())
