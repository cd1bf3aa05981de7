#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repository root, after benchmarks/gpu_prepare.sh filled
# .gpu-carry/ here:  device run: command "bash benchmarks/gpu_session.sh", carry .gpu-carry,
# timeout_s 600. It installs the carried wheels, runs benchmarks/gpu_check.py (about 8 min),
# and leaves in $OUT the report (<date>.md) and its run directories as one gpu-runs.tgz
# (the device tool brings back at most 8 files). Extra arguments go to gpu_check.py, so
# `bash benchmarks/gpu_session.sh --smoke --device cpu` tries the whole path on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
source benchmarks/gpu_carried.sh
work=/tmp/gpu-check
rm -rf "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 benchmarks/gpu_check.py --data-root .gpu-carry/fashion-mnist --out "$work" "$@" \
    2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
cp "$work"/*.md "$OUT"/ 2>/dev/null
tar czf "$OUT/gpu-runs.tgz" -C "$work" . 2>/dev/null
ls -la "$OUT"
exit "$rc"
