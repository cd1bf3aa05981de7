#!/usr/bin/env bash
# rfbench's own regression gate: a small toy2d grid against the committed baseline.
#
#   bash benchmarks/ci_gate.sh                 # gate (exit 1 on a regression)
#   bash benchmarks/ci_gate.sh --update        # rewrite the baseline (commit it with a reason)
#
# NFE must not grow at all (fixed-step counts are exact; RK45's is deterministic on one
# torch build); sliced W2 may move 2% (float differences between CPUs); energy distance
# is reported but not gated; time is not gated (absolute times from another machine are
# noise).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BASELINE=benchmarks/baselines/toy2d
OUT=${RFBENCH_GATE_OUT:-$(mktemp -d)/gate}
GRID=(run --dataset toy2d --solvers euler,heun,rk45 --steps 1,4 --tols 1e-3 --epochs 2
      --num-samples 500 --seeds 0,1 --device cpu)
export RFBENCH_CACHE=${RFBENCH_CACHE:-$(mktemp -d)}  # train the tiny model afresh

if [ "${1:-}" = "--update" ]; then
    rm -rf "$BASELINE"
    "$PYTHON" -m rfbench "${GRID[@]}" --out "$BASELINE"
    rm -rf "$BASELINE/samples" "$BASELINE/trajectories" "$BASELINE/figures" "$BASELINE/run.log"
    exit 0
fi
"$PYTHON" -m rfbench "${GRID[@]}" --out "$OUT" >/dev/null
"$PYTHON" -m rfbench compare "$BASELINE" "$OUT" --any-model --max-nfe-increase 0 \
    --max-swd-increase 2% --max-time-increase off --fail-on-missing
