#!/usr/bin/env bash
# The GPU checks in one go, on a lent device machine (README, "On a GPU"): the device check, the adapter's tests,
# then the image, batch and tracker benchmarks on CUDA, each log also written to $OUT (the device tool brings it
# back) or out/device.
# The wheels of what the machine lacks travel in .whl/ (`make device-wheels` fetches them); they are unpacked onto
# PYTHONPATH, since the machine has no internet and its Python is its own.
#   device run: carry [".whl"], command "bash tools/device_run.sh"
# Elsewhere: bash tools/device_run.sh [DEVICE] (default cuda), with PYTHON naming the interpreter (default python3).
set -uo pipefail
device=${1:-cuda}
python=${PYTHON:-python3}
out=${OUT:-out/device}
mkdir -p "$out"
if [ -d .whl ]; then
    site=$(mktemp -d)
    for wheel in .whl/*.whl; do "$python" -m zipfile -e "$wheel" "$site" || exit 1; done
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 DATALOOP_PATH=$(mktemp -d)
status=0
step() {
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | grep -v --line-buffered 'it/s]' | tee "$out/$name.log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "== $name failed"; status=1; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.log"
step check "$python" tools/device_check.py --device "$device"
# The Dataloop layer on the device: the adapter's tests compare its output with the core's on the same model.
SAM2_TEST_DEVICE=$device step adapter-tests "$python" -m pytest -q -p no:cacheprovider tests/test_adapter.py \
    tests/test_adapter_video.py tests/test_adapter_video_batch.py
step image "$python" bench/bench_image.py --device "$device" --repeat 5
step batch "$python" bench/bench_batch.py --device "$device"
step tracker "$python" bench/bench_tracker.py --device "$device" --skip memory
exit $status
