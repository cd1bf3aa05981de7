# Sourced, from the repository root, by the scripts that run ON THE GPU MACHINE
# (gpu_session.sh, gpu_train_blog.sh): installs the wheels that benchmarks/gpu_prepare.sh put
# in .gpu-carry/wheels (exiting the caller if that fails), and puts them and this repository
# on PYTHONPATH.
if ls .gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu-carry/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
