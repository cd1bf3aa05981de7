"""Sanity of the FID/KID numbers on Fashion-MNIST with the offline classifier extractor.

    python benchmarks/metrics_sanity.py --out results/metrics-sanity.md

Writes the markdown and a figure (``<out stem>.png``) with:

1. FID and KID of the test split against the train split (the floor real data reaches);
2. FID of the test split against the train split as the test images are disturbed more:
   Gaussian noise and Gaussian blur, five levels each;
3. FID and KID of one generated set (the quick model, Euler) and of the real test split at
   n = 500, 1k, 2k, 5k and 10k: small-n FID is biased upward; KID is not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from rfbench import candidates, runtime  # noqa: E402
from rfbench.cli import DefaultsFormatter
from rfbench.data import load_split  # noqa: E402
from rfbench.figures import PALETTE  # noqa: E402
from rfbench.metrics.classifier import get_classifier  # noqa: E402
from rfbench.metrics.fidelity import CLASSIFIER_EXTRACTOR, Extractor, samples_to_metrics  # noqa: E402
from rfbench.metrics.sanity import disturb  # noqa: E402
from rfbench.results import environment  # noqa: E402
from rfbench.sample import generate  # noqa: E402

NOISE = (0.05, 0.1, 0.2, 0.4, 0.8)  # std of added Gaussian noise, images in [-1, 1]
BLUR = (0.5, 1.0, 1.5, 2.0, 3.0)  # sigma of a 9x9 Gaussian blur, in pixels
SIZES = (500, 1000, 2000, 5000, 10_000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", default="results/metrics-sanity.md")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--solver-steps", type=int, default=16, help="Euler steps of the samples")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--epochs", type=int, default=None, help="override the quick preset's epochs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    device = runtime.resolve_device(args.device)
    start = time.perf_counter()

    train, test = load_split(args.dataset, "train"), load_split(args.dataset, "test")
    info = get_classifier(train, test, device=device)
    ex = Extractor(CLASSIFIER_EXTRACTOR, info.name, info.path)

    def metrics(x):
        return samples_to_metrics(x, train, ex, ("fid", "kid"), device=device)

    # 1. Real against real.
    real = metrics(test.x)
    # 2. Disturbances.
    dist = pd.DataFrame(
        [
            {"kind": k, "level": lv, "fid": metrics(disturb(test.x, k, lv))["fid"]}
            for k, levels in (("noise", NOISE), ("blur", BLUR))
            for lv in levels
        ]
    )
    # 3. Sample-size bias, generated and real.
    trained = candidates.obtain_model(
        candidates.model_spec(args.dataset, "quick", train, 0, args.epochs), train, device
    )
    gen = generate(
        trained.model,
        "euler",
        max(sizes),
        trained.spec.sample_shape,
        seed=0,
        steps=args.solver_steps,
        batch_size=500,
        device=device,
    )
    rows = []
    for n in sizes:
        for source, x in (("generated", gen.x), ("real test", test.x)):
            if n <= len(x):
                m = metrics(x[:n])
                rows.append(
                    {
                        "source": source,
                        "n": n,
                        "fid": m["fid"],
                        "kid_mean": m["kid_mean"],
                        "kid_std": m["kid_std"],
                    }
                )
    bias = pd.DataFrame(rows)

    # Figure: disturbance and sample size.
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.4), dpi=200)
    for ax, kind, label in ((axes[0], "noise", "noise std"), (axes[1], "blur", "blur sigma")):
        d = dist[dist.kind == kind]
        ax.plot(d.level, d.fid, marker="o", markersize=3, color=PALETTE[0])
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(f"FID ({info.name})", fontsize=7)
        ax.set_title(f"test split + {kind}", fontsize=8)
    for i, (source, g) in enumerate(bias.groupby("source")):
        axes[2].plot(g.n, g.fid, marker="o", markersize=3, color=PALETTE[i + 1], label=source)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("n samples", fontsize=8)
    axes[2].set_title("FID against n", fontsize=8)
    axes[2].legend(fontsize=6, frameon=False)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = out.with_suffix(".png")
    fig.savefig(figure, metadata={"Software": None})
    plt.close(fig)

    env = environment()
    text = "\n".join(
        [
            f"# Metric sanity on {args.dataset}, feature extractor {info.name}",
            "",
            f"Command: `python benchmarks/metrics_sanity.py {' '.join(argv or sys.argv[1:])}`",
            "",
            f"- machine: {env['processor']}, {env['cpu_count']} cores, torch {env['torch']}; "
            f"device {runtime.device_label(device)}; git commit {env['git_commit']}",
            f"- extractor: {info.name}, test accuracy {info.test_accuracy:.4f}; reference: the "
            f"{len(train.x)}-image train split",
            f"- generated set: {trained.model_id}, Euler {args.solver_steps} steps, seed 0",
            f"- total time {time.perf_counter() - start:.0f} s; figure: `{figure.name}`",
            "",
            f"## 1. Test split ({len(test.x)} images) against the train split",
            "",
            f"FID {real['fid']:.4g}, KID {real['kid_mean']:.4g} ± {real['kid_std']:.2g}",
            "",
            "## 2. FID as the test images are disturbed",
            "",
            dist.to_markdown(index=False, floatfmt=".4g"),
            "",
            "## 3. FID and KID against the sample count (first n of one set)",
            "",
            bias.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    )
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
