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
from torchconv3d.functional import resolve_args

from conftest import TOL, make_layout, reference
from exact_reference import assert_same_values, exact_conv3d

NAN, INF = float("nan"), float("inf")
MODES = ["zeros", "reflect", "replicate", "circular"]

# (name, input shape, C_out, kernel, kwargs): every kernel path and argument kind.
CONFIGS = [
    ("pad1", (2, 3, 5, 6, 7), 4, (3, 3, 3), dict(padding=1)),
    ("stride", (2, 3, 9, 8, 7), 4, (3, 3, 3), dict(stride=(2, 1, 3), padding=1)),
    ("valid_wide", (2, 3, 5, 6, 9), 4, (3, 3, 3), {}),
    ("depthwise", (2, 4, 6, 5, 7), 4, (3, 3, 3), dict(groups=4, padding=1)),
    ("multiplier", (2, 2, 6, 5, 7), 6, (3, 1, 3), dict(groups=2, padding=(1, 0, 1))),
    ("groups_dilation_asym", (2, 4, 7, 7, 8), 6, (3, 2, 3),
     dict(groups=2, padding=((1, 2), (0, 1), (2, 1)), dilation=(2, 1, 2))),
    ("same_stride_tf", (1, 3, 9, 8, 7), 4, (3, 3, 3), dict(padding="same", stride=2)),
    ("k1", (2, 5, 4, 5, 6), 3, (1, 1, 1), {}),
    ("big_channels", (1, 20, 4, 5, 6), 18, (3, 3, 3), dict(padding=1)),
    # channels_last: dense channels-innermost kernels, grad_input by stride phases
    ("wide_strided", (1, 32, 5, 6, 7), 16, (3, 3, 3), dict(stride=2, padding=1)),
]

# Taps that read only zero padding (the plan drops them, csrc/ops.cpp): their terms are
# weight x 0 and grad_output x 0, NaN for a NaN/Inf factor. The corner weight is a dropped
# tap, the inside one a kept tap.
DEAD_TAPS = [
    ("same_dilated", (1, 3, 4, 5, 6), 4, (3, 3, 3), dict(padding="same", dilation=(7, 1, 9))),
    ("strided_dead_edge", (2, 2, 5, 4, 6), 3, (3, 2, 3),
     dict(padding=((6, 1), (0, 3), (7, 0)), dilation=(4, 3, 5), stride=(2, 1, 3))),
    ("no_live_tap", (1, 2, 3, 3, 3), 3, (2, 1, 2),
     dict(padding=((5, 5), 0, (4, 6)), dilation=(9, 1, 11))),
]

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


def check_nonfinite(cfg, mode, injection, dtype=torch.float64, layout="contiguous",
                    device="cpu", conv=torchconv3d.conv3d, tol=None):
    name, xshape, cout, kernel, kwargs = cfg
    groups = kwargs.get("groups", 1)
    vals = {
        "x": torch.randn(xshape, dtype=torch.float64).to(dtype).double(),
        "w": torch.randn((cout, xshape[1] // groups) + kernel,
                         dtype=torch.float64).to(dtype).double(),
        "b": torch.randn(cout, dtype=torch.float64).to(dtype).double(),
    }
    stride, pads, dil = resolve_args(vals["x"], vals["w"], kwargs.get("stride", 1),
                                     kwargs.get("padding", 0), kwargs.get("dilation", 1))
    target, spots = INJECTIONS[injection]
    if target != "gy":
        vals[target] = _inject(vals[target], spots)
    ref_in = [vals[k].clone().requires_grad_() for k in ("x", "w", "b")]
    ref = exact_conv3d(*ref_in, stride, pads, dil, groups, mode)
    gy = torch.randn_like(ref).to(dtype).double()
    if target == "gy":
        gy = _inject(gy, spots)
    ref_grads = torch.autograd.grad(ref, ref_in, gy)

    ours_in = [make_layout(vals["x"].to(device, dtype), layout).requires_grad_(),
               vals["w"].to(device, dtype).requires_grad_(),
               vals["b"].to(device, dtype).requires_grad_()]
    out = conv(*ours_in, padding_mode=mode, **kwargs)
    grads = torch.autograd.grad(out, ours_in, make_layout(gy.to(device, dtype), layout))
    tol = TOL[dtype] if tol is None else tol
    label = f"{name} {mode} {injection} {dtype} {layout}"
    for what, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"),
                          (out,) + grads, (ref,) + ref_grads):
        assert_same_values(a, e, tol, f"{label} {what}")


@pytest.mark.parametrize("injection", list(INJECTIONS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_float64(cfg, mode, injection):
    check_nonfinite(cfg, mode, injection)


@pytest.mark.parametrize("injection", list(INJECTIONS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_float32_channels_last(cfg, injection):
    check_nonfinite(cfg, "reflect" if "asym" in cfg[0] else "zeros", injection,
                    torch.float32, "channels_last")


@pytest.mark.parametrize("injection", list(INJECTIONS))
@pytest.mark.parametrize("cfg", DEAD_TAPS, ids=[c[0] for c in DEAD_TAPS])
def test_taps_reading_only_padding(cfg, injection):
    check_nonfinite(cfg, "zeros", injection)
    check_nonfinite(cfg, "zeros", injection, torch.float32, "channels_last")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("injection", ["x_inf", "w_inf", "gy_nan"])
@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[0] in ("pad1", "depthwise")],
                         ids=lambda c: c[0])
def test_half_types(cfg, injection, dtype):
    check_nonfinite(cfg, "zeros", injection, dtype, "strided")


@pytest.mark.parametrize("injection", list(INJECTIONS))
@pytest.mark.parametrize("mode", MODES)
def test_torch_float64_agrees(mode, injection):
    """The judge is nn.Conv3d's own behaviour: torch's float64 module gives the same pattern."""
    def torch_conv(x, w, b, padding_mode, padding):
        if padding_mode == "zeros":  # nn.Conv3d pads zeros inside the convolution
            return F.conv3d(x, w, b, padding=padding)
        return reference(x, w, b, [1] * 3, [padding] * 6, [1] * 3, 1, padding_mode)

    check_nonfinite(CONFIGS[0], mode, injection, conv=torch_conv)
