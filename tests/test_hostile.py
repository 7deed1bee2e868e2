"""Hostile arguments: overflowing or extreme stride, dilation and padding, argument
combinations that would break a promise, and module surgery. Each case once crashed the
process, hung, or returned a wrong answer without an error; calls that could crash run in
a subprocess, so a regression fails the test instead of killing the run."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d
from conftest import rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_isolated(code, env=None, timeout=120):
    """Runs `code` in a fresh interpreter; returns (returncode, stdout + stderr)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=ROOT)
    return r.returncode, r.stdout + r.stderr


# Strides and dilations that cannot change the result (an output extent of 1, a kernel
# extent of 1) are huge here; they once overflowed tile-size products (SIGFPE) or sized a
# workspace by them (gigabytes for a one-element input).
IRRELEVANT = [
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), dict(stride=(1, 1, 2**62)), torch.float32),
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), dict(stride=(1, 2**31, 2**31)), torch.float32),
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), dict(stride=(2**61, 1, 1)), torch.float64),
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), dict(stride=(1, 8192, 8192)), torch.float32),
    ((1, 1, 1, 1, 1), (1, 1, 1, 1, 1), dict(stride=(1, 2**40, 2**40)), torch.float32),
    ((1, 2, 3, 4, 5), (2, 2, 1, 3, 1), dict(dilation=(2**60, 1, 2**61)), torch.float64),
]


@pytest.mark.parametrize("xshape,wshape,kwargs,dtype", IRRELEVANT)
def test_irrelevant_huge_stride_or_dilation(xshape, wshape, kwargs, dtype):
    code = f"""
        import resource, torch, torch.nn.functional as F, torchconv3d
        x = torch.randn({xshape}, dtype={dtype}, requires_grad=True)
        w = torch.randn({wshape}, dtype={dtype}, requires_grad=True)
        y = torchconv3d.conv3d(x, w, **{kwargs})
        ref = F.conv3d(x.detach(), w.detach(), **{kwargs})
        assert y.shape == ref.shape and torch.allclose(y, ref), (y, ref)
        y.sum().backward()
        print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
    rc, out = _run_isolated(code, timeout=60)
    assert rc == 0, out
    assert int(out.split("peak MB")[1].split()[0]) < 2048, out


@pytest.mark.parametrize("kwargs,argument", [
    (dict(dilation=(1, 1, (2**64 - 1) // 3)), "dilation"),  # dilation * (k - 1) past 2^63
    (dict(dilation=(1, 1, 2**62)), "dilation"),
    (dict(padding=(0, 0, (2**63 - 1, 2**63 - 1))), "padding"),
    (dict(padding=2**62), "padding"),
    (dict(stride=2**63), "stride"),  # past int64: named here, not by the dispatcher
])
def test_overflowing_arguments_are_refused_by_name(kwargs, argument):
    code = f"""
        import torch, torchconv3d
        try:
            torchconv3d.conv3d(torch.randn(1, 1, 1, 1, 5), torch.randn(1, 1, 1, 1, 4),
                               **{kwargs})
        except (ValueError, RuntimeError) as e:
            print("ERROR:", e)
        else:
            print("ACCEPTED")
    """
    rc, out = _run_isolated(code)
    assert rc == 0, out
    assert "ERROR:" in out, out
    message = out.split("ERROR:")[1].splitlines()[0]
    assert argument in message and not re.search(r"-\d", message), message


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_causal_refuses_modes_that_read_the_future(mode):
    """reflect reads frames 1, 2, ... and circular the last frames in place of the padding
    before frame 0 (what the allowed modes do: test_module.py)."""
    x, w = torch.randn(1, 2, 6, 5, 5), torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="future"):
        torchconv3d.conv3d(x, w, padding="causal", padding_mode=mode)
    with pytest.raises(ValueError, match="future"):
        torchconv3d.Conv3d(2, 3, 3, padding="causal", padding_mode=mode)


def test_convert_moves_hooks():
    """A hook handle taken before convert still removes the hook afterwards."""
    net = nn.Sequential(nn.Conv3d(2, 3, 3))
    calls = []
    handle = net[0].register_forward_hook(lambda *a: calls.append(1))
    torchconv3d.convert(net)
    assert type(net[0]) is torchconv3d.Conv3d
    net(torch.randn(1, 2, 4, 4, 4))
    assert calls == [1]
    handle.remove()
    net(torch.randn(1, 2, 4, 4, 4))
    assert calls == [1], "the hook still fires after its handle was removed"


@pytest.mark.parametrize("value,expected,warns", [
    ("AVX2", "avx2", False), ("Generic", "generic", False), ("", None, False),
    ("sse9", None, True),
])
def test_cpu_isa_variable(value, expected, warns):
    code = """
        import warnings
        warnings.simplefilter("always")
        from torchconv3d import _loader
        print("ISA", _loader.cpu_isa())
    """
    rc, out = _run_isolated(code, env=dict(os.environ, TORCHCONV3D_CPU_ISA=value))
    assert rc == 0, out
    isa = out.split("ISA ")[1].split()[0]
    flags = open("/proc/cpuinfo").read()
    if expected == "avx2" and " avx2" not in flags:
        expected = "generic"
    widest = ("avx512_bf16" if " avx512_bf16" in flags else "avx512" if " avx512f" in flags
              else "avx2" if " avx2" in flags else "generic")
    assert isa == (expected or widest), out
    assert ("is not avx512_bf16, avx512, avx2 or generic" in out) == warns, out


@pytest.mark.parametrize("shape,dtype", [((1, 1, 80000, 1, 1), "float16"),
                                         ((1, 4, 40000, 2, 2), "bfloat16")])
def test_deep_half_precision_grad_input_stays_linear(shape, dtype):
    """float16/bfloat16 grad_input once scanned every output depth for every input depth
    (97.7 s at 80,000 depths); a runaway now fails the subprocess's time limit."""
    code = f"""
        import torch, torchconv3d, torch.nn.functional as F
        x = torch.randn({shape}, dtype=torch.{dtype}, requires_grad=True)
        w = torch.randn({shape[1]}, {shape[1]}, 3, 1, 1, dtype=torch.{dtype})
        y = torchconv3d.conv3d(x, w)
        gy = torch.randn_like(y)
        y.backward(gy)
        xr = x.detach().double().requires_grad_()
        F.conv3d(xr, w.double()).backward(gy.double())
        err = (x.grad.double() - xr.grad).abs().max() / xr.grad.abs().max()
        assert err < 2e-2, err
    """
    rc, out = _run_isolated(code, timeout=60)
    assert rc == 0, out


@pytest.mark.parametrize("kernel,dilation,reference", [
    (3, 400, "F.conv3d(x, w, padding='same', dilation=400)"),
    (2, 1000, "F.conv3d(x, w, padding='same', dilation=1000)"),
    # depth taps 0 and 2 read only padding: the reference drops them itself (torch would
    # pad 2^40 planes)
    ((3, 1, 3), (2**40, 1, 5), "F.conv3d(x, w[:, :, 1:2], padding=(0, 0, 5), dilation=5)"),
])
def test_same_with_dilation_far_past_the_input(kernel, dilation, reference):
    """'same' with a dilation much larger than the input: the taps off the middle read only
    padding. Their planes once grew as dilation^3 (16 s and 8.1 GB at dilation 400)."""
    code = f"""
        import resource, torch, torch.nn.functional as F, torchconv3d
        from torch.nn.modules.utils import _triple
        x = torch.randn(2, 4, 8, 8, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn((4, 4) + _triple({kernel}), dtype=torch.float64, requires_grad=True)
        y = torchconv3d.conv3d(x, w, padding="same", dilation={dilation})
        gy = torch.randn_like(y)
        ours = (y,) + torch.autograd.grad(y, (x, w), gy)
        ref = {reference}
        refs = (ref,) + torch.autograd.grad(ref, (x, w), gy)
        for a, b in zip(ours, refs):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
    rc, out = _run_isolated(code, timeout=60)
    assert rc == 0, out
    assert int(out.split("peak MB")[1].split()[0]) < 1024, out


@pytest.mark.parametrize("argument,value", [
    ("kernel_size", -(2**63)), ("kernel_size", (3, 0, 3)), ("kernel_size", 2**63),
    ("in_channels", 2**63), ("out_channels", -1),
])
def test_module_sizes_are_refused_by_name(argument, value):
    """nn.Conv3d leaves these to torch.empty ('SymIntArrayRef expected to contain only
    concrete integers', 'Overflow when unpacking long long')."""
    kwargs = dict(in_channels=1, out_channels=1, kernel_size=2)
    kwargs[argument] = value
    with pytest.raises(ValueError, match=f"{argument} must be .* but got {argument}="):
        torchconv3d.Conv3d(**kwargs)


def test_raw_backward_names_a_short_output_mask():
    x, w = torch.randn(1, 1, 3, 3, 3), torch.randn(1, 1, 2, 2, 2)
    gy = torch.randn(1, 1, 2, 2, 2)
    with pytest.raises(RuntimeError, match=r"output_mask to have 3 values .* output_mask=\[True\]"):
        torch.ops.torchconv3d.conv3d_backward(gy, x, w, [1] * 3, [0] * 6, [1] * 3, 1, "zeros",
                                              [True])


def test_hostile_sweep_finds_no_crash_and_no_silent_difference():
    """tools/hostile_sweep.py on a fixed seed: random extreme stride/dilation/padding/size
    values, every padding form and mode, four dtypes, functional and raw operators, each
    batch in a subprocess. A crash, hang or silent difference from F.conv3d fails it."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "hostile_sweep.py"),
                        "--cases", "300", "--seed", "3"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "DIFFERENT     0" in r.stdout and "CRASH         0" in r.stdout, r.stdout
