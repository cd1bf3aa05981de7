#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repository root, after benchmarks/gpu_prepare.sh filled
# .gpu-carry/ here: issue 19's study (benchmarks/blog_study.py) of the committed `blog`
# Fashion-MNIST model on CUDA, stopped after LIMIT_S seconds (default 520):
#   device run: command "bash benchmarks/gpu_blog_study.sh", carry .gpu-carry, timeout_s 600
# Steps 1-4 run there; step 5 (the standard Inception FID of the frontier) needs Inception
# weights that the device tool cannot carry (over its 64 MiB), so the study runs with
# --no-rescore and this script brings back the frontier cells' samples: here, the same
# blog_study command with --rescore scores them (`results/blog-fashion/README.md` says how).
# It leaves in $OUT (the tool brings back at most 8 files, 16 MB each):
#   study.log               the study's output, with start and end times and nvidia-smi
#   study.tgz               results/blog-fashion as the study left it, less all-samples/
#   frontier-samples.tgz    the frontier cells' saved samples (frontier-samples.txt)
#   work.tgz                step times, and the 2-RF and distilled 2-RF stripped to
#                           their sampling part (scripts/strip_checkpoint.py)
# Extra arguments go to blog_study.py; on a CPU, to try the whole path at a small size:
#   OUT=/tmp/gbs bash benchmarks/gpu_blog_study.sh 900 --num-samples 64 --pairs 128 ...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-blog-out}
LIMIT_S=${1:-520}
if ! [[ "$LIMIT_S" =~ ^[0-9]+$ ]]; then
    echo "gpu_blog_study.sh: the first argument is the time limit in seconds, not '$LIMIT_S'" >&2
    exit 2
fi
shift || true
mkdir -p "$OUT"
source benchmarks/gpu_carried.sh
study=results/blog-fashion
work=/tmp/blog-work
log="$OUT/study.log"
{
    echo "start $(date -u +%FT%T.%NZ) $(date +%s.%N)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >"$log"
timeout "$LIMIT_S" python3 benchmarks/blog_study.py --out "$study" --work "$work" \
    --data-root .gpu-carry/fashion-mnist --no-channels-last --no-compile --no-rescore \
    "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "end $(date -u +%FT%T.%NZ) $(date +%s.%N) rc=$rc" >>"$log"
tar czf "$OUT/study.tgz" --exclude=all-samples --exclude=checkpoint.pt "$study"
if [ -f "$study/frontier-samples.txt" ]; then
    tar czf "$OUT/frontier-samples.tgz" -T "$study/frontier-samples.txt"
fi
keep=()
for name in 2rf 2rf-d1; do
    ckpt="$work/reflow/$name/checkpoint.pt"
    rm -f "$work/$name.pt"
    if [ -f "$ckpt" ] && python3 scripts/strip_checkpoint.py "$ckpt" "$work/$name.pt" >>"$log" 2>&1
    then
        keep+=("$name.pt")
        python3 -c 'import sys; from rfbench.train import load_model as l; m = l(sys.argv[1]);
print(sys.argv[1], m.model_id, f"epochs {m.epochs_done} of {m.spec.train.epochs}")' \
            "$work/$name.pt" >>"$log" 2>&1
    fi
done
(cd "$work" && tar czf "$OUT/work.tgz" --ignore-failed-read step-times.json \
    reflow/step-times.json "${keep[@]}")
ls -la "$OUT"
exit "$rc"
