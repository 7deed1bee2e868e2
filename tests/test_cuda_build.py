"""CI has no GPU: it compiles the CUDA build's sources with nvcc (objects only) whenever nvcc
is on PATH, so a CUDA build error is caught before a GPU machine sees the code."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_sources_compile(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "cuda_compile_check.py"),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   csrc/cuda/conv3d_cuda.cu" in r.stdout
