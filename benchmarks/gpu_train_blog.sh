#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repository root, after benchmarks/gpu_prepare.sh filled
# .gpu-carry/ here: trains the `blog` preset on Fashion-MNIST (10 epochs, AdamW 1e-4,
# clipping 1.0) with rfbench's own `train` command on CUDA, within LIMIT_S seconds (default
# 240). It leaves in $OUT: blog-train.log (the command's output, with the start and end
# times), and the checkpoint split into parts of 15 MB (the device tool brings back files of
# at most 16 MB): join them with `cat blog-checkpoint.pt.part-* > checkpoint.pt`.
# A run cut short keeps its last finished epoch, and `rfbench train --resume` continues it.
#   bash benchmarks/gpu_train_blog.sh [LIMIT_S] [extra rfbench train arguments]
# On a CPU, to try the path: bash benchmarks/gpu_train_blog.sh 60 --device cpu --epochs 1
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-train-out}
LIMIT_S=${1:-240}
shift || true
mkdir -p "$OUT"
source benchmarks/gpu_carried.sh
work=/tmp/blog-train
rm -rf "$work"
device=cuda
for a in "$@"; do [ "$a" = "--device" ] && device=; done
log="$OUT/blog-train.log"
{
    echo "start $(date -u +%FT%T.%NZ) $(date +%s.%N)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >"$log"
timeout "$LIMIT_S" python3 -m rfbench train --dataset fashion-mnist --preset blog \
    --data-root .gpu-carry/fashion-mnist --out "$work" ${device:+--device $device} "$@" \
    2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "end $(date -u +%FT%T.%NZ) $(date +%s.%N) rc=$rc" >>"$log"
if [ -f "$work/checkpoint.pt" ]; then
    sha256sum "$work/checkpoint.pt" >>"$log"
    split -b 15M -d "$work/checkpoint.pt" "$OUT/blog-checkpoint.pt.part-"
fi
ls -la "$OUT"
exit "$rc"
