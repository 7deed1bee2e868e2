"""Both builds of the CPU micro-kernels: the AVX-512 one this machine picks, and the
portable one (TORCHCONV3D_CPU_ISA=generic), which must pass the same differential tests."""
import os
import subprocess
import sys

import pytest

from torchconv3d import _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return []


def test_avx512_kernels_are_chosen_when_the_cpu_has_them():
    if os.environ.get("TORCHCONV3D_CPU_ISA") == "generic":
        assert _loader.cpu_isa() == "generic"
    elif "avx512f" in _cpu_flags():
        assert _loader.cpu_isa() == "avx512"
    else:
        assert _loader.cpu_isa() == "generic"


@pytest.mark.skipif(os.environ.get("TORCHCONV3D_CPU_ISA") == "generic",
                    reason="already running on the generic kernels")
def test_generic_kernels_pass_the_differential_tests():
    env = dict(os.environ, TORCHCONV3D_CPU_ISA="generic")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         os.path.join(ROOT, "tests", "test_correctness.py"),
         os.path.join(ROOT, "tests", "test_isa.py"),
         "-k", "not generic_kernels_pass"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " passed" in r.stdout
