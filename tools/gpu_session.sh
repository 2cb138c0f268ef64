#!/usr/bin/env bash
# Every CUDA check of issue #3, staged for the device tool's GPU machines (one stage per call, each meant to fit a
# call's 10 minutes: not yet timed on a GPU); results and logs land in $OUT and come back. Prepare once per session, here:
#     bash tools/gpu_wheels.sh
# then, with the device tool:
#     run(command="bash tools/gpu_session.sh tests", carry=[".whl"])    gpu-marked tests + the engine/stream/half
#                                                                       tests on CUDA's python, fp16 vs fp32 agreement
#     run(command="bash tools/gpu_session.sh engine", carry=[".whl"])   upstream chattts vs raytts on the same GPU
#                                                                       (32 texts; add e.g. `--texts 256` after it)
# Record what comes back in benchmarks/RESULTS.md with the device name (gpu.txt).
set -uo pipefail
stage=${1:?usage: gpu_session.sh tests|engine [extra benchmarks/engine.py flags]}
shift
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing .whl failed: run tools/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAYTTS_CACHE=/tmp/raytts-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
status=0
case $stage in
  tests)
    # Not the Ray/Serve tests: the image has no ray. Everything engine-side, with the gpu-marked ones un-skipped.
    python3 -m pytest -q -p no:cacheprovider tests/unit/test_batcher.py tests/unit/test_compile.py \
      tests/unit/test_engine.py tests/unit/test_stream.py tests/unit/test_half_precision.py 2>&1 | tee "$out/tests.log"
    status=${PIPESTATUS[0]}
    python3 benchmarks/agreement.py --device cuda --out "$out/agreement-cuda.json" 2>&1 | tee "$out/agreement.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    ;;
  engine)
    UPSTREAM_PYTHON=python3 python3 benchmarks/engine.py --device cuda --dtypes float16 --compiles off,cudagraphs \
      --out "$out/engine-cuda.json" "$@" 2>&1 | tee "$out/engine.log"
    status=${PIPESTATUS[0]}
    ;;
  *)
    echo "unknown stage $stage: expected tests or engine" >&2
    exit 2
    ;;
esac
exit "$status"
