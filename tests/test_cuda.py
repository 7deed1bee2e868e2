"""CUDA: the differential suite, gradcheck, opcheck, torch.compile, determinism and a volume
past 2^31 elements, all with device 'cuda'. Skipped without a GPU (CI has none; there the
kernels run through tests/test_cuda_emulation.py instead)."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import torchconv3d
from conftest import rel_err
from test_autograd import GRAD_CASES, _op_samples, check_torch_compile
from test_correctness import CONFIGS, MODES, TC_CONFIGS, TC_DTYPES, _run
from test_nonfinite import CONFIGS as NONFINITE_CONFIGS
from test_nonfinite import INJECTIONS as NONFINITE_INJECTIONS
from test_nonfinite import check_nonfinite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _exact_float32_reference(request):
    # float32 runs exactly (our kernels and any torch-side comparison) unless the test is
    # marked tf32: then float32 layers with whole channel chunks take the TF32 tensor cores.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = request.node.get_closest_marker("tf32") is not None
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_torch(cfg, dtype):
    _run(cfg, dtype, device="cuda")


@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_padding_modes(cfg, mode):
    _run(cfg, torch.float64, mode=mode, device="cuda")


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c[0] in ("pad1", "groups", "depthwise", "asym_pairs", "k1")],
    ids=lambda c: c[0],
)
def test_layouts(cfg, layout, weight_layout):
    _run(cfg, torch.float32, mode="reflect" if cfg[0] == "asym_pairs" else "zeros",
         layout=layout, weight_layout=weight_layout, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_half_types(cfg, dtype):
    _run(cfg, dtype, mode="circular" if cfg[0] == "stride" else "zeros", device="cuda", tol=1e-2)


@pytest.mark.parametrize("injection", list(NONFINITE_INJECTIONS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", NONFINITE_CONFIGS, ids=lambda c: c[0])
def test_nan_inf_propagate(cfg, mode, injection):
    check_nonfinite(cfg, mode, injection, device="cuda")
    check_nonfinite(cfg, mode, injection, torch.float32, "channels_last", device="cuda")


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_and_gradgradcheck(case):
    groups = case.get("groups", 1)
    x = torch.randn(2, 4, 4, 5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(4, 4 // groups, 3, 2, 3, dtype=torch.float64, device="cuda",
                    requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device="cuda", requires_grad=True)
    f = lambda x, w, b: torchconv3d.conv3d(x, w, b, **case)  # noqa: E731
    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("sample", range(4))
def test_opcheck(sample):
    x, w, b, args = _op_samples()[sample]
    x, w, b = x.cuda(), w.cuda(), b.cuda()
    opcheck(torch.ops.torchconv3d.conv3d_forward.default, (x, w, b, *args))
    gy = torch.randn_like(torch.ops.torchconv3d.conv3d_forward(x, w, b, *args))
    for mask in ([True, True, True], [False, True, False]):
        opcheck(torch.ops.torchconv3d.conv3d_backward.default, (gy, x, w, *args, mask))


def test_torch_compile_fullgraph():
    check_torch_compile("cuda")


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_gradients_are_bitwise_deterministic(groups):
    # Large enough that grad_weight splits K over blocks on any GPU.
    x = torch.randn(4, 32, 12, 40, 40, device="cuda")
    w = torch.randn(32, 32 // groups, 3, 3, 3, device="cuda")
    b = torch.randn(32, device="cuda")

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = torchconv3d.conv3d(xs, ws, bs, padding=1, padding_mode="reflect", groups=groups)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype, device="cuda")).view_as(y))
        return xs.grad, ws.grad, bs.grad

    first, second = grads(), grads()
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)


def test_other_device_and_stream():
    """Launches follow the tensors' device and the current stream."""
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    x = torch.randn(2, 4, 6, 7, 5, device=dev, dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, 3, device=dev, dtype=torch.float64)
    s = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(s):
        y = torchconv3d.conv3d(x, w, padding=1)
    s.synchronize()
    assert rel_err(y, F.conv3d(x.cpu(), w.cpu(), padding=1)) <= 1e-10


@pytest.mark.parametrize("channels,groups,dtype", [
    (2, 1, torch.float32),   # v1 implicit GEMM (float32, TF32 off)
    (2, 2, torch.float32),   # depthwise
    (8, 1, torch.bfloat16),  # tensor cores, channels-last
], ids=["gemm", "depthwise", "tensor_cores"])
def test_input_past_2_31_elements(channels, groups, dtype):
    """Just past 2^31 elements (1 x C x D x 1024 x 1025, D = 2048 / C): offsets need 64
    bits. kd = 1, so the last depth planes (past 2^31) can be checked against torch on a
    slice."""
    torch.manual_seed(0)
    depth = 2048 // channels
    x = torch.randn(1, channels, depth, 1024, 1025, device="cuda", dtype=dtype)
    if dtype != torch.float32:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    assert x.numel() > 2**31
    w = torch.randn(channels, channels // groups, 1, 3, 3, device="cuda", dtype=dtype,
                    requires_grad=True)
    conv = dict(padding=(0, 1, 1), groups=groups)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    y = torchconv3d.conv3d(x, w, **conv)
    tail = slice(depth - 4, depth)
    ref = F.conv3d(x.detach()[:, :, tail].double(), w.detach().double(), **conv)
    assert rel_err(y[:, :, tail], ref) <= tol
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xr = x.detach()[:, :, tail].double().requires_grad_()
    (gxr,) = torch.autograd.grad(F.conv3d(xr, w.detach().double(), **conv), xr,
                                 gy[:, :, tail].double())
    assert rel_err(gx[:, :, tail], gxr) <= tol
    del gx
    # kd = 1 and no depth padding: grad_weight is a sum over depth chunks, each small
    # enough for torch's own kernels.
    step = depth // 8
    gw_ref = sum(
        torch.nn.grad.conv3d_weight(x.detach()[:, :, d:d + step].double(), w.shape,
                                    gy[:, :, d:d + step].double(), **conv)
        for d in range(0, depth, step))
    # float32 sums over 2^30 positions per weight: sqrt(terms) x eps is ~1e-4 already.
    assert rel_err(gw, gw_ref) <= (1e-3 if dtype == torch.float32 else 2e-2)

# The tensor-core kernels. Their float32 sums run in the tensor cores' own order, so TF32
# (operands rounded exactly as the reference's) gets a float32-accumulation tolerance.
TC_TOL = {"float16": 5e-3, "bfloat16": 2e-2, "tf32": 1e-4}


@pytest.mark.tf32
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype_name", list(TC_DTYPES))
@pytest.mark.parametrize("cfg", TC_CONFIGS, ids=lambda c: c[0])
def test_tensor_cores(cfg, dtype_name, layout):
    _run(cfg, TC_DTYPES[dtype_name], layout=layout, device="cuda", tol=TC_TOL[dtype_name],
         tf32=dtype_name == "tf32")


@pytest.mark.tf32
@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "tf32"])
def test_tensor_cores_padding_modes(dtype_name, mode):
    for cfg in TC_CONFIGS[:3]:
        _run(cfg, TC_DTYPES[dtype_name], mode=mode, device="cuda", tol=TC_TOL[dtype_name],
             tf32=dtype_name == "tf32")


@pytest.mark.tf32
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("groups", [1, 4])
def test_tensor_core_gradients_are_bitwise_deterministic(dtype, groups):
    """Split-K grad_weight (partials summed in split order) and the per-class grad_input
    GEMMs give the same bits on every run."""
    x = torch.randn(4, 64, 12, 40, 40, device="cuda", dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d)
    w = torch.randn(64, 64 // groups, 3, 3, 3, device="cuda", dtype=dtype) * 0.05
    b = torch.randn(64, device="cuda", dtype=dtype)

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = torchconv3d.conv3d(xs, ws, bs, stride=(1, 2, 2), padding=1, groups=groups)
        y.backward(torch.cos(torch.arange(y.numel(), device="cuda")).to(dtype).view_as(y))
        return xs.grad, ws.grad, bs.grad

    first, second = grads(), grads()
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)
