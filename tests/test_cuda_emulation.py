"""The CUDA kernels, run on the CPU by tests/cuda_emulation (every CUDA thread a fiber),
against F.conv3d: what CI can check of csrc/cuda without a GPU.

The emulator executes the kernels' own source (index arithmetic, tiling, shared-memory
staging, barriers, grid-stride loops, split-K) but not the GPU's memory model or timing:
races, out-of-bounds accesses and speed still need a real GPU (tests with device 'cuda',
compute-sanitizer, benchmarks/run.py --device cuda).
"""
import os

import pytest
import torch

from torchconv3d.functional import check_causal, resolve_args

from conftest import reference, rel_err
from test_correctness import CONFIGS, DW_CONFIGS, MODES, TC_CONFIGS, TC_DTYPES, _run
from test_nonfinite import CONFIGS as NONFINITE_CONFIGS
from test_nonfinite import INJECTIONS as NONFINITE_INJECTIONS
from test_nonfinite import check_nonfinite

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module", autouse=True)
def emulated_ops():
    from torch.utils.cpp_extension import load

    load(
        name="torchconv3d_cuda_emulation",
        sources=[
            os.path.join(ROOT, "csrc", "check.cpp"),
            os.path.join(ROOT, "csrc", "ops.cpp"),
            os.path.join(HERE, "cuda_emulation", "emulate.cpp"),
        ],
        extra_cflags=["-O2"],
        is_python_module=False,
    )
    return torch.ops.torchconv3d_emu


@pytest.fixture(autouse=True)
def _tf32(request):
    """float32 runs exactly (TF32 off) unless a test is marked tf32: with it on, float32
    layers with whole 16-byte channel chunks go to the TF32 tensor-core kernels."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = request.node.get_closest_marker("tf32") is not None
    yield
    torch.backends.cudnn.allow_tf32 = old


class _Emulated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, pads, dilation, groups, mode):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, pads, dilation, groups, mode)
        ctx.has_bias = b is not None
        return torch.ops.torchconv3d_emu.conv3d_forward(x, w, b, *ctx.args)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.torchconv3d_emu.conv3d_backward(gy, x, w, *ctx.args, mask)
        return gx, gw, gb, None, None, None, None, None


def emulated_conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros"):
    check_causal(padding, padding_mode)
    stride, pads, dilation = resolve_args(x, w, stride, padding, dilation)
    return _Emulated.apply(x, w, b, stride, pads, dilation, groups, padding_mode)


def _cfgs(*names):
    return pytest.mark.parametrize(
        "cfg", [c for c in CONFIGS if c[0] in names] if names else CONFIGS, ids=lambda c: c[0])


@_cfgs()
def test_every_config_float64(cfg):
    _run(cfg, torch.float64, conv=emulated_conv3d)


@pytest.mark.parametrize("mode", MODES[1:])
@_cfgs("pad1", "stride", "dilation", "depthwise_stride", "same_stride_tf", "causal",
       "asym_groups_stride", "k5")
def test_padding_modes(cfg, mode):
    _run(cfg, torch.float64, mode=mode, conv=emulated_conv3d)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@_cfgs("pad1", "groups", "depthwise")
def test_layouts_float32(cfg, layout):
    _run(cfg, torch.float32, layout=layout, weight_layout="channels_last", conv=emulated_conv3d)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@_cfgs("pad1", "depthwise", "big_channels")
def test_half_types(cfg, dtype):
    _run(cfg, dtype, mode="reflect" if cfg[0] == "pad1" else "zeros", conv=emulated_conv3d)


def test_unbatched_and_expanded_grad_output():
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    emulated_conv3d(x, w, padding=1).sum().backward()  # grad_output with all strides 0
    torch.nn.functional.conv3d(xr, wr, padding=1).sum().backward()
    assert rel_err(x.grad, xr.grad) <= 1e-10
    assert rel_err(w.grad, wr.grad) <= 1e-10


def test_grad_weight_split_k_is_exercised():
    """Enough positions that the emulated 2-SM GPU splits grad_weight's K over blocks."""
    x = torch.randn(2, 5, 9, 10, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    gy = torch.randn(2, 7, 9, 10, 11, dtype=torch.float64)
    emulated_conv3d(x, w, padding=1, padding_mode="circular").backward(gy)
    reference(xr, wr, None, [1] * 3, [1] * 6, [1] * 3, 1, "circular").backward(gy)
    assert rel_err(w.grad, wr.grad) <= 1e-10
    assert rel_err(x.grad, xr.grad) <= 1e-10


def test_empty_input_channels():
    x = torch.randn(2, 0, 4, 4, 4, requires_grad=True)
    w = torch.randn(3, 0, 1, 1, 1, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    y = emulated_conv3d(x, w, b)
    assert torch.equal(y, b.detach().view(1, 3, 1, 1, 1).expand(2, 3, 4, 4, 4))
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert torch.equal(b.grad, torch.full((3,), 128.0))


@pytest.mark.parametrize("groups", [1, 3])  # implicit GEMM, depthwise
@pytest.mark.parametrize("emulated", [True, False], ids=["cuda-emulated", "cpu"])
def test_element_offsets_past_2_31(groups, emulated):
    """Input and grad_output are small views into 8.6 GB buffers (virtual) whose elements lie more than
    2^31 elements from the start, so every offset into them needs 64 bits. The buffers are
    never written outside the views: only a few pages become resident."""
    n_big = 2**31 + 2**23

    def far_view(shape):
        store = torch.empty(n_big, dtype=torch.float32)
        c, d, h, w = shape[1:]
        strides = (0, 2**20, 4 * h * w, 2 * w, 1)  # gaps between planes and rows
        view = store.as_strided(shape, strides, storage_offset=2**31 + 5)
        view.copy_(torch.randn(shape))
        return view

    x = far_view((1, 3, 5, 6, 7))
    w = torch.randn(6, 3 // groups, 3, 3, 3)
    b = torch.randn(6)
    args = ([1, 1, 1], [1, 1, 0, 1, 1, 0], [1, 1, 1], groups, "reflect")
    ops = torch.ops.torchconv3d_emu if emulated else torch.ops.torchconv3d
    y = ops.conv3d_forward(x, w, b, *args)
    xr = x.clone().double().requires_grad_()
    wr = w.double().requires_grad_()
    br = b.double().requires_grad_()
    ref = reference(xr, wr, br, args[0], args[1], args[2], groups, "reflect")
    assert rel_err(y, ref) <= 1e-5
    gy = far_view(tuple(y.shape))
    gx, gw, gb = ops.conv3d_backward(gy, x, w, *args, [True, True, True])
    gxr, gwr, gbr = torch.autograd.grad(ref, (xr, wr, br), gy.double())
    assert rel_err(gx, gxr) <= 1e-5
    assert rel_err(gw, gwr) <= 1e-5
    assert rel_err(gb, gbr) <= 1e-5


@pytest.mark.parametrize("injection", list(NONFINITE_INJECTIONS))
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("cfg", NONFINITE_CONFIGS, ids=lambda c: c[0])
def test_nan_inf_propagate(cfg, mode, injection):
    check_nonfinite(cfg, mode, injection, conv=emulated_conv3d)
    check_nonfinite(cfg, mode, injection, torch.float32, "channels_last", conv=emulated_conv3d)


def _launches():
    return {p: torch.ops.torchconv3d_emu.v2_launches(p)
            for p in ("forward", "grad_input", "grad_weight")}


def _run_tensor_cores(cfg, dtype_name, mode="zeros", **kw):
    """_run on the emulated kernels; checks that each pass that should ran on tensor cores."""
    before = _launches()
    dtype = TC_DTYPES[dtype_name]
    _run(cfg, dtype, mode=mode, conv=emulated_conv3d, tf32=dtype_name == "tf32", **kw)
    ran = {p: n - before[p] for p, n in _launches().items()}
    # grad_input: zero padding, and more than one input channel (a single-channel input's
    # gradient is a one-column GEMM: v1's direct kernel)
    one_channel = cfg[1][1] == cfg[4].get("groups", 1)
    expected = {"forward": True, "grad_input": mode == "zeros" and not one_channel,
                "grad_weight": True}
    assert {p: n > 0 for p, n in ran.items()} == expected, ran


@pytest.mark.tf32
@pytest.mark.parametrize("dtype_name", list(TC_DTYPES))
@pytest.mark.parametrize("cfg", TC_CONFIGS, ids=lambda c: c[0])
def test_tensor_cores(cfg, dtype_name):
    _run_tensor_cores(cfg, dtype_name)


@pytest.mark.tf32
@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("dtype_name", ["float16", "tf32"])
@pytest.mark.parametrize("cfg", [c for c in TC_CONFIGS if c[0] in
                                 ("tc_pad1", "tc_groups_stride_dilation", "tc_same_stride")],
                         ids=lambda c: c[0])
def test_tensor_cores_padding_modes(cfg, dtype_name, mode):
    _run_tensor_cores(cfg, dtype_name, mode=mode)


@pytest.mark.tf32
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("cfg", [c for c in TC_CONFIGS if c[0] in ("tc_pad1", "tc_channel_tail")],
                         ids=lambda c: c[0])
def test_tensor_cores_layouts(cfg, layout):
    _run_tensor_cores(cfg, "bfloat16", layout=layout, weight_layout="strided")


@pytest.mark.tf32
def test_tensor_cores_off_without_tf32():
    """float32 with TF32 off takes the exact kernels."""
    torch.backends.cudnn.allow_tf32 = False
    before = _launches()
    _run(TC_CONFIGS[0], torch.float32, conv=emulated_conv3d)
    assert _launches() == before


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cfg", DW_CONFIGS, ids=lambda c: c[0])
def test_depthwise_stencil(cfg, dtype, mode):
    """Depthwise layers run the channels-last kernels: the stencil forward, grad_input when
    the layer is stride 1 with zero padding (the flipped-kernel stencil over grad_output),
    and grad_weight's two reduction steps."""
    before = torch.ops.torchconv3d_emu.v2_launches("depthwise")
    _run(cfg, dtype, mode=mode, conv=emulated_conv3d)
    stride1 = cfg[4].get("stride", 1) == 1
    padded = cfg[4].get("padding", 0) not in (0, "valid")
    expected = 1 + (stride1 and (mode == "zeros" or not padded)) + 2
    assert torch.ops.torchconv3d_emu.v2_launches("depthwise") - before == expected


TC_NONFINITE_CONFIGS = [
    ("tc_pad1", (2, 8, 4, 5, 6), 8, (3, 3, 3), dict(padding=1)),
    ("dw_pad1", (2, 8, 4, 5, 6), 8, (3, 3, 3), dict(padding=1, groups=8)),
    ("tc_stride_groups", (1, 16, 7, 6, 7), 16, (3, 2, 3), dict(stride=(2, 1, 2), padding=1,
                                                            groups=2)),
]


@pytest.mark.parametrize("injection", list(NONFINITE_INJECTIONS))
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("cfg", TC_NONFINITE_CONFIGS, ids=lambda c: c[0])
def test_v2_nan_inf_propagate(cfg, mode, injection):
    """The NaN/Inf rule on the v2 kernels (grad_input reruns exactly when a weight is NaN or
    Inf)."""
    kernels = ("depthwise",) if cfg[0].startswith("dw") else ("forward", "grad_weight")
    before = {k: torch.ops.torchconv3d_emu.v2_launches(k) for k in kernels}
    check_nonfinite(cfg, mode, injection, torch.float16, "channels_last", conv=emulated_conv3d)
    assert all(torch.ops.torchconv3d_emu.v2_launches(k) > n for k, n in before.items())


@pytest.mark.parametrize("cfg", [TC_CONFIGS[0], DW_CONFIGS[0]], ids=lambda c: c[0])
def test_v2_misaligned_views(cfg):
    """Inputs, weights, bias and grad_output that start 2 bytes past a 16-byte boundary
    (views with a storage offset): the v2 kernels copy what their 16-byte loads need."""
    name, xshape, cout, k, kwargs = cfg
    groups = kwargs.get("groups", 1)
    kernel = (k,) * 3 if isinstance(k, int) else k

    def offset_view(shape):
        flat = torch.randn(1 + torch.Size(shape).numel(), dtype=torch.float16)
        return flat[1:].view(shape)

    x = offset_view(xshape).requires_grad_()
    w = offset_view((cout, xshape[1] // groups) + kernel).requires_grad_()
    b = offset_view((cout,)).requires_grad_()
    y = emulated_conv3d(x, w, b, **kwargs)
    gy = offset_view(tuple(y.shape))
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    stride, pads, dilation = resolve_args(xr, wr, kwargs.get("stride", 1),
                                          kwargs.get("padding", 0), kwargs.get("dilation", 1))
    ref = reference(xr, wr, br, stride, pads, dilation, groups, "zeros")
    refs = torch.autograd.grad(ref, (xr, wr, br), gy.double())
    assert rel_err(y, ref) <= 5e-3
    for g, r in zip((gx, gw, gb), refs):
        assert rel_err(g, r) <= 5e-3
