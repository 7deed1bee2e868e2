"""NaN and Inf propagate as in nn.Conv3d: the output and every gradient have NaN, +Inf and
-Inf exactly where the convolution's own terms put them, and the finite elements match.

The judge is exact_reference.exact_conv3d (float64, terms formed one by one). It follows
nn.Conv3d's definition, zero padding being a padded zero; torch's own float64 path agrees
with it (test_torch_float64_agrees), while its float32 oneDNN path skips padded taps, so
there a NaN/Inf weight gives +-Inf or a finite value at the border instead of NaN.
"""
import pytest
import torch
import torch.nn.functional as F

import torchconv3d

from cases import (BY_NAME, CPU, MODES, each_backend, make_layout, product, reference,
                   select)
from exact_reference import assert_same_values, exact_conv3d
from torchconv3d.functional import resolve_args

NAN, INF = float("nan"), float("inf")
# The cases (tests/cases.py): 'nonfinite' covers every kernel path and argument kind;
# 'dead_taps' has taps that read only zero padding (the plan drops them, csrc/ops.cpp):
# their terms are weight x 0 and grad_output x 0, NaN for a NaN/Inf factor; 'tc_nonfinite'
# runs the CUDA v2 kernels.

# Where to put non-finite values: tensor, then (index, value) pairs. Indices are picked
# per shape: a corner (read through padding and by border outputs) and an interior one.
INJECTIONS = {
    "x_nan": ("x", [("corner", NAN), ("inside", NAN)]),
    "x_inf": ("x", [("corner", INF), ("inside", -INF)]),
    "w_nan": ("w", [("corner", NAN)]),
    "w_inf": ("w", [("corner", INF), ("inside", -INF)]),
    "gy_inf": ("gy", [("corner", INF), ("inside", -INF)]),
    "gy_nan": ("gy", [("inside", NAN)]),
    "b_inf": ("b", [("corner", INF)]),
}


def _index(shape, where):
    if where == "corner":
        return tuple(s - 1 if i % 2 else 0 for i, s in enumerate(shape))
    return tuple(s // 2 for s in shape)


def _inject(t, spots):
    t = t.clone()
    for where, value in spots:
        t[_index(t.shape, where)] = value
    return t


def check_nonfinite(backend, case, mode, injection, dtype=torch.float64,
                    layout="contiguous", conv=None):
    """The backend's output and gradients (or conv's) against the exact judge, with the
    injection's non-finite values in place."""
    conv = backend.conv if conv is None else conv
    vals = {
        "x": torch.randn(case.input, dtype=torch.float64).to(dtype).double(),
        "w": torch.randn(case.weight_shape, dtype=torch.float64).to(dtype).double(),
        "b": torch.randn(case.out_channels, dtype=torch.float64).to(dtype).double(),
    }
    kwargs = case.conv_kwargs
    stride, pads, dil = resolve_args(vals["x"], vals["w"], kwargs.get("stride", 1),
                                     kwargs.get("padding", 0), kwargs.get("dilation", 1))
    target, spots = INJECTIONS[injection]
    if target != "gy":
        vals[target] = _inject(vals[target], spots)
    ref_in = [vals[k].clone().requires_grad_() for k in ("x", "w", "b")]
    ref = exact_conv3d(*ref_in, stride, pads, dil, case.groups, mode)
    gy = torch.randn_like(ref).to(dtype).double()
    if target == "gy":
        gy = _inject(gy, spots)
    ref_grads = torch.autograd.grad(ref, ref_in, gy)

    device = backend.device
    ours_in = [make_layout(vals["x"].to(device, dtype), layout).requires_grad_(),
               vals["w"].to(device, dtype).requires_grad_(),
               vals["b"].to(device, dtype).requires_grad_()]
    out = conv(*ours_in, padding_mode=mode, **kwargs)
    grads = torch.autograd.grad(out, ours_in, make_layout(gy.to(device, dtype), layout))
    tol = backend.tol[dtype]
    label = f"{backend.name} {case.name} {mode} {injection} {dtype} {layout}"
    for what, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"),
                          (out,) + grads, (ref,) + ref_grads):
        assert_same_values(a, e, tol, f"{label} {what}")


INJ = list(INJECTIONS)
# the emulator (slow) takes a zero-padded and a mirrored gather
_two_modes = lambda case, mode, injection: mode in ("zeros", "reflect")  # noqa: E731


@each_backend("case, mode, injection", product(select("nonfinite"), MODES, INJ),
              emulated=_two_modes)
def test_float64(backend, case, mode, injection):
    check_nonfinite(backend, case, mode, injection)


@each_backend("case, mode, injection", product(select("nonfinite"), MODES, INJ),
              emulated=_two_modes)
def test_float32_channels_last(backend, case, mode, injection):
    check_nonfinite(backend, case, mode, injection, torch.float32, "channels_last")


@each_backend("case, injection", product(select("dead_taps"), INJ))
def test_taps_reading_only_padding(backend, case, injection):
    check_nonfinite(backend, case, "zeros", injection)
    check_nonfinite(backend, case, "zeros", injection, torch.float32, "channels_last")


@each_backend("case, injection, dtype",
              product(select(names=("pad1", "depthwise_4ch", "wino_nonfinite", "rgb_stem",
                                    "one_channel")),
                      ["x_inf", "w_inf", "gy_nan"],
                      [torch.bfloat16, torch.float16]))
def test_half_types(backend, case, injection, dtype):
    check_nonfinite(backend, case, "zeros", injection, dtype, "strided")


@each_backend("case, mode, injection", product(select("tc_nonfinite"), ["zeros", "reflect"], INJ))
def test_v2_nan_inf_propagate(backend, case, mode, injection):
    """The NaN/Inf rule at the CUDA v2 kernels' dtype and layout (their grad_input reruns
    exactly when a weight is NaN or Inf); where launches are counted (the emulator), the v2
    kernels must have run."""
    kernels = ("depthwise",) if case.depthwise else ("forward", "grad_weight")
    before = {k: backend.v2_launches(k) for k in kernels}
    check_nonfinite(backend, case, mode, injection, torch.float16, "channels_last")
    if None not in before.values():
        assert all(backend.v2_launches(k) > n for k, n in before.items())


@pytest.mark.parametrize("injection", INJ)
@pytest.mark.parametrize("mode", MODES)
def test_torch_float64_agrees(mode, injection):
    """The judge is nn.Conv3d's own behaviour: torch's float64 module gives the same pattern."""
    def torch_conv(x, w, b, padding_mode, padding):
        if padding_mode == "zeros":  # nn.Conv3d pads zeros inside the convolution
            return F.conv3d(x, w, b, padding=padding)
        return reference(x, w, b, [1] * 3, [padding] * 6, [1] * 3, 1, padding_mode)

    check_nonfinite(CPU, BY_NAME["pad1"], mode, injection, conv=torch_conv)


@pytest.mark.parametrize("value", [INF, NAN])
def test_bfloat16_channels_last_pairs_keep_to_terms(value):
    """bfloat16 channels_last grad_weight sums positions in pairs (vdpbf16ps, 32+ input
    channels); with an odd output width the last pair's partner is past the row. An Inf or
    NaN input there (w = W_out, read by taps 1 and 2 of a width-3 kernel, not by tap 0)
    must reach only the taps whose terms hold it. Also the odd row's last position itself."""
    x = torch.randn(2, 32, 3, 4, 9, dtype=torch.float64).bfloat16().double()
    x[0, 5, 1, 2, 7] = value  # w = 7 = W_out: taps 1 and 2 read it, tap 0 does not
    x[1, 9, 0, 3, 6] = -value if value == INF else value  # the row's last output, tap 0
    w = torch.randn(16, 32, 1, 1, 3, dtype=torch.float64).bfloat16().double()
    b = torch.randn(16, dtype=torch.float64).bfloat16().double()
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = exact_conv3d(*ref_in, (1, 1, 1), [0] * 6, (1, 1, 1), 1, "zeros")
    gy = torch.randn_like(ref).bfloat16().double()
    ref_gw = torch.autograd.grad(ref, ref_in[1], gy)[0]
    cl = torch.channels_last_3d
    ours_x = x.bfloat16().contiguous(memory_format=cl)
    ours_w = w.bfloat16().requires_grad_()
    out = torchconv3d.conv3d(ours_x, ours_w, b.bfloat16())
    gw = torch.autograd.grad(out, ours_w, gy.bfloat16().contiguous(memory_format=cl))[0]
    assert_same_values(gw, ref_gw, 2e-2, f"bfloat16 channels_last grad_weight {value}")
