"""CI has no GPU: it compiles the CUDA build's sources with nvcc (objects only, torch's own
nvcc flags) whenever nvcc is on PATH, so a CUDA build error is caught before a GPU machine
sees the code, and reads what ptxas and the SASS say of the tensor-core kernels."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from cuda_compile_check import cuobjdump  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "cuda_compile_check.py"),
                        "--out", str(out)], capture_output=True, text=True, timeout=1200)
    return r, out


def test_cuda_sources_compile(compiled):
    r, _ = compiled
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   csrc/cuda/conv3d_cuda.cu" in r.stdout


def test_v2_kernels_resources(compiled):
    """Every v2 kernel (tensor-core GEMMs, depthwise stencil family) keeps its working set in
    registers (no stack frame, no spills under its launch bounds), and every tensor-core
    GEMM's SASS holds HMMA instructions."""
    r, out = compiled
    assert r.returncode == 0, r.stdout + r.stderr
    assert cuobjdump() is not None, "cuobjdump not found: pip install nvidia-cuda-cuobjdump"
    with open(out / "resources.json") as f:
        kernels = {k: v for k, v in json.load(f).items() if "::tc::" in k or "::dw::" in k}
    gemms = [k for k in kernels if "tc_gemm_kernel" in k]
    assert gemms and len(kernels) > len(gemms), "v2 kernels missing from the build"
    for name, res in kernels.items():
        assert res["spill_stores"] == 0 and res["spill_loads"] == 0 and res["stack"] == 0, (
            name, res)
    assert all("hmma" in kernels[k] for k in gemms), (
        "cuobjdump printed no SASS: nvdisasm missing? pip install nvidia-cuda-nvdisasm")
    for name in gemms:
        assert kernels[name]["hmma"] > 0, (name, kernels[name])
