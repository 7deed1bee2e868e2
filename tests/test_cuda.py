"""Properties only a real GPU shows, with device 'cuda': bitwise-deterministic gradients at
sizes where grad_weight splits K over blocks, launches following the tensors' device and
stream, and a volume past 2^31 elements. Skipped without a GPU. The differential suite,
gradcheck, opcheck and torch.compile run on backend 'cuda' in their own files
(tests/cases.py; `pytest --backend cuda`)."""
import pytest
import torch
import torch.nn.functional as F

import torchconv3d
from cases import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("groups", [1, 4])
def test_tensor_core_gradients_are_bitwise_deterministic(dtype, groups):
    """Split-K grad_weight (partials summed in split order) and the per-class grad_input
    GEMMs give the same bits on every run (TF32 on: float32 takes the tensor cores too)."""
    torch.backends.cudnn.allow_tf32 = True
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
