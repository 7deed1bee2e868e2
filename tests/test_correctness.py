"""Differential tests: output and all three gradients against F.conv3d / nn.Conv3d, on every
backend (cpu, cuda, cuda_emulated; tests/cases.py). The emulator runs the CUDA kernels'
source on the CPU, slowly: it takes every core case in float64 and the 'emulate'-tagged
ones across the other axes."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d
from torchconv3d.functional import resolve_args

from cases import (BY_NAME, CL, MODES, each_backend, product, reference, rel_err, run_case,
                   select)

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def _emulate(case, *rest):
    return "emulate" in case.tags


@each_backend("case, dtype", product(select("core"), [F64, F32]),
              emulated=lambda case, dtype: dtype == F64)
def test_matches_torch(backend, case, dtype):
    run_case(backend, case, dtype)


# many_positions: grad_weight split over K on the emulated GPU, with a wrapping gather
@each_backend("case, mode", product(select("core"), MODES[1:]),
              emulated=lambda case, mode: _emulate(case) or (case.name, mode) == (
                  "many_positions", "circular"))
def test_padding_modes(backend, case, mode):
    run_case(backend, case, F64, mode=mode)


@each_backend("case, layout, weight_layout",
              product(select(names=("pad1", "groups", "depthwise", "asym_pairs", "k1")),
                      ["channels_last", "strided"], ["contiguous", "channels_last"]),
              emulated=lambda case, layout, weight_layout:
                  _emulate(case) and weight_layout == "channels_last")
def test_layouts(backend, case, layout, weight_layout):
    run_case(backend, case, F32, mode="reflect" if case.name == "asym_pairs" else "zeros",
             layout=layout, weight_layout=weight_layout)


# The half types with a padding mode per case: zeros, a wrapping gather on a strided layer,
# a mirrored one.
HALF_ROWS = [(c, "circular" if c.name == "stride" else "zeros") for c in select("core")]
HALF_ROWS.append((BY_NAME["pad1"], "reflect"))


@each_backend("case, mode, dtype", [(c, m, d) for c, m in HALF_ROWS for d in (BF16, F16)],
              emulated=lambda case, mode, dtype: case.name in ("depthwise", "big_channels")
              or (case.name, mode) == ("pad1", "reflect"))
def test_half_types(backend, case, mode, dtype):
    run_case(backend, case, dtype, mode=mode)


@each_backend("case, dtype, mode, grad_layout",
              product(select("channels_last"), [F64, F32, BF16, F16], ["zeros", "replicate"],
                      ["channels_last", "contiguous"]),
              backends=("cpu", "cuda"))
def test_channels_last_kernels(backend, case, dtype, mode, grad_layout):
    run_case(backend, case, dtype, mode=mode, layout="channels_last", grad_layout=grad_layout)


@each_backend("case, dtype, mode, layout",
              product(select("winograd"), [F32, BF16], MODES, ["channels_last", "contiguous"]),
              backends=("cpu",))
def test_winograd(backend, case, dtype, mode, layout):
    run_case(backend, case, dtype, mode=mode, layout=layout)


# The element types of the CUDA tensor-core kernels; "tf32" is float32 with
# torch.backends.cudnn.allow_tf32 on, checked against TF32-rounded operands. Their float32
# sums run in the tensor cores' own order, so TF32 gets a float32-accumulation tolerance.
TC_DTYPES = {"float16": F16, "bfloat16": BF16, "tf32": F32}
TC_TOL = {"float16": 5e-3, "bfloat16": 2e-2, "tf32": 1e-4}


def _run_tensor_cores(backend, case, dtype_name, mode="zeros", **kw):
    """run_case at the tensor-core dtypes; where launches are counted (the emulator), checks
    that each pass that should ran on tensor cores."""
    passes = ("forward", "grad_input", "grad_weight")
    before = {p: backend.v2_launches(p) for p in passes}
    run_case(backend, case, TC_DTYPES[dtype_name], mode=mode, tol=TC_TOL[dtype_name],
             tf32=dtype_name == "tf32", **kw)
    if before["forward"] is None:
        return
    ran = {p: backend.v2_launches(p) - n for p, n in before.items()}
    # grad_input: zero padding, and more than one input channel (a single-channel input's
    # gradient is a one-column GEMM: v1's direct kernel)
    one_channel = case.input[1] == case.groups
    expected = {"forward": True, "grad_input": mode == "zeros" and not one_channel,
                "grad_weight": True}
    assert {p: n > 0 for p, n in ran.items()} == expected, ran


TC_LAYOUT_ROWS = [(c, d, layout, "contiguous") for c in select("tc") for d in TC_DTYPES
                  for layout in ("contiguous", "channels_last")]
TC_LAYOUT_ROWS += [(BY_NAME[n], "bfloat16", layout, "strided")
                   for n in ("tc_pad1", "tc_channel_tail") for layout in ("channels_last",
                                                                           "strided")]


@each_backend("case, dtype_name, layout, weight_layout", TC_LAYOUT_ROWS,
              emulated=lambda case, dtype_name, layout, weight_layout:
                  layout == "contiguous" or weight_layout == "strided")
def test_tensor_cores(backend, case, dtype_name, layout, weight_layout):
    _run_tensor_cores(backend, case, dtype_name, layout=layout, weight_layout=weight_layout)


@each_backend("case, dtype_name, mode",
              product(select(names=("tc_pad1", "tc_channel_tail", "tc_groups_stride_dilation",
                                    "tc_same_stride")), list(TC_DTYPES), MODES[1:]),
              emulated=lambda case, dtype_name, mode: _emulate(case) and dtype_name != "bfloat16")
def test_tensor_cores_padding_modes(backend, case, dtype_name, mode):
    _run_tensor_cores(backend, case, dtype_name, mode=mode)


@pytest.mark.parametrize("backend", ["cuda_emulated"], indirect=True)
def test_tensor_cores_off_without_tf32(backend):
    """float32 with TF32 off takes the exact kernels (launches are counted only by the
    emulator)."""
    before = backend.v2_launches("forward"), backend.v2_launches("grad_weight")
    run_case(backend, BY_NAME["tc_pad1"], F32)
    assert (backend.v2_launches("forward"), backend.v2_launches("grad_weight")) == before


@each_backend("case, dtype, mode", product(select("stencil"), [F16, BF16, F32],
                                           ["zeros", "reflect"]))
def test_depthwise_stencil(backend, case, dtype, mode):
    """Depthwise layers run the channels-last kernels: the stencil forward, grad_input when
    the layer is stride 1 with zero padding (the flipped-kernel stencil over grad_output),
    and grad_weight's two reduction steps (counted where launches are: the emulator)."""
    before = backend.v2_launches("depthwise")
    run_case(backend, case, dtype, mode=mode)
    if before is None:
        return
    stride1 = case.kwargs.get("stride", 1) == 1
    padded = case.kwargs.get("padding", 0) not in (0, "valid")
    expected = 1 + (stride1 and (mode == "zeros" or not padded)) + 2
    assert backend.v2_launches("depthwise") - before == expected


@each_backend("case", select(names=("tc_pad1", "dw_pad1")))
def test_v2_misaligned_views(backend, case):
    """Inputs, weights, bias and grad_output that start 2 bytes past a 16-byte boundary
    (views with a storage offset): the CUDA v2 kernels copy what their 16-byte loads need."""
    def offset_view(shape):
        flat = torch.randn(1 + torch.Size(shape).numel(), dtype=F16, device=backend.device)
        return flat[1:].view(shape)

    x = offset_view(case.input).requires_grad_()
    w = offset_view(case.weight_shape).requires_grad_()
    b = offset_view((case.out_channels,)).requires_grad_()
    y = backend.conv(x, w, b, **case.kwargs)
    gy = offset_view(tuple(y.shape))
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
    stride, pads, dilation = resolve_args(xr, wr, case.kwargs.get("stride", 1),
                                          case.kwargs.get("padding", 0),
                                          case.kwargs.get("dilation", 1))
    ref = reference(xr, wr, br, stride, pads, dilation, case.groups, "zeros")
    refs = torch.autograd.grad(ref, (xr, wr, br), gy.cpu().double())
    assert rel_err(y, ref) <= 5e-3
    for g, r in zip((gx, gw, gb), refs):
        assert rel_err(g, r) <= 5e-3


@pytest.mark.parametrize("backend", ["cpu", "cuda"], indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_against_nn_conv3d(backend, mode):
    """The module against nn.Conv3d itself (which pads with F.pad for non-zero modes)."""
    args = dict(stride=(1, 2, 1), padding=(1, 1, 2), dilation=(2, 1, 1), groups=2,
                padding_mode=mode, dtype=torch.float64, device=backend.device)
    ref = torch.nn.Conv3d(4, 6, (3, 2, 3), **args)
    ours = torchconv3d.Conv3d(4, 6, (3, 2, 3), **args)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 6, 7, 8, dtype=torch.float64, device=backend.device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    assert rel_err(yb, ya) <= 1e-10
    assert rel_err(xb.grad, xa.grad) <= 1e-10
    assert rel_err(ours.weight.grad, ref.weight.grad) <= 1e-10
    assert rel_err(ours.bias.grad, ref.bias.grad) <= 1e-10


def _grads_against_reference(backend, x, w, gy, mode, padding=1):
    """Output and input/weight gradients of the backend's conv3d (x, w, gy on the CPU, moved
    to the backend) against the reference's, in float64."""
    xo, wo = (t.to(backend.device).requires_grad_() for t in (x, w))
    y = backend.conv(xo, wo, padding=padding, padding_mode=mode)
    gyo = gy(y) if callable(gy) else gy.to(backend.device)
    gx, gw = torch.autograd.grad(y, (xo, wo), gyo)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = reference(xr, wr, None, [1] * 3, [padding] * 6, [1] * 3, 1, mode)
    gxr, gwr = torch.autograd.grad(ref, (xr, wr), gyo.cpu())
    assert y.shape == ref.shape
    for got, want in ((y, ref), (gx, gxr), (gw, gwr)):
        assert rel_err(got, want) <= 1e-10


def test_unbatched_input(backend):
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64)
    _grads_against_reference(backend, x, w, torch.randn(4, 5, 7, 7, dtype=torch.float64),
                             "zeros")


@pytest.mark.parametrize("unbatched", [False, True], ids=["NCDHW", "CDHW"])
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_expanded_grad_output(backend, mode, unbatched):
    """sum().backward() hands the kernels a grad_output with all strides zero."""
    x = torch.randn(2, 3, 5, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)
    x = x[0] if unbatched else x
    _grads_against_reference(backend, x, w, lambda y: torch.ones(()).to(y).expand_as(y), mode)


def test_batch_zero(backend):
    x = torch.randn(0, 3, 5, 5, 5, device=backend.device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, device=backend.device, requires_grad=True)
    b = torch.randn(4, device=backend.device, requires_grad=True)
    y = backend.conv(x, w, b, padding=1)
    assert y.shape == F.conv3d(x, w, b, padding=1).shape == (0, 4, 5, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


def test_empty_input_channels_give_bias(backend):
    x = torch.randn(2, 0, 4, 4, 4, device=backend.device, requires_grad=True)
    w = torch.randn(3, 0, 1, 1, 1, device=backend.device, requires_grad=True)
    b = torch.randn(3, device=backend.device, requires_grad=True)
    y = backend.conv(x, w, b)
    assert torch.equal(y, b.detach().view(1, 3, 1, 1, 1).expand(2, 3, 4, 4, 4))
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert torch.equal(b.grad, torch.full((3,), 128.0, device=backend.device))


@pytest.mark.parametrize("groups", [1, 3])  # implicit GEMM, depthwise
def test_element_offsets_past_2_31(backend, groups):
    """Input and grad_output are small views into 8.6 GB buffers whose elements lie more
    than 2^31 elements from the start, so every offset into them needs 64 bits. The buffers
    are never written outside the views: on the CPU only a few pages become resident."""
    n_big = 2**31 + 2**23

    def far_view(shape):
        store = torch.empty(n_big, dtype=torch.float32, device=backend.device)
        c, d, h, w = shape[1:]
        strides = (0, 2**20, 4 * h * w, 2 * w, 1)  # gaps between planes and rows
        view = store.as_strided(shape, strides, storage_offset=2**31 + 5)
        view.copy_(torch.randn(shape))
        return view

    x = far_view((1, 3, 5, 6, 7))
    w = torch.randn(6, 3 // groups, 3, 3, 3)
    b = torch.randn(6)
    args = ([1, 1, 1], [1, 1, 0, 1, 1, 0], [1, 1, 1], groups, "reflect")
    y = backend.ops.conv3d_forward(x, w.to(backend.device), b.to(backend.device), *args)
    xr = x.cpu().double().requires_grad_()
    wr = w.double().requires_grad_()
    br = b.double().requires_grad_()
    ref = reference(xr, wr, br, args[0], args[1], args[2], groups, "reflect")
    assert rel_err(y, ref) <= 1e-5
    gy = far_view(tuple(y.shape))
    gx, gw, gb = backend.ops.conv3d_backward(gy, x, w.to(backend.device), *args,
                                             [True, True, True])
    gxr, gwr, gbr = torch.autograd.grad(ref, (xr, wr, br), gy.cpu().double())
    assert rel_err(gx, gxr) <= 1e-5
    assert rel_err(gw, gwr) <= 1e-5
    assert rel_err(gb, gbr) <= 1e-5


def _layout(t):
    """(contiguous, channels_last_3d) of t, an unbatched one read with its batch of 1."""
    t = t if t.dim() == 5 else t.unsqueeze(0)
    return t.is_contiguous(), t.is_contiguous(memory_format=CL)


# (kernel, stride, groups, batch, threads): torch's choice of backend, hence of layout,
# follows the dtype, then for float32 these (a single small sample on its slow path).
LAYOUT_SHAPES = [((3, 2, 3), 1, 1, 2, None), ((3, 3, 3), 1, 1, 1, None),
                 ((1, 1, 1), 1, 1, 1, 1), ((5, 5, 5), 2, 2, 1, None)]


@pytest.mark.parametrize("backend", ["cpu", "cuda"], indirect=True)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [F32, F64, BF16, F16])
def test_memory_formats_are_nn_conv3d_s(backend, dtype, mode, shape):
    """Output, grad_input and grad_weight are contiguous / channels_last_3d exactly when
    nn.Conv3d's are (torch.autograd.grad: .grad would be restrided to the parameter), over
    every input x weight x grad_output layout, batched and unbatched; and the fake kernels
    (torch.compile, torch.export) predict the same. On 'cuda' the layouts to match are
    cuDNN's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernel, stride, groups, batch, threads = shape
    dev = backend.device
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for x_cl, w_cl, gy_cl, batched in itertools.product([False, True], repeat=4):
            x = torch.randn(batch, 4, 5, 6, 7, dtype=dtype, device=dev)
            w = torch.randn(6, 4 // groups, *kernel, dtype=dtype, device=dev)
            x = x.contiguous(memory_format=CL) if x_cl else x
            w = w.contiguous(memory_format=CL) if w_cl else w
            x = x if batched else x[0]
            ref = nn.Conv3d(4, 6, kernel, stride, 1, groups=groups, bias=False,
                            padding_mode=mode, dtype=dtype, device=dev)
            ref.weight = nn.Parameter(w)
            xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
            wo = w.clone().requires_grad_()  # (clone keeps each layout)
            y_ref = ref(xr)
            y = backend.conv(xo, wo, None, stride, 1, 1, groups, mode)
            gy = torch.randn(y.shape if batched else (1, *y.shape), dtype=dtype, device=dev)
            gy = gy.contiguous(memory_format=CL) if gy_cl else gy
            gy = gy if batched else gy[0]
            got = (y, *torch.autograd.grad(y, (xo, wo), gy))
            want = (y_ref, *torch.autograd.grad(y_ref, (xr, ref.weight), gy))
            label = f"x_cl={x_cl} w_cl={w_cl} gy_cl={gy_cl} batched={batched}"
            for name, a, b in zip(("output", "grad_input", "grad_weight"), got, want):
                assert _layout(a) == _layout(b), f"{name}: {label}"

            args = ([stride] * 3, [1] * 6, [1] * 3, groups, mode)
            with FakeTensorMode() as fake:
                fx, fw, fgy = (fake.from_tensor(t) for t in (x, w, gy))
                fy = backend.ops.conv3d_forward(fx, fw, None, *args)
                fgrads = backend.ops.conv3d_backward(fgy, fx, fw, *args,
                                                     [True, True, False])[:2]
            for name, a, b in zip(("output", "grad_input", "grad_weight"), (fy, *fgrads), got):
                assert a.stride() == b.stride(), f"fake {name}: {label}"
    finally:
        torch.set_num_threads(saved_threads)
