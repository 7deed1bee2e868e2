#!/usr/bin/env bash
# Everything the CUDA kernels must show on a GPU, logs under $OUT (default gpu-logs/): JIT
# build for TORCH_CUDA_ARCH_LIST (default 9.0, the H100/H200), the test suite on backend
# 'cuda' (`--backend cuda`: tests/cases.py, tests/conftest.py) plus the GPU-only tests
# (test_cuda.py, autocast('cuda'), DDP over gloo on CUDA tensors), then the whole suite,
# compute-sanitizer memcheck, racecheck, synccheck and initcheck on subsets of the
# differential suite (v1 and tensor-core kernels), and the benchmark against cuDNN (float32
# with TF32 on and off, float16, bfloat16).
#
#     tools/gpu_verify.sh [STAGE...]   # stages: build tests all sanitize bench (default: all five)
#
# A lent machine gives 10 minutes a command and 30 a session, so the stages can run in
# separate calls; each step has a time limit (STEP_LIMIT seconds, default 420) so its log
# comes back. The JIT build (70-77 s on 16 cores) lands in .torch_extensions/
# (TORCH_EXTENSIONS_DIR) and is reused by later calls only while the machine stays warm
# (a carried copy of it was rebuilt whole on a fresh machine, 2026-11-23).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TORCHCONV3D_FORCE_JIT=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}
PY=${PYTHON:-python3}
LIMIT=${STEP_LIMIT:-420}
# pytest-xdist spreads the tests over the machine's cores when it is installed; each worker
# keeps 2 CPU threads for the float64 references (on the H100 machine's 16 cores: 290 s
# with 8 workers of 16 threads each, 71 s like this).
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-$(nproc)}")
status=0
step() {  # step NAME COMMAND...: runs under the limit, logs to $OUT/NAME.txt, remembers a failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$LIMIT" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

stage_build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  step build $PY -c "import torchconv3d, torch; from torchconv3d import _loader; \
print(_loader.BACKEND, _loader.LIBRARY, torch.__version__, torch.version.cuda, torch.backends.cudnn.version()); \
x = torch.randn(1, 2, 3, 4, 5, device='cuda'); print(torchconv3d.conv3d(x, torch.randn(3, 2, 1, 1, 1, device='cuda')).shape)"
}

stage_tests() {
  local -x OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  # Every backend-parametrised test on 'cuda' (ids hold the backend) and the GPU-only ones.
  local files="tests/test_correctness.py tests/test_nonfinite.py tests/test_autograd.py tests/test_conv_transpose.py tests/test_padding_per_dim.py tests/test_streaming.py"
  step pytest-cuda $PY -m pytest -q $XDIST $files --backend cuda -k "cuda and not emulated" -p no:cacheprovider -rs
  step pytest-gpu-only $PY -m pytest -q tests/test_cuda.py tests/test_module.py tests/test_stress.py \
    -k "cuda or Cuda or autocast or distributed" -p no:cacheprovider -rs
}

stage_all() {
  local -x OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  step pytest-all $PY -m pytest -q $XDIST tests -p no:cacheprovider -k "not test_cuda_build"
}

stage_sanitize() {
  # Sanitizer subsets of tests/test_correctness.py; ids read backend-case-...-dtype-layouts.
  local san="$PY -m pytest -q tests/test_correctness.py --backend cuda -p no:cacheprovider"
  local subset='test_matches_torch and (basic or groups or depthwise or stride or dilation or k2s2) or test_padding_modes and (pad1 or asym_groups_stride) or test_half_types and (pad1 or depthwise) or test_tensor_cores and contiguous-contiguous and (tc_pad1 or tc_groups or tc_stride_over or tc_split_k)'
  local race='test_matches_torch and float32 and (basic or groups or depthwise or k5) or test_tensor_cores and contiguous-contiguous and (tc_pad1 or tc_two_tiles or tc_split_k)'
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 $san -k "$subset"
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 $san -k "$race"
  step synccheck compute-sanitizer --tool synccheck --error-exitcode 1 $san -k "$race"
  step initcheck compute-sanitizer --tool initcheck --error-exitcode 1 $san -k "$race"
  # A stream's head read in place (v1's Volume, v2's HeadFrames): two base pointers per row.
  step memcheck-stream compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest -q \
    tests/test_streaming.py --backend cuda -p no:cacheprovider \
    -k "cuda and not emulated and (stream_operator or in_place)"
}

stage_bench() {
  step bench $PY benchmarks/run.py --device cuda --dtype float32 float16 bfloat16 \
    --tf32 on off --pass fwdbwd --markdown "$OUT/cuda.md"
  step bench-stream $PY benchmarks/stream.py --device cuda --batch 8 --dtype float32 bfloat16
}

for stage in "${@:-build tests all sanitize bench}"; do
  for s in $stage; do "stage_$s"; done
done
exit $status
