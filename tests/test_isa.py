"""Every build of the CPU micro-kernels this machine can run passes the same differential
tests: the one it picks by default (the widest: AVX512-BF16 where the CPU has it, for
bfloat16), and those TORCHCONV3D_CPU_ISA asks for (avx512, avx2, generic)."""
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


AVX512 = {"avx512f", "avx512dq", "fma"}
AVX512_BF16 = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}  # the bfloat16 build's target


def test_the_widest_build_the_cpu_runs_is_chosen():
    flags = set(_cpu_flags())
    cap = os.environ.get("TORCHCONV3D_CPU_ISA", "avx512_bf16")
    if cap == "avx512_bf16" and AVX512 | AVX512_BF16 <= flags:
        assert _loader.cpu_isa() == "avx512_bf16"
    elif cap in ("avx512_bf16", "avx512") and AVX512 <= flags:
        assert _loader.cpu_isa() == "avx512"
    elif cap in ("avx512_bf16", "avx512", "avx2") and {"avx2", "fma"} <= flags:
        assert _loader.cpu_isa() == "avx2"
    else:
        assert _loader.cpu_isa() == "generic"


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_narrower_builds_pass_the_differential_tests(isa):
    if "TORCHCONV3D_CPU_ISA" in os.environ:
        pytest.skip("already running with a chosen build")
    if isa == "avx512" and _loader.cpu_isa() != "avx512_bf16":
        pytest.skip("avx512 is the widest build here (no AVX512-BF16): the default run")
    if isa == "avx2" and not {"avx2", "fma"} <= set(_cpu_flags()):
        pytest.skip("CPU has no AVX2/FMA")
    env = dict(os.environ, TORCHCONV3D_CPU_ISA=isa)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         os.path.join(ROOT, "tests", "test_correctness.py"),
         os.path.join(ROOT, "tests", "test_autograd.py"),
         os.path.join(ROOT, "tests", "test_isa.py"),
         # the micro-kernels are the CPU backend's (the emulated CUDA kernels are built
         # apart), and torch.func's transforms exercise the autograd layer
         "--backend", "cpu", "-k", "not torch_func_transforms"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " passed" in r.stdout


def test_bfloat16_results_round_as_torch_rounds():
    """A bfloat16 result is its float sum rounded as torch rounds (to nearest even, ties
    included, overflow to Inf, subnormals kept), on every build: a 1x1x1 depthwise layer
    with unit weights returns x + bias, so torch's own x.float() + b.float() rounding is the
    reference, bit for bit. 20 channels: a full register and a ragged one."""
    import torch
    import torchconv3d

    g = torch.Generator().manual_seed(0)
    C = 20
    x = torch.randn(2, C, 3, 4, 7, generator=g).bfloat16()
    b = (torch.randn(C, generator=g) * 1e-3).bfloat16()
    flat = x.view(-1)
    specials = torch.tensor([float("inf"), -float("inf"), 3.3895e38, -3.3895e38, 1e-39, -5e-40,
                             0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8]).bfloat16()
    flat[:len(specials)] = specials
    b[:4] = torch.tensor([3.3895e38, -3.3895e38, 2 ** -8, 0.0]).bfloat16()  # overflow, ties
    w = torch.ones(C, 1, 1, 1, 1).bfloat16()
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xl = x.contiguous(memory_format=layout)
        y = torchconv3d.conv3d(xl, w, b, groups=C)
        ref = (xl.float() + b.float().view(1, C, 1, 1, 1)).bfloat16()
        assert torch.equal(y.isnan(), ref.isnan())
        same = y.view(torch.int16) == ref.view(torch.int16)
        assert (same | ref.isnan()).all(), (y[~same][:8], ref[~same][:8])
