"""The CPU passes' plans (csrc/cpu/plan.h), read through torch.ops.torchconv3d.cpu_plan:
workspace bounded by the tile budget whatever the volume, sum grouping independent of the
thread count, and the split tasks of the half types' grad_input computing what F.conv3d
does."""
import pytest
import torch
import torch.nn.functional as F

import torchconv3d

from conftest import rel_err

KTILE = 384 * 1024  # kTileBytes


def plan(which, x, w, stride=1, padding=1, dilation=1, groups=1, mode="zeros"):
    as3 = lambda v: [v] * 3 if isinstance(v, int) else list(v)  # noqa: E731
    pads = [p for p in as3(padding) for _ in range(2)]
    text = torch.ops.torchconv3d.cpu_plan(which, x, w, as3(stride), pads, as3(dilation),
                                          groups, mode)
    return {k: int(v) for k, v in (item.split("=") for item in text.split())}


def meta(shape, dtype):
    return torch.empty(shape, device="meta", dtype=dtype)


# (input, weight): volumes up to a 512 x 512 plane with many channels, where a whole
# plane per channel would be tens of MB.
LAYERS = [
    ((1, 64, 8, 512, 512), (32, 64, 3, 3, 3)),
    ((2, 256, 4, 128, 160), (256, 256, 3, 3, 3)),
    ((1, 16, 64, 256, 256), (16, 16, 1, 3, 3)),
    ((1, 4, 16, 1024, 1024), (8, 4, 3, 3, 3)),
]


ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("which", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: "x".join(map(str, l[0])))
def test_workspace_stops_growing_with_the_volume(layer, dtype, which):
    # A thread's workspace follows the tile (rows, channels, the kernel), not the volume:
    # four times the depth and height leave it as it is, but for the few rows by which
    # equal bands differ. (The half types' grad_input slab used to hold whole D x H x W
    # planes, grad_weight's grad_output tile whole planes of every output channel.)
    (n, c, d, h, w), wshape = layer
    small = plan(which, meta(layer[0], dtype), meta(wshape, dtype))
    big = plan(which, meta((n, c, 4 * d, 4 * h, w), dtype), meta(wshape, dtype))
    assert big["workspace_bytes"] <= 1.4 * small["workspace_bytes"], (small, big)
    if which == "grad_input" and dtype in (torch.float16, torch.bfloat16):
        assert big["workspace_bytes"] <= 4 * KTILE, big


@pytest.mark.parametrize("which", ["grad_input", "grad_weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: "x".join(map(str, l[0])))
def test_sum_grouping_does_not_depend_on_threads(layer, dtype, which):
    # Bands and depths per tile group the terms of grad_input's and grad_weight's sums;
    # results are bitwise stable across thread counts only if these depend on the shape alone.
    saved = torch.get_num_threads()
    try:
        plans = []
        for threads in (1, 3, 8):
            torch.set_num_threads(threads)
            plans.append(plan(which, meta(layer[0], dtype), meta(layer[1], dtype)))
    finally:
        torch.set_num_threads(saved)
    keys = ("band_rows", "depths_per_tile")
    assert len({tuple(p[k] for k in keys) for p in plans}) == 1, plans


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_blocked_forward_matches_torch(dtype):
    """The direct forward's GEMM runs in chunks of terms, slices of positions and groups of
    held output-channel blocks (ForwardPlan): a layer where none of them divides evenly
    (K = 600 terms, 162 output channels, border depths with fewer live taps) against
    F.conv3d in float64."""
    xshape, wshape = (2, 200, 5, 28, 30), (162, 200, 3, 1, 1)
    kw = dict(padding=(1, 0, 0))
    assert plan("winograd", meta(xshape, dtype), meta(wshape, dtype), **kw)["m"] == 0
    p = plan("forward", meta(xshape, dtype), meta(wshape, dtype), **kw)
    K = 200 * 3
    assert K % p["chunk_terms"] != 0 and 1 < p["held_blocks"] < p["out_channel_blocks"], p
    assert p["out_channel_blocks"] % p["held_blocks"] != 0, p
    assert p["slice_positions"] % 16 == 0, p
    x = torch.randn(xshape, dtype=dtype)
    w = torch.randn(wshape, dtype=dtype)
    b = torch.randn(wshape[0], dtype=dtype)
    y = torchconv3d.conv3d(x, w, b, **kw)
    ref = F.conv3d(x.double(), w.double(), b.double(), **kw)
    assert rel_err(y, ref) < (1e-5 if dtype == torch.float32 else 1e-12)


# Layers whose half-type grad_input is split across input channels and rows (the slab would
# pass the budget): bands read by two row ranges, circular padding wrapping rows around,
# H stride 2.
SPLIT = [
    ("circular", (1, 32, 2, 128, 64), (64, 32, 3, 3, 3), dict(padding=1), "circular"),
    ("reflect_stride", (1, 32, 3, 320, 64), (64, 32, 3, 3, 3),
     dict(padding=1, stride=(1, 2, 1)), "reflect"),
    ("zeros_dilated", (1, 40, 2, 150, 48), (96, 40, 3, 3, 3),
     dict(padding=(1, 2, 1), dilation=(1, 2, 1)), "zeros"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", SPLIT, ids=[c[0] for c in SPLIT])
def test_split_half_grad_input_matches_torch(case, dtype):
    name, xshape, wshape, kw, mode = case
    p = plan("grad_input", meta(xshape, dtype), meta(wshape, dtype), mode=mode, **kw)
    assert p["direct"] == 0 and p["channel_tasks"] > 1 and p["row_tasks"] > 1, p
    x = torch.randn(xshape).to(dtype)
    w = torch.randn(wshape).to(dtype)
    y = torchconv3d.conv3d(x.requires_grad_(), w, padding_mode=mode, **kw)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)

    x64 = x.detach().double().requires_grad_()
    pad = kw["padding"]
    pads = [pad] * 3 if isinstance(pad, int) else list(pad)
    xp = F.pad(x64, [q for q in reversed(pads) for _ in range(2)],
               mode="constant" if mode == "zeros" else mode)
    ref = F.conv3d(xp, w.double(), stride=kw.get("stride", 1), dilation=kw.get("dilation", 1))
    (gx64,) = torch.autograd.grad(ref, x64, gy.double())
    # Float sums rounded once to the half type.
    assert rel_err(gx, gx64) < (4e-3 if dtype == torch.bfloat16 else 5e-4), name


def test_winograd_plan_takes_the_layers_it_pays_on():
    """Which layers the Winograd forward takes (m: F(m, 3); 0 leaves the layer to the direct
    kernels), and how it runs them (csrc/cpu/forward_winograd.cpp)."""
    c3d = ((1, 128, 8, 28, 28), (256, 128, 3, 3, 3))
    bf = plan("winograd", meta(c3d[0], torch.bfloat16), meta(c3d[1], torch.bfloat16))
    assert (bf["m"], bf["comps"], bf["tiles"], bf["shared"]) == (4, 216, 2 * 7 * 7, 1)
    f32 = plan("winograd", meta(c3d[0], torch.float32), meta(c3d[1], torch.float32))
    assert (f32["m"], f32["comps"], f32["tiles"], f32["shared"]) == (2, 64, 4 * 14 * 14, 0)
    assert f32["chunks"] % torch.get_num_threads() == 0  # whole chunks per thread
    spatial = plan("winograd", meta((1, 64, 8, 28, 28), torch.bfloat16),
                   meta((144, 64, 1, 3, 3), torch.bfloat16), padding=(0, 1, 1))
    assert (spatial["m"], spatial["comps"]) == (4, 36)
    unet = ((1, 32, 32, 32, 32), (32, 32, 3, 3, 3))
    assert plan("winograd", meta(unet[0], torch.bfloat16), meta(unet[1], torch.bfloat16))["m"] == 4
    assert plan("winograd", meta(unet[0], torch.float32), meta(unet[1], torch.float32))["m"] == 0
    for dtype in (torch.float32, torch.bfloat16):
        x, w = meta((1, 64, 8, 16, 16), dtype), meta((64, 64, 3, 3, 3), dtype)
        assert plan("winograd", x, w, dilation=2, padding=2)["m"] > 0
        assert plan("winograd", x, w, stride=2)["m"] == 0
        assert plan("winograd", x, meta((64, 32, 3, 3, 3), dtype), groups=2)["m"] == 0
        assert plan("winograd", x, meta((64, 64, 5, 5, 5), dtype), padding=2)["m"] == 0
        assert plan("winograd", x, meta((64, 64, 3, 1, 1), dtype), padding=(1, 0, 0))["m"] == 0
        # transformed weights past 64 MB: direct
        big = meta((1, 576, 4, 8, 8), dtype), meta((576, 576, 3, 3, 3), dtype)
        assert plan("winograd", *big)["m"] == 0
    for dtype in (torch.float64, torch.float16):
        assert plan("winograd", meta(c3d[0], dtype), meta(c3d[1], dtype))["m"] == 0


@pytest.mark.skipif(torchconv3d._loader.cpu_isa() != "avx512_bf16",
                    reason="the bfloat16 pair kernels need AVX512-BF16")
def test_bfloat16_forward_pairs_kernel_columns_of_few_channels():
    """With 1 or 3 input channels and a wide kernel, the bfloat16 forward pairs kernel
    columns (2q, 2q + 1) of one channel (tap_pair_step: the buffer distance between them, 1
    at stride 1, a phase plane at stride 2) instead of channels; elsewhere channels."""
    bf = torch.bfloat16
    stem = plan("forward", meta((1, 3, 16, 112, 112), bf), meta((64, 3, 7, 7, 7), bf),
                stride=2, padding=3)
    assert stem["tap_pair_step"] > 1
    ct = plan("forward", meta((1, 1, 16, 32, 32), bf), meta((16, 1, 3, 3, 3), bf))
    assert ct["tap_pair_step"] == 1
    dilated = plan("forward", meta((1, 1, 8, 16, 16), bf), meta((8, 1, 3, 3, 3), bf),
                   dilation=2, padding=2)
    assert dilated["tap_pair_step"] == 2
    # 3 channels, 3 wide: 6 operand pairs a kernel row either way (channels kept); an even
    # channel count: channels; 5 wide at stride 3 (columns 0, 1 and 2, 3 lie in different
    # phase planes: no common distance): the float kernels.
    assert plan("forward", meta((1, 3, 8, 16, 16), bf), meta((8, 3, 3, 3, 3), bf))[
        "tap_pair_step"] == 0
    assert plan("forward", meta((1, 4, 8, 16, 16), bf), meta((8, 4, 3, 3, 7), bf))[
        "tap_pair_step"] == 0
    assert plan("forward", meta((1, 1, 8, 16, 16), bf), meta((8, 1, 3, 3, 5), bf), stride=3,
                padding=2)["tap_pair_step"] == 0


@pytest.mark.parametrize("x, w", LAYERS)
def test_winograd_buffers_are_bounded(x, w):
    """What the Winograd forward keeps between calls does not grow with the volume: a chunk
    of tiles (32 MB at most) and the transformed weights (at most 48 MB)."""
    for dtype in (torch.float32, torch.bfloat16):
        p = plan("winograd", meta(x, dtype), meta(w, dtype))
        if p["m"] == 0:
            continue
        assert p["chunk"] * p["chunks"] >= p["tiles"] > p["chunk"] * (p["chunks"] - 1)
        assert p["caller_bytes"] <= (32 + 48) << 20
        assert p["thread_bytes"] <= 32 << 20
