#!/usr/bin/env bash
# Run HERE (a machine with pip access) before a GPU session: fills .gpu-carry/, which the
# device tool carries to the GPU machine (`carry: [".gpu-carry"]`), with what that machine
# lacks: the Fashion-MNIST IDX files and a torch-fidelity wheel (its other needs, torch,
# torchvision, scipy, numpy, pillow, tqdm, torchdiffeq, pandas, matplotlib, are there).
# The GPU machine's python3 is 3.12 (see /work/.library/device/KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
rm -rf .gpu-carry
mkdir -p .gpu-carry/fashion-mnist .gpu-carry/wheels
src=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
cp "$src"/*-ubyte* .gpu-carry/fashion-mnist/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp -d .gpu-carry/wheels "torch-fidelity==0.4.0" "tabulate>=0.9"
du -sh .gpu-carry
echo "gpu_prepare: done; on the GPU: bash benchmarks/gpu_session.sh (carry .gpu-carry)"
