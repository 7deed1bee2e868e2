"""Differential tests: output and all three gradients against F.conv3d / nn.Conv3d."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d
from torchconv3d.functional import resolve_padding

from conftest import CL, TOL, make_layout, reference, rel_err, round_tf32

# (name, input shape, C_out, kernel, kwargs). Small shapes with odd, anisotropic sizes;
# every kernel path (implicit GEMM, depthwise) and every argument appears.
CONFIGS = [
    ("basic", (2, 4, 6, 7, 5), 6, (3, 3, 3), {}),
    ("pad1", (2, 3, 5, 6, 7), 4, 3, dict(padding=1)),
    ("pad_tuple", (1, 3, 5, 6, 7), 5, (3, 2, 1), dict(padding=(1, 0, 2))),
    ("stride", (2, 3, 9, 8, 7), 4, 3, dict(stride=(2, 1, 3), padding=1)),
    ("dilation", (2, 3, 9, 8, 9), 4, (3, 2, 3), dict(dilation=(2, 3, 1), padding=(2, 1, 0))),
    ("groups", (2, 6, 5, 6, 5), 9, 3, dict(groups=3, padding=1)),
    ("depthwise", (2, 6, 6, 5, 7), 6, 3, dict(groups=6, padding=1)),
    ("depthwise_mult", (2, 3, 6, 5, 7), 6, (3, 1, 3), dict(groups=3, padding=(1, 0, 1))),
    ("depthwise_stride", (2, 4, 7, 9, 8), 4, 3, dict(groups=4, stride=(1, 2, 2), padding=1)),
    ("k1", (2, 5, 4, 5, 6), 3, 1, {}),
    ("k2s2", (2, 4, 8, 6, 6), 4, 2, dict(stride=2)),
    ("k5", (1, 2, 7, 8, 7), 3, 5, dict(padding=2)),
    ("temporal_3x1x1", (2, 4, 6, 5, 5), 4, (3, 1, 1), dict(padding=(1, 0, 0))),
    ("spatial_1x3x3", (2, 4, 4, 6, 6), 4, (1, 3, 3), dict(padding=(0, 1, 1))),
    ("no_bias", (2, 3, 5, 5, 5), 4, 3, dict(bias=False, padding=1)),
    ("same", (2, 3, 5, 6, 7), 4, (3, 2, 4), dict(padding="same")),
    ("same_dilated", (2, 3, 7, 6, 7), 4, 3, dict(padding="same", dilation=(1, 2, 3))),
    ("valid", (2, 3, 5, 6, 7), 4, 3, dict(padding="valid")),
    ("same_stride_tf", (2, 3, 9, 8, 7), 4, 3, dict(padding="same", stride=2)),
    ("same_stride_tf_even", (2, 3, 8, 8, 6), 4, (2, 4, 3), dict(padding="same", stride=(2, 3, 2))),
    ("causal", (2, 3, 6, 5, 5), 4, 3, dict(padding="causal")),
    ("causal_dilated", (2, 3, 8, 5, 6), 4, 3, dict(padding="causal", dilation=(2, 1, 1))),
    ("asym_pairs", (2, 3, 5, 6, 5), 4, 3, dict(padding=((2, 0), (0, 1), (1, 2)))),
    ("asym_groups_stride", (2, 4, 7, 7, 6), 4, 3,
     dict(padding=((1, 2), (0, 0), (2, 1)), stride=(2, 1, 2), groups=2)),
    ("big_channels", (1, 40, 4, 5, 6), 36, 3, dict(padding=1)),
]
MODES = ["zeros", "reflect", "replicate", "circular"]

# Layers whose channels per group fill whole 16-byte chunks (8 halves, 4 floats), so they
# run on the tensor-core kernels: K tails, both tile widths, several M and N tiles, groups,
# stride, dilation, asymmetric padding.
TC_CONFIGS = [
    ("tc_pad1", (2, 16, 4, 5, 6), 24, 3, dict(padding=1)),
    ("tc_channel_tail", (1, 40, 4, 5, 6), 72, 3, dict(padding=1)),
    ("tc_groups_stride_dilation", (2, 32, 5, 5, 6), 16, (3, 2, 3),
     dict(groups=2, stride=(2, 1, 2), dilation=(1, 2, 1), padding=((1, 2), (0, 1), (2, 1)))),
    ("tc_k1", (2, 24, 3, 4, 5), 40, 1, {}),
    ("tc_same_stride", (1, 16, 7, 6, 7), 16, (3, 4, 3), dict(padding="same", stride=2)),
    ("tc_causal", (1, 8, 5, 4, 6), 8, 3, dict(padding="causal")),
    ("tc_two_tiles", (1, 16, 6, 6, 6), 136, 3, dict(padding="same")),
    # grad_input residue classes that no tap reaches (stride > kernel), and stride and
    # dilation sharing a factor
    ("tc_stride_over_kernel", (1, 8, 7, 8, 9), 8, (1, 2, 1), dict(stride=(3, 3, 2))),
    ("tc_stride2_dilation2", (1, 8, 9, 8, 7), 16, 3, dict(stride=2, dilation=2, padding=2)),
    # enough positions that grad_weight splits K on the emulated 2-SM GPU
    ("tc_split_k", (2, 8, 8, 8, 8), 8, 3, dict(padding=1)),
    # input channels zero-padded to a whole chunk: an RGB stem, a single-channel volume
    ("tc_stem_rgb", (1, 3, 7, 8, 9), 16, (3, 5, 5), dict(stride=(1, 2, 2), padding=(1, 2, 2))),
    ("tc_one_channel", (2, 1, 5, 6, 7), 8, 3, dict(padding=1)),
]
# Depthwise layers whose channels fill 16-byte vectors: the CUDA stencil (forward, and
# grad_input at stride 1 with zero padding). W not a multiple of the stencil's 4-output run.
DW_CONFIGS = [
    ("dw_pad1", (2, 16, 5, 6, 7), 16, 3, dict(groups=16, padding=1)),
    ("dw_stride", (1, 8, 7, 9, 8), 8, 3, dict(groups=8, stride=(1, 2, 2), padding=1)),
    ("dw_dilation_same", (1, 8, 7, 6, 9), 8, (3, 1, 3),
     dict(groups=8, padding="same", dilation=(2, 1, 1))),
    ("dw_k5_asym", (1, 16, 6, 7, 10), 16, 5, dict(groups=16, padding=((2, 1), (0, 2), (2, 2)))),
    ("dw_valid", (2, 8, 5, 5, 6), 8, (2, 3, 3), dict(groups=8)),
]

# Layers that run on the CPU's channels-innermost forward (channels_last input, enough output
# channels per group to fill the vector lanes, or depthwise): several weight panels and
# term blocks, channel blocks past 128, an odd channel count (bfloat16 pairs), groups,
# depthwise with ragged channel counts and rows too narrow for an interior stretch, 1x1x1.
# Batches of 2 (or groups): torch, and so our allocation, gives float32 channels_last results
# only outside its single-sample slow path.
CL_CONFIGS = [
    ("cl_dense", (2, 8, 5, 6, 7), 24, 3, dict(padding=1)),
    ("cl_panels_stride", (2, 10, 4, 5, 6), 72, 3, dict(padding=1, stride=(1, 2, 1))),
    ("cl_channel_blocks", (2, 130, 3, 4, 5), 32, (1, 2, 2), dict(padding=((0, 0), (1, 0), (0, 1)))),
    ("cl_groups_dilation", (2, 32, 4, 5, 6), 64, 3, dict(groups=2, dilation=(1, 2, 1), padding=2)),
    ("cl_odd_channels_same", (2, 9, 4, 5, 6), 32, (2, 3, 3), dict(padding="same")),
    ("cl_depthwise_ragged", (2, 20, 5, 6, 9), 20, 3, dict(groups=20, stride=(1, 2, 2), padding=1)),
    ("cl_depthwise_narrow", (1, 17, 3, 4, 2), 17, 3, dict(groups=17, padding=2, dilation=(1, 1, 2))),
    # 1x1x1 read in place (no packed tile), and with an odd channel count (packed for bfloat16)
    ("cl_pointwise_groups", (2, 32, 3, 4, 5), 64, 1, dict(groups=2)),
    ("cl_pointwise_odd", (2, 9, 3, 4, 5), 32, 1, {}),
    # grad_input as one forward per stride phase (grad_input_phases.cpp): phases with several
    # taps, with none (stride past the kernel: a zero phase), a padding that crops
    # grad_output (kernel 3, padding 2, stride 2), dilation sharing a factor with the stride,
    # and an odd C_out (the bfloat16 pairs of the phase forward's input channels).
    ("cl_grad_phases", (2, 32, 7, 6, 9), 16, 3,
     dict(stride=(2, 3, 2), padding=((1, 0), (1, 1), (0, 2)), dilation=(1, 1, 2))),
    ("cl_grad_zero_phases", (2, 40, 5, 7, 6), 13, (1, 2, 1), dict(stride=(2, 3, 2))),
    ("cl_grad_crop_dilation", (2, 48, 7, 9, 8), 12, 3,
     dict(stride=2, padding=(2, 2, 1), dilation=(1, 2, 1))),
]

# The element types of the CUDA tensor-core kernels; "tf32" is float32 with
# torch.backends.cudnn.allow_tf32 on, checked against TF32-rounded operands.
TC_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "tf32": torch.float32}


def _run(cfg, dtype, mode="zeros", layout="contiguous", weight_layout="contiguous",
         device="cpu", conv=torchconv3d.conv3d, tol=None, tf32=False, grad_layout="contiguous"):
    """Output and gradients of conv (on device) against the float64 CPU reference.

    tf32: float32 operands are rounded to TF32 first, as the tensor-core kernels do, so the
    reference multiplies the same values and float32 tolerances apply.
    grad_layout: grad_output's layout (a channels_last network hands channels_last ones)."""
    name, xshape, cout, k, kwargs = cfg
    kwargs = dict(kwargs)
    groups = kwargs.get("groups", 1)
    has_bias = kwargs.pop("bias", True)
    kernel = (k,) * 3 if isinstance(k, int) else k
    x64 = torch.randn(xshape, dtype=torch.float64)
    w64 = torch.randn((cout, xshape[1] // groups) + kernel, dtype=torch.float64)
    b64 = torch.randn(cout, dtype=torch.float64) if has_bias else None

    stride = kwargs.get("stride", 1)
    dilation = kwargs.get("dilation", 1)
    stride3 = [stride] * 3 if isinstance(stride, int) else list(stride)
    dil3 = [dilation] * 3 if isinstance(dilation, int) else list(dilation)
    pads = resolve_padding(kwargs.get("padding", 0), list(kernel), stride3, dil3, list(xshape[2:]))

    # The reference sees the same (rounded) values as ours, in float64.
    rounded = round_tf32 if tf32 else (lambda t: t.to(dtype).double())
    x64, w64 = rounded(x64), rounded(w64)
    b64 = b64.to(dtype).double() if b64 is not None else None
    xr = x64.clone().requires_grad_()
    wr = w64.clone().requires_grad_()
    br = b64.clone().requires_grad_() if b64 is not None else None
    ref = reference(xr, wr, br, stride3, pads, dil3, groups, mode)
    gy64 = rounded(torch.randn_like(ref))  # rounded like the other inputs
    ref_grads = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], gy64)

    x = make_layout(x64.to(device, dtype), layout).requires_grad_()
    w = make_layout(w64.to(device, dtype), weight_layout).requires_grad_()
    b = b64.to(device, dtype).requires_grad_() if b64 is not None else None
    if kwargs.get("padding") == "causal" and mode in ("reflect", "circular"):
        with pytest.raises(ValueError, match="future"):  # would read future frames
            conv(x, w, b, padding_mode=mode, **kwargs)
        return None
    out = conv(x, w, b, padding_mode=mode, **kwargs)
    grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None],
                                make_layout(gy64.to(device, dtype), grad_layout))

    tol = TOL[dtype] if tol is None else tol
    assert out.shape == ref.shape
    assert out.dtype == dtype
    errs = {"output": rel_err(out, ref)}
    for label, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert g.shape == r.shape, label
        errs[label] = rel_err(g, r)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"{name} {dtype} {mode} {layout}: errors {errs} above {tol}"
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_torch(cfg, dtype):
    _run(cfg, dtype)


@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c[0] in
            ("pad1", "stride", "dilation", "depthwise", "depthwise_stride", "same",
             "same_stride_tf", "causal", "asym_pairs", "asym_groups_stride", "k5")],
    ids=lambda c: c[0],
)
def test_padding_modes(cfg, mode):
    _run(cfg, torch.float64, mode=mode)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c[0] in ("pad1", "groups", "depthwise", "asym_pairs")],
    ids=lambda c: c[0],
)
def test_layouts(cfg, layout, weight_layout):
    _run(cfg, torch.float32, mode="reflect" if cfg[0] == "asym_pairs" else "zeros",
         layout=layout, weight_layout=weight_layout)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg", CL_CONFIGS, ids=lambda c: c[0])
@pytest.mark.parametrize("grad_layout", ["channels_last", "contiguous"])
def test_channels_last_kernels(cfg, dtype, mode, grad_layout):
    _run(cfg, dtype, mode=mode, layout="channels_last", grad_layout=grad_layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c[0] in ("pad1", "groups", "depthwise", "stride", "big_channels")],
    ids=lambda c: c[0],
)
def test_half_types(cfg, dtype):
    _run(cfg, dtype, mode="circular" if cfg[0] == "stride" else "zeros")


@pytest.mark.parametrize("mode", MODES)
def test_against_nn_conv3d(mode):
    """The module against nn.Conv3d itself (which pads with F.pad for non-zero modes)."""
    ref = torch.nn.Conv3d(4, 6, (3, 2, 3), stride=(1, 2, 1), padding=(1, 1, 2),
                          dilation=(2, 1, 1), groups=2, padding_mode=mode, dtype=torch.float64)
    ours = torchconv3d.Conv3d(4, 6, (3, 2, 3), stride=(1, 2, 1), padding=(1, 1, 2),
                              dilation=(2, 1, 1), groups=2, padding_mode=mode,
                              dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 6, 7, 8, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    assert rel_err(yb, ya) <= 1e-10
    assert rel_err(xb.grad, xa.grad) <= 1e-10
    assert rel_err(ours.weight.grad, ref.weight.grad) <= 1e-10
    assert rel_err(ours.bias.grad, ref.bias.grad) <= 1e-10


def test_unbatched_input():
    w = torch.randn(5, 3, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    y = torchconv3d.conv3d(x, w, padding=1)
    ref = F.conv3d(x, w, padding=1)
    assert y.shape == ref.shape == (5, 5, 6, 7)
    assert rel_err(y, ref) <= 1e-10
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    (gr,) = torch.autograd.grad(ref, x, torch.ones_like(ref))
    assert rel_err(g, gr) <= 1e-10


def test_batch_zero():
    x = torch.randn(0, 3, 5, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = torchconv3d.conv3d(x, w, b, padding=1)
    assert y.shape == F.conv3d(x, w, b, padding=1).shape == (0, 4, 5, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


def test_empty_input_channels_give_bias():
    x = torch.randn(2, 0, 4, 4, 4)
    w = torch.randn(3, 0, 1, 1, 1)
    b = torch.randn(3)
    y = torchconv3d.conv3d(x, w, b)
    assert torch.equal(y, b.view(1, 3, 1, 1, 1).expand(2, 3, 4, 4, 4))


def test_expanded_grad_output():
    """sum().backward() hands the kernels a grad_output with all strides zero."""
    x = torch.randn(2, 3, 5, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    torchconv3d.conv3d(x, w, padding=1, padding_mode="replicate").sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    reference(xr, wr, None, [1] * 3, [1] * 6, [1] * 3, 1, "replicate").sum().backward()
    assert rel_err(x.grad, xr.grad) <= 1e-10
    assert rel_err(w.grad, wr.grad) <= 1e-10


def _layout(t):
    """(contiguous, channels_last_3d) of t, an unbatched one read with its batch of 1."""
    t = t if t.dim() == 5 else t.unsqueeze(0)
    return t.is_contiguous(), t.is_contiguous(memory_format=CL)


# (kernel, stride, groups, batch, threads): torch's choice of backend, hence of layout,
# follows the dtype, then for float32 these (a single small sample on its slow path).
LAYOUT_SHAPES = [((3, 2, 3), 1, 1, 2, None), ((3, 3, 3), 1, 1, 1, None),
                 ((1, 1, 1), 1, 1, 1, 1), ((5, 5, 5), 2, 2, 1, None)]


@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_memory_formats_are_nn_conv3d_s(dtype, mode, shape):
    """Output, grad_input and grad_weight are contiguous / channels_last_3d exactly when
    nn.Conv3d's are (torch.autograd.grad: .grad would be restrided to the parameter), over
    every input x weight x grad_output layout, batched and unbatched; and the fake kernels
    (torch.compile, torch.export) predict the same."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernel, stride, groups, batch, threads = shape
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for x_cl, w_cl, gy_cl, batched in itertools.product([False, True], repeat=4):
            x = torch.randn(batch, 4, 5, 6, 7, dtype=dtype)
            w = torch.randn(6, 4 // groups, *kernel, dtype=dtype)
            x = x.contiguous(memory_format=CL) if x_cl else x
            w = w.contiguous(memory_format=CL) if w_cl else w
            x = x if batched else x[0]
            ref = nn.Conv3d(4, 6, kernel, stride, 1, groups=groups, bias=False,
                            padding_mode=mode, dtype=dtype)
            ref.weight = nn.Parameter(w)
            xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
            wo = w.clone().requires_grad_()  # (clone keeps each layout)
            y_ref = ref(xr)
            y = torchconv3d.conv3d(xo, wo, None, stride, 1, 1, groups, mode)
            gy = torch.randn(y.shape if batched else (1, *y.shape), dtype=dtype)
            gy = gy.contiguous(memory_format=CL) if gy_cl else gy
            gy = gy if batched else gy[0]
            got = (y, *torch.autograd.grad(y, (xo, wo), gy))
            want = (y_ref, *torch.autograd.grad(y_ref, (xr, ref.weight), gy))
            case = f"x_cl={x_cl} w_cl={w_cl} gy_cl={gy_cl} batched={batched}"
            for name, a, b in zip(("output", "grad_input", "grad_weight"), got, want):
                assert _layout(a) == _layout(b), f"{name}: {case}"

            args = ([stride] * 3, [1] * 6, [1] * 3, groups, mode)
            with FakeTensorMode() as fake:
                fx, fw, fgy = (fake.from_tensor(t) for t in (x, w, gy))
                fy = torch.ops.torchconv3d.conv3d_forward(fx, fw, None, *args)
                fgrads = torch.ops.torchconv3d.conv3d_backward(fgy, fx, fw, *args,
                                                                [True, True, False])[:2]
            for name, a, b in zip(("output", "grad_input", "grad_weight"), (fy, *fgrads), got):
                assert a.stride() == b.stride(), f"fake {name}: {case}"
    finally:
        torch.set_num_threads(saved_threads)
