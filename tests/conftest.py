import pytest
import torch
import torch.nn.functional as F

import torchconv3d  # noqa: F401  (builds/loads the operators once per session)

CL = torch.channels_last_3d
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|, in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if e.numel() == 0:
        return 0.0
    scale = e.abs().max().item()
    return (a - e).abs().max().item() / (scale if scale > 0 else 1.0)


def round_tf32(t):
    """t rounded to TF32 (10 mantissa bits, nearest, ties away from zero) as float64: the
    operand values of the CUDA kernels' TF32 tensor-core products."""
    i = t.float().view(torch.int32)
    special = (i & 0x7F800000) == 0x7F800000  # Inf and NaN stay
    return torch.where(special, i, (i + 0x1000) & ~0x1FFF).view(torch.float32).double()


def reference(x, w, b, stride, pads, dilation, groups, mode):
    """F.pad (explicit copy) followed by F.conv3d: the semantics our kernels must match.

    pads = (d_before, d_after, h_before, h_after, w_before, w_after).
    """
    torch_pads = (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1])
    if any(torch_pads):
        unbatched = x.dim() == 4
        xp = x.unsqueeze(0) if unbatched else x
        xp = F.pad(xp, torch_pads, mode="constant" if mode == "zeros" else mode)
        x = xp.squeeze(0) if unbatched else xp
    return F.conv3d(x, w, b, stride, 0, dilation, groups)


def make_layout(t, layout):
    """Returns a tensor equal to t stored as asked: contiguous, channels_last or strided."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=CL)
    if layout == "strided":  # a view with gaps in every dimension
        big = torch.zeros(
            [s * 2 for s in t.shape], dtype=t.dtype, device=t.device
        )
        view = big[tuple(slice(None, None, 2) for _ in t.shape)]
        view.copy_(t)
        assert view.numel() <= 1 or not view.is_contiguous()
        return view
    raise ValueError(layout)
