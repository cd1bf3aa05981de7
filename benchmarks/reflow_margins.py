"""The spread behind tests/test_reflow.py's margins: 1-RF against 2-RF over training seeds.

    python benchmarks/reflow_margins.py            # seeds 0, 1, 2; prints one line each
    python benchmarks/reflow_margins.py 3 4        # other training seeds

With the test's settings (1-RF 15 epochs, 4000 rk4 pairs at 16 steps, 2-RF 15 epochs):
straightness along 16 Euler steps, and the sliced W2 to the truth at 1 and 16 Euler steps,
for the 1-RF, the 2-RF and the 1-RF distilled to one step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace

from rfbench import candidates
from rfbench.data import load_split, toy2d_sample
from rfbench.metrics.toy import sliced_wasserstein
from rfbench.reflow import generate_pairs, pair_spec, reflow
from rfbench.sample import generate
from rfbench.train import train

EPOCHS_1RF, PAIRS, EPOCHS_2RF, N_EVAL = 15, 4000, 15, 2000  # as in tests/test_reflow.py


def measure(model) -> tuple[float, float, float]:
    many = generate(model, "euler", N_EVAL, (2,), seed=7, steps=16, record=True, progress=False)
    one = generate(model, "euler", N_EVAL, (2,), seed=7, steps=1, progress=False)
    truth = toy2d_sample(N_EVAL, 99)
    return (
        float(many.straightness.mean()),
        sliced_wasserstein(one.x, truth),
        sliced_wasserstein(many.x, truth),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "seeds", nargs="*", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)"
    )
    seeds = p.parse_args(argv).seeds
    data = load_split("toy2d")
    print("seed model straightness swd_1 swd_16")
    for seed in seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            rf1 = train(
                candidates.model_spec("toy2d", "quick", data, seed, EPOCHS_1RF),
                data,
                progress=False,
            )
            spec = pair_spec(rf1, PAIRS, "rk4", steps=16, seed=seed, shard_size=1000)
            store = generate_pairs(rf1, spec, work, batch_size=1000, progress=False)
            recipe = replace(rf1.spec.train, epochs=EPOCHS_2RF)
            rf2 = reflow(rf1, store, recipe, f"{work}/2rf.pt", progress=False)
            d1 = reflow(rf1, store, recipe, f"{work}/d1.pt", distill_steps=1, progress=False)
            for name, m in (("1rf", rf1), ("2rf", rf2), ("1rf-d1", d1)):
                s, w1, w16 = measure(m.model)
                print(f"{seed} {name} {s:.4g} {w1:.4g} {w16:.4g}")
        print(f"# seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
