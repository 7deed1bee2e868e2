#!/usr/bin/env bash
# Everything the CUDA kernels must show on a GPU, in one run, logs under $OUT (default
# gpu-logs/): JIT build for TORCH_CUDA_ARCH_LIST (default 9.0, the H100), the test suite on
# backend 'cuda' (`--backend cuda`: tests/cases.py, tests/conftest.py) and then whole,
# compute-sanitizer memcheck, racecheck, synccheck and initcheck on subsets of the
# differential suite (v1 and tensor-core kernels), and the benchmark suite against cuDNN
# (float32 with TF32 on and off, float16, bfloat16).
#
#     tools/gpu_verify.sh [quick]     # quick: tests and sanitizers, no benchmark
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCHCONV3D_FORCE_JIT=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
PY=${PYTHON:-python3}
status=0
step() {  # step NAME COMMAND...: runs, logs to $OUT/NAME.txt, remembers a failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
step build $PY -c "import torchconv3d, torch; from torchconv3d import _loader; \
print(_loader.BACKEND, _loader.LIBRARY, torch.__version__, torch.version.cuda); \
x = torch.randn(1, 2, 3, 4, 5, device='cuda'); print(torchconv3d.conv3d(x, torch.randn(3, 2, 1, 1, 1, device='cuda')).shape)"
# Every backend-parametrised test on 'cuda' (ids hold the backend), and tests/test_cuda.py.
CUDA_TESTS="tests/test_correctness.py tests/test_nonfinite.py tests/test_autograd.py tests/test_cuda.py"
step pytest-cuda $PY -m pytest -q -x $CUDA_TESTS --backend cuda -k cuda -p no:cacheprovider -rs
step pytest-all $PY -m pytest -q tests -p no:cacheprovider -k "not test_cuda_build"
# Sanitizer subsets of tests/test_correctness.py; ids read backend-case-...-dtype-layouts.
SAN="$PY -m pytest -q tests/test_correctness.py --backend cuda -p no:cacheprovider"
SUBSET='test_matches_torch and (basic or groups or depthwise or stride or dilation or k2s2) or test_padding_modes and (pad1 or asym_groups_stride) or test_half_types and (pad1 or depthwise) or test_tensor_cores and contiguous-contiguous and (tc_pad1 or tc_groups or tc_stride_over or tc_split_k)'
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 $SAN -k "$SUBSET"
RACE='test_matches_torch and float32 and (basic or groups or depthwise or k5) or test_tensor_cores and contiguous-contiguous and (tc_pad1 or tc_two_tiles or tc_split_k)'
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 $SAN -k "$RACE"
step synccheck compute-sanitizer --tool synccheck --error-exitcode 1 $SAN -k "$RACE"
step initcheck compute-sanitizer --tool initcheck --error-exitcode 1 $SAN -k "$RACE"
if [ "${1:-}" != quick ]; then
  step bench $PY benchmarks/run.py --device cuda --dtype float32 float16 bfloat16 \
    --tf32 on off --pass fwdbwd --markdown "$OUT/cuda.md"
fi
exit $status
