"""Inception FID on Fashion-MNIST: real data against the test split, a noise ladder, and
how the Inception and classifier rankings of a run's cells agree.

The reference is the test split (10,000 images), its Inception features cached once. Then:

1. ``--n-real`` training images against it (FID and KID; the extraction is timed, which
   gives the extractor's images per second on this machine);
2. a disturbance ladder: the first ``--ladder-n`` of those images with Gaussian noise of
   each ``--sigmas`` (in the [-1, 1] pixel scale) added; FID must grow with sigma, under
   Inception and under the offline classifier alike;
3. with ``--run`` (written with ``--save-samples``) and ``--eval`` (``rfbench eval`` of it
   with Inception), each cell's classifier FID beside its Inception FID, and the rank
   correlation of the two orders (Kendall's tau, Spearman's rho).

    rfbench run --solvers euler,rk45 --dataset fashion-mnist --reference test \\
        --save-samples npz --out results/inception-fashion/quickstart
    rfbench eval results/inception-fashion/quickstart --dataset fashion-mnist --split test \\
        --feature-extractor inception --out results/inception-fashion/quickstart-inception
    python benchmarks/inception_fashion.py --run results/inception-fashion/quickstart \\
        --eval results/inception-fashion/quickstart-inception \\
        --out results/inception-fashion/README.md

Targets: the ladder's FID strictly increasing (Inception and classifier); Kendall's tau of
the two rankings >= 0.6 (the extractors are different networks; a large disagreement would
say that one of them does not see what the solvers change).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import target  # noqa: E402

from rfbench.data import load_split, to_uint8  # noqa: E402
from rfbench.metrics.fidelity import FidelityMetrics  # noqa: E402
from rfbench.metrics.inception import inception_extractor  # noqa: E402
from rfbench.metrics.quality import ready_extractor  # noqa: E402
from rfbench.results import read_run  # noqa: E402

MIN_TAU = 0.6
NOISE_SEED = 0


def _score(fm: FidelityMetrics, images: torch.Tensor) -> tuple[dict, float, dict]:
    """FID and KID of uint8 images against fm's reference, the seconds it took, and the
    images' features (to score a subset again without extracting them again)."""
    stream = fm.stream(len(images))
    start = time.perf_counter()
    for chunk in images.split(fm.extractor.batch_size):
        stream.add_uint8(chunk)
    seconds = time.perf_counter() - start
    return stream.result(), seconds, stream.rows()


def _score_rows(fm: FidelityMetrics, rows: dict, n: int) -> dict:
    """The metrics of the first n of some images whose features are already known."""
    stream = fm.stream(n)
    stream.add_rows({k: v[:n] for k, v in rows.items()}, n)
    return stream.result()


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(NOISE_SEED)
    return to_uint8(x + sigma * torch.randn(x.shape, generator=g))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--inception-weights", default=None)
    ap.add_argument("--n-real", type=int, default=2000)
    ap.add_argument("--ladder-n", type=int, default=1000)
    ap.add_argument("--sigmas", default="0.05,0.1,0.2")
    ap.add_argument("--run", type=Path, default=None, help="a run written with --save-samples")
    ap.add_argument("--eval", type=Path, default=None, help="rfbench eval of --run, Inception")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    torch.manual_seed(0)
    train = load_split(args.dataset, "train", args.data_root)
    test = load_split(args.dataset, "test", args.data_root)
    ex = inception_extractor(args.inception_weights)
    inc = FidelityMetrics(test, ex, ("fid", "kid"))
    start = time.perf_counter()
    inc.reference_features()
    ref_s = time.perf_counter() - start
    clf_ex, _ = ready_extractor(None, train, test, "cpu", progress=False)
    clf = FidelityMetrics(test, clf_ex, ("fid", "kid"))

    real = train.x[: args.n_real]
    real_inc, real_s, real_rows = _score(inc, to_uint8(real))
    per_s = len(real) / real_s
    clean = real[: args.ladder_n]  # sigma = 0: the first ladder_n of the real images
    ladder = [
        (
            0.0,
            _score_rows(inc, real_rows, len(clean))["fid"],
            _score(clf, to_uint8(clean))[0]["fid"],
        )
    ]
    for sigma in sigmas:
        images = _noisy(clean, sigma)
        ladder.append((sigma, _score(inc, images)[0]["fid"], _score(clf, images)[0]["fid"]))
    inc_up = all(a[1] < b[1] for a, b in zip(ladder, ladder[1:]))
    clf_up = all(a[2] < b[2] for a, b in zip(ladder, ladder[1:]))

    lines = [
        f"# Inception FID on {args.dataset}",
        "",
        "Command: `python benchmarks/inception_fashion.py"
        + "".join(
            f" --{k} {v}"
            for k, v in (("run", args.run), ("eval", args.eval), ("out", args.out))
            if v is not None
        )
        + f"` ({platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}).",
        "",
        f"- Extractor `{ex.label}` (the TF Inception-v3 2015-12-05 pool features: "
        "results/inception-proof.md); classifier `" + clf_ex.label + "`.",
        f"- Reference: the {args.dataset} test split, {len(test.x)} images, sha256 "
        f"`{test.content_hash[:16]}`; its features took {ref_s:.1f} s here "
        + ("(read from the cache)." if ref_s < 60 else "(computed)."),
        "",
        "## Real images against the reference",
        "",
        f"{len(real)} training images: Inception FID **{real_inc['fid']:.3f}**, KID "
        f"{real_inc['kid_mean']:.5f} ± {real_inc['kid_std']:.5f}. Their features took "
        f"{real_s:.1f} s: **{per_s:.2f} images/s**, so a 10,000-image reference costs about "
        f"{10000 / per_s / 60:.0f} minutes on this machine, once (then it is cached).",
        "",
        "## Noise ladder",
        "",
        f"The first {args.ladder_n} of those images with Gaussian noise (sigma in the [-1, 1] "
        f"pixel scale, seed {NOISE_SEED}, rounded to uint8), against the test split:",
        "",
        "| sigma | Inception FID | classifier FID |",
        "|---:|---:|---:|",
        *(f"| {s:g} | {a:.3f} | {b:.3f} |" for s, a, b in ladder),
        "",
        target(
            "Inception FID strictly increasing along the ladder (1 = yes)", float(inc_up), ">=", 1
        ),
        "",
        target(
            "classifier FID strictly increasing along the ladder (1 = yes)", float(clf_up), ">=", 1
        ),
    ]
    ok = inc_up and clf_up
    if args.run is not None and args.eval is not None:
        tau, rho, cells, table = _agreement(args.run, args.eval)
        lines += [
            "",
            "## A run's cells under both extractors",
            "",
            "Made by:",
            "",
            *(f"    rfbench {' '.join(_argv(d))}" for d in (args.run, args.eval)),
            "",
            f"`{args.run}` (classifier, written with `--save-samples npz`) and `{args.eval}` "
            "(`rfbench eval` of the same saved samples with Inception), both against the "
            "test split:",
            "",
            table,
            "",
            f"Rank agreement over {cells} cells: Kendall's tau "
            f"{tau:.3f}, Spearman's rho {rho:.3f}.",
            "",
            target("Kendall's tau of the two FID rankings", tau, ">=", MIN_TAU),
        ]
        ok = ok and tau >= MIN_TAU
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0 if ok else 1


def _agreement(run: Path, evaluated: Path) -> tuple[float, float, int, str]:
    keys = ["model_id", "solver", "steps", "rtol", "seed"]
    a = read_run(run)
    b = read_run(evaluated)
    a, b = a[a["status"] == "ok"], b[b["status"] == "ok"]
    m = a.merge(b, on=keys, suffixes=("_clf", "_inc"))
    if len(m) < 2 or len(m) != len(a):
        raise SystemExit(f"{evaluated} scores {len(m)} of the {len(a)} cells of {run}")
    tau = sps.kendalltau(m["fid_clf"], m["fid_inc"]).statistic
    rho = sps.spearmanr(m["fid_clf"], m["fid_inc"]).statistic
    m = m.assign(setting=[_setting(r) for r in m.to_dict("records")])
    m["classifier rank"] = m["fid_clf"].rank().astype(int)
    m["Inception rank"] = m["fid_inc"].rank().astype(int)
    table = pd.DataFrame(
        {
            "solver": m["solver"],
            "setting": m["setting"],
            "NFE": m["nfe_clf"].round(1),
            "classifier FID": m["fid_clf"].round(2),
            "Inception FID": m["fid_inc"].round(2),
            "classifier rank": m["classifier rank"],
            "Inception rank": m["Inception rank"],
        }
    ).to_markdown(index=False)
    return float(tau), float(rho), len(m), table


def _argv(run_dir: Path) -> list[str]:
    """The command line that made a run directory (its env.json's first invocation)."""
    try:
        return json.loads((run_dir / "env.json").read_text())["invocations"][0]["argv"]
    except (OSError, ValueError, KeyError, IndexError):
        return ["(env.json not readable)"]


def _setting(row: dict) -> str:
    steps = row["steps"]
    return f"{int(steps)} steps" if pd.notna(steps) else f"rtol {row['rtol']:g}"


if __name__ == "__main__":
    sys.exit(main())
