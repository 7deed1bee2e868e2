"""The test suite's shared vocabulary: one list of layer cases, the backends every property
runs on, and the reference helpers.

Writing a test that runs on every backend (conftest.py's `backend` fixture):

    def test_something(backend):                      # cpu, cuda, cuda_emulated
        x = torch.randn(..., device=backend.device)
        y = backend.conv(x, w, padding=1)             # torchconv3d.conv3d's signature

    @each_backend("case, dtype", product(select("core"), DTYPES),
                  emulated=lambda case, dtype: dtype == torch.float64)  # the emulator is slow
    def test_other(backend, case, dtype):
        run_case(backend, case, dtype)

A backend the machine lacks is skipped with the reason ('cuda' without a GPU);
`pytest --backend cuda` (tools/gpu_verify.sh) runs one backend only. Cases are `Case`
records with tags; `select(tag, ...)` picks them, and a name means one layer everywhere.
"""
import functools
import os
from dataclasses import dataclass, field
from itertools import product  # noqa: F401  (re-exported for the tests' parametrisations)

import pytest
import torch
import torch.nn.functional as F

import torchconv3d
from torchconv3d.functional import check_causal, resolve_args, resolve_padding

CL = torch.channels_last_3d
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
MODES = ["zeros", "reflect", "replicate", "circular"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------------------------------
# Reference helpers


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


# ---------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True, eq=False)
class Case:
    """One layer: input shape, output channels, kernel and conv3d keyword arguments
    (`bias=False` for none), with tags saying which properties use it."""
    name: str
    input: tuple
    out_channels: int
    kernel: object  # an int or three
    kwargs: dict = field(default_factory=dict)
    tags: frozenset = frozenset()

    @property
    def groups(self):
        return self.kwargs.get("groups", 1)

    @property
    def kernel3(self):
        return (self.kernel,) * 3 if isinstance(self.kernel, int) else tuple(self.kernel)

    @property
    def weight_shape(self):
        return (self.out_channels, self.input[1] // self.groups) + self.kernel3

    @property
    def bias(self):
        return self.kwargs.get("bias", True)

    @property
    def conv_kwargs(self):
        """kwargs without `bias`: what conv3d takes besides the tensors."""
        return {k: v for k, v in self.kwargs.items() if k != "bias"}

    @property
    def depthwise(self):
        return self.groups > 1 and self.groups == self.input[1]

    def __repr__(self):
        return self.name


def case(name, input, out_channels, kernel, tags, **kwargs):
    return Case(name, input, out_channels, kernel, kwargs, frozenset(tags.split()))


# Tags:
#   core         the general differential list: every kernel path and every argument, small
#                odd anisotropic shapes
#   emulate      cheap enough for the CUDA emulator's extra axes (modes, layouts, half types)
#   channels_last  the CPU's channels-innermost kernels (run with a channels_last input)
#   tc           channels per group in whole 16-byte chunks: the CUDA tensor-core kernels
#   stencil      depthwise with channels in whole 16-byte vectors: the CUDA depthwise stencil
#   nonfinite    NaN / Inf propagation (tests/test_nonfinite.py)
#   dead_taps    taps that read only zero padding (dropped by the plan, csrc/ops.cpp)
#   tc_nonfinite NaN / Inf through the CUDA v2 kernels (float16, channels_last)
#   winograd     the CPU's Winograd forward (float32 from 64 channels, bfloat16 from 32)
CASES = [
    case("basic", (2, 4, 6, 7, 5), 6, (3, 3, 3), "core"),
    case("pad1", (2, 3, 5, 6, 7), 4, 3, "core emulate nonfinite", padding=1),
    case("pad_tuple", (1, 3, 5, 6, 7), 5, (3, 2, 1), "core", padding=(1, 0, 2)),
    case("stride", (2, 3, 9, 8, 7), 4, 3, "core emulate nonfinite", stride=(2, 1, 3), padding=1),
    case("dilation", (2, 3, 9, 8, 9), 4, (3, 2, 3), "core emulate",
         dilation=(2, 3, 1), padding=(2, 1, 0)),
    case("groups", (2, 6, 5, 6, 5), 9, 3, "core emulate", groups=3, padding=1),
    case("depthwise", (2, 6, 6, 5, 7), 6, 3, "core emulate", groups=6, padding=1),
    case("depthwise_mult", (2, 3, 6, 5, 7), 6, (3, 1, 3), "core", groups=3, padding=(1, 0, 1)),
    case("depthwise_stride", (2, 4, 7, 9, 8), 4, 3, "core emulate",
         groups=4, stride=(1, 2, 2), padding=1),
    case("k1", (2, 5, 4, 5, 6), 3, 1, "core nonfinite"),
    case("k2s2", (2, 4, 8, 6, 6), 4, 2, "core", stride=2),
    case("k5", (1, 2, 7, 8, 7), 3, 5, "core emulate", padding=2),
    case("temporal_3x1x1", (2, 4, 6, 5, 5), 4, (3, 1, 1), "core", padding=(1, 0, 0)),
    case("spatial_1x3x3", (2, 4, 4, 6, 6), 4, (1, 3, 3), "core", padding=(0, 1, 1)),
    case("no_bias", (2, 3, 5, 5, 5), 4, 3, "core", bias=False, padding=1),
    case("same", (2, 3, 5, 6, 7), 4, (3, 2, 4), "core", padding="same"),
    case("same_dilated", (2, 3, 7, 6, 7), 4, 3, "core", padding="same", dilation=(1, 2, 3)),
    case("valid", (2, 3, 5, 6, 7), 4, 3, "core", padding="valid"),
    case("same_stride_tf", (2, 3, 9, 8, 7), 4, 3, "core emulate", padding="same", stride=2),
    case("same_stride_tf_even", (2, 3, 8, 8, 6), 4, (2, 4, 3), "core",
         padding="same", stride=(2, 3, 2)),
    case("causal", (2, 3, 6, 5, 5), 4, 3, "core emulate", padding="causal"),
    case("causal_dilated", (2, 3, 8, 5, 6), 4, 3, "core", padding="causal", dilation=(2, 1, 1)),
    case("asym_pairs", (2, 3, 5, 6, 5), 4, 3, "core", padding=((2, 0), (0, 1), (1, 2))),
    case("asym_groups_stride", (2, 4, 7, 7, 6), 4, 3, "core emulate",
         padding=((1, 2), (0, 0), (2, 1)), stride=(2, 1, 2), groups=2),
    case("big_channels", (1, 40, 4, 5, 6), 36, 3, "core emulate", padding=1),
    # Few, odd channels and wide kernels: bfloat16 pairs kernel columns (2q, 2q + 1) of one
    # channel (forward_planar.cpp): an odd width's last column alone, at stride 2 (the pair
    # spans two phase planes) and stride 1; an even width at dilation 2.
    case("rgb_stem", (2, 3, 5, 9, 13), 4, (3, 3, 7), "core nonfinite",
         stride=(1, 2, 2), padding=(1, 1, 3)),
    case("one_channel", (2, 1, 5, 6, 9), 5, (2, 3, 3), "core nonfinite", padding=1),
    case("one_channel_dilated", (1, 1, 4, 5, 11), 3, (1, 2, 4), "core",
         dilation=(1, 1, 2), padding=(0, 1, 3)),
    # enough positions that the emulated 2-SM GPU splits grad_weight's K over blocks
    case("many_positions", (2, 5, 9, 10, 11), 7, 3, "core", padding=1),

    # NaN / Inf: every kernel path and argument kind, small enough for the exact judge
    case("valid_wide", (2, 3, 5, 6, 9), 4, 3, "nonfinite"),
    case("depthwise_4ch", (2, 4, 6, 5, 7), 4, 3, "nonfinite", groups=4, padding=1),
    case("multiplier", (2, 2, 6, 5, 7), 6, (3, 1, 3), "nonfinite", groups=2, padding=(1, 0, 1)),
    case("groups_dilation_asym", (2, 4, 7, 7, 8), 6, (3, 2, 3), "nonfinite",
         groups=2, padding=((1, 2), (0, 1), (2, 1)), dilation=(2, 1, 2)),
    case("same_stride_tf_batch1", (1, 3, 9, 8, 7), 4, 3, "nonfinite", padding="same", stride=2),
    case("channels_20", (1, 20, 4, 5, 6), 18, 3, "nonfinite", padding=1),
    # channels_last: dense channels-innermost kernels, grad_input by stride phases
    case("wide_strided", (1, 32, 5, 6, 7), 16, 3, "nonfinite", stride=2, padding=1),
    # The corner weight is a dropped tap, the inside one a kept tap.
    case("same_dilated_far", (1, 3, 4, 5, 6), 4, 3, "dead_taps",
         padding="same", dilation=(7, 1, 9)),
    case("strided_dead_edge", (2, 2, 5, 4, 6), 3, (3, 2, 3), "dead_taps",
         padding=((6, 1), (0, 3), (7, 0)), dilation=(4, 3, 5), stride=(2, 1, 3)),
    case("no_live_tap", (1, 2, 3, 3, 3), 3, (2, 1, 2), "dead_taps",
         padding=((5, 5), 0, (4, 6)), dilation=(9, 1, 11)),

    # Layers that run on the CPU's channels-innermost forward (channels_last input, enough
    # output channels per group to fill the vector lanes, or depthwise): several weight
    # panels and term blocks, channel blocks past 128, an odd channel count (bfloat16
    # pairs), groups, depthwise with ragged channel counts and rows too narrow for an
    # interior stretch, 1x1x1. Batches of 2 (or groups): torch, and so our allocation, gives
    # float32 channels_last results only outside its single-sample slow path.
    case("cl_dense", (2, 8, 5, 6, 7), 24, 3, "channels_last", padding=1),
    case("cl_panels_stride", (2, 10, 4, 5, 6), 72, 3, "channels_last",
         padding=1, stride=(1, 2, 1)),
    case("cl_channel_blocks", (2, 130, 3, 4, 5), 32, (1, 2, 2), "channels_last",
         padding=((0, 0), (1, 0), (0, 1))),
    case("cl_groups_dilation", (2, 32, 4, 5, 6), 64, 3, "channels_last",
         groups=2, dilation=(1, 2, 1), padding=2),
    case("cl_odd_channels_same", (2, 9, 4, 5, 6), 32, (2, 3, 3), "channels_last",
         padding="same"),
    case("cl_depthwise_ragged", (2, 20, 5, 6, 9), 20, 3, "channels_last",
         groups=20, stride=(1, 2, 2), padding=1),
    case("cl_depthwise_narrow", (1, 17, 3, 4, 2), 17, 3, "channels_last",
         groups=17, padding=2, dilation=(1, 1, 2)),
    # 1x1x1 read in place (no packed tile), and with an odd channel count (packed for bfloat16)
    case("cl_pointwise_groups", (2, 32, 3, 4, 5), 64, 1, "channels_last", groups=2),
    case("cl_pointwise_odd", (2, 9, 3, 4, 5), 32, 1, "channels_last"),
    # grad_input as one forward per stride phase (grad_input_phases.cpp): phases with several
    # taps, with none (stride past the kernel: a zero phase), a padding that crops
    # grad_output (kernel 3, padding 2, stride 2), dilation sharing a factor with the stride,
    # and an odd C_out (the bfloat16 pairs of the phase forward's input channels).
    case("cl_grad_phases", (2, 32, 7, 6, 9), 16, 3, "channels_last",
         stride=(2, 3, 2), padding=((1, 0), (1, 1), (0, 2)), dilation=(1, 1, 2)),
    case("cl_grad_zero_phases", (2, 40, 5, 7, 6), 13, (1, 2, 1), "channels_last",
         stride=(2, 3, 2)),
    case("cl_grad_crop_dilation", (2, 48, 7, 9, 8), 12, 3, "channels_last",
         stride=2, padding=(2, 2, 1), dilation=(1, 2, 1)),
    # One register of input channels: grad_weight summed per chunk of output depths (5 of
    # 10 here; bfloat16 pairs with an odd row), grad_input's phase forwards on one register
    # of output channels.
    case("cl_one_register", (2, 16, 5, 6, 9), 24, 3, "channels_last",
         stride=(1, 2, 2), padding=1),
    # 16+ channels a side, 32+ on one: planar bfloat16 passes run on channels_last copies.
    case("cl_wide_backward", (2, 64, 4, 5, 6), 64, 3, "channels_last",
         stride=(1, 2, 1), padding=1),

    # The CPU's Winograd forward (forward_winograd.cpp): tiles cut by the output's edge in
    # every dimension and several chunks of them, dilation (tiles per residue class),
    # asymmetric padding, one-tap axes (the identity, with stride), two weight panels (72
    # output channels), 'causal', and weights past 12 MB once transformed in bfloat16 (the
    # threads share each chunk). Non-finite values send the layer to the direct kernels.
    case("wino_3d", (2, 64, 5, 7, 9), 64, 3, "winograd", padding=1),
    case("wino_dilated_asym", (1, 64, 9, 8, 11), 72, 3, "winograd",
         dilation=(2, 1, 3), padding=((2, 1), (0, 2), (3, 3))),
    case("wino_spatial_stride", (2, 64, 5, 9, 10), 64, (1, 3, 3), "winograd",
         stride=(2, 1, 1), padding=(0, 1, 1)),
    case("wino_one_tap_h", (1, 64, 6, 5, 7), 64, (3, 1, 3), "winograd",
         stride=(1, 2, 1), padding=(1, 0, 1)),
    case("wino_causal", (1, 64, 6, 5, 7), 64, 3, "winograd", padding="causal"),
    case("wino_shared", (1, 128, 3, 4, 5), 144, 3, "winograd", padding=1),
    case("wino_nonfinite", (1, 64, 4, 5, 6), 64, 3, "nonfinite", padding=1),

    # Layers whose channels per group fill whole 16-byte chunks (8 halves, 4 floats), so they
    # run on the tensor-core kernels: K tails, both tile widths, several M and N tiles,
    # groups, stride, dilation, asymmetric padding.
    case("tc_pad1", (2, 16, 4, 5, 6), 24, 3, "tc emulate", padding=1),
    case("tc_channel_tail", (1, 40, 4, 5, 6), 72, 3, "tc", padding=1),
    case("tc_groups_stride_dilation", (2, 32, 5, 5, 6), 16, (3, 2, 3), "tc emulate",
         groups=2, stride=(2, 1, 2), dilation=(1, 2, 1), padding=((1, 2), (0, 1), (2, 1))),
    case("tc_k1", (2, 24, 3, 4, 5), 40, 1, "tc"),
    case("tc_same_stride", (1, 16, 7, 6, 7), 16, (3, 4, 3), "tc emulate",
         padding="same", stride=2),
    case("tc_causal", (1, 8, 5, 4, 6), 8, 3, "tc", padding="causal"),
    case("tc_two_tiles", (1, 16, 6, 6, 6), 136, 3, "tc", padding="same"),
    # grad_input residue classes that no tap reaches (stride > kernel), and stride and
    # dilation sharing a factor
    case("tc_stride_over_kernel", (1, 8, 7, 8, 9), 8, (1, 2, 1), "tc", stride=(3, 3, 2)),
    case("tc_stride2_dilation2", (1, 8, 9, 8, 7), 16, 3, "tc", stride=2, dilation=2, padding=2),
    # enough positions that grad_weight splits K on the emulated 2-SM GPU
    case("tc_split_k", (2, 8, 8, 8, 8), 8, 3, "tc", padding=1),
    # input channels zero-padded to a whole chunk: an RGB stem, a single-channel volume
    case("tc_stem_rgb", (1, 3, 7, 8, 9), 16, (3, 5, 5), "tc",
         stride=(1, 2, 2), padding=(1, 2, 2)),
    case("tc_one_channel", (2, 1, 5, 6, 7), 8, 3, "tc", padding=1),
    # NaN / Inf through the v2 kernels
    case("tc_pad1_8ch", (2, 8, 4, 5, 6), 8, 3, "tc_nonfinite", padding=1),
    case("dw_pad1_8ch", (2, 8, 4, 5, 6), 8, 3, "tc_nonfinite", padding=1, groups=8),
    case("tc_stride_groups", (1, 16, 7, 6, 7), 16, (3, 2, 3), "tc_nonfinite",
         stride=(2, 1, 2), padding=1, groups=2),

    # Depthwise layers whose channels fill 16-byte vectors: the CUDA stencil (forward, and
    # grad_input at stride 1 with zero padding). W not a multiple of the stencil's 4-output
    # run.
    case("dw_pad1", (2, 16, 5, 6, 7), 16, 3, "stencil", groups=16, padding=1),
    case("dw_stride", (1, 8, 7, 9, 8), 8, 3, "stencil", groups=8, stride=(1, 2, 2), padding=1),
    case("dw_dilation_same", (1, 8, 7, 6, 9), 8, (3, 1, 3), "stencil",
         groups=8, padding="same", dilation=(2, 1, 1)),
    case("dw_k5_asym", (1, 16, 6, 7, 10), 16, 5, "stencil",
         groups=16, padding=((2, 1), (0, 2), (2, 2))),
    case("dw_valid", (2, 8, 5, 5, 6), 8, (2, 3, 3), "stencil", groups=8),
]
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


def select(*tags, names=None):
    """The cases carrying every tag given (in CASES order), or those named."""
    if names is not None:
        missing = set(names) - set(BY_NAME)
        assert not missing, f"no such cases: {missing}"
        return [c for c in CASES if c.name in names]
    return [c for c in CASES if set(tags) <= c.tags]


# ---------------------------------------------------------------------------------------
# Backends


@dataclass(frozen=True, eq=False)
class Backend:
    """Where a property runs: `device` for the tensors, `conv` (conv3d's signature) and
    `ops` (conv3d_forward / conv3d_backward) for our operators, `tol` the float tolerances
    per dtype there."""
    name: str
    device: str
    conv: object
    ops: object
    tol: dict

    def v2_launches(self, kernel):
        """Launches of a CUDA v2 kernel ('forward', 'grad_input', 'grad_weight',
        'depthwise') so far, where they can be counted (the emulator); None elsewhere."""
        if self.name != "cuda_emulated":
            return None
        return self.ops.v2_launches(kernel)


BACKENDS = ("cpu", "cuda", "cuda_emulated")
CPU = Backend("cpu", "cpu", torchconv3d.conv3d, torch.ops.torchconv3d, TOL)
# CUDA's float32-accumulating half kernels round their sums differently from the CPU's.
CUDA = Backend("cuda", "cuda", torchconv3d.conv3d, torch.ops.torchconv3d,
               {**TOL, torch.bfloat16: 1e-2, torch.float16: 1e-2})


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
    """torchconv3d.conv3d on the CUDA kernels run by the CPU emulator (first-order
    autograd only)."""
    check_causal(padding, padding_mode)
    stride, pads, dilation = resolve_args(x, w, stride, padding, dilation)
    return _Emulated.apply(x, w, b, stride, pads, dilation, groups, padding_mode)


@functools.cache
def cuda_emulated():
    """The CUDA kernels compiled for the CPU by tests/cuda_emulation (every CUDA thread a
    fiber): what CI can check of csrc/cuda without a GPU. It executes the kernels' own
    source (index arithmetic, tiling, shared-memory staging, barriers, grid-stride loops,
    split-K) but not the GPU's memory model or timing: races, out-of-bounds accesses and
    speed still need a real GPU (backend 'cuda', compute-sanitizer, benchmarks)."""
    from torch.utils.cpp_extension import load

    load(
        name="torchconv3d_cuda_emulation",
        sources=[
            os.path.join(ROOT, "csrc", "check.cpp"),
            os.path.join(ROOT, "csrc", "ops.cpp"),
            os.path.join(HERE, "cuda_emulation", "emulate.cpp"),
        ],
        extra_cflags=["-O2", "-std=c++17"],  # as the extension (torchconv3d/_build.py)
        is_python_module=False,
    )
    return Backend("cuda_emulated", "cpu", emulated_conv3d, torch.ops.torchconv3d_emu, TOL)


def _param_id(v):
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    return v.name if isinstance(v, (Case, Backend)) else str(v)


def each_backend(argnames, rows, *, backends=BACKENDS, emulated=None):
    """Parametrises ("backend", *argnames) with every row on each of `backends`; on
    'cuda_emulated' only the rows for which `emulated(*row)` holds (the emulator is slow)."""
    names = [n.strip() for n in argnames.split(",")]
    rows = [r if isinstance(r, tuple) else (r,) for r in rows]
    params = []
    for b in backends:
        for row in rows:
            assert len(row) == len(names), (names, row)
            if b == "cuda_emulated" and emulated is not None and not emulated(*row):
                continue
            params.append(pytest.param(b, *row, id="-".join(map(_param_id, (b, *row)))))
    return pytest.mark.parametrize(["backend", *names], params, indirect=["backend"])


# ---------------------------------------------------------------------------------------
# The differential check


def run_case(backend, case, dtype, mode="zeros", layout="contiguous",
             weight_layout="contiguous", grad_layout="contiguous", tol=None, tf32=False):
    """Output and gradients of the backend's conv3d against the float64 CPU reference.

    tf32: float32 operands are rounded to TF32 first, and TF32 is allowed (float32 layers
    with whole channel chunks take the tensor cores), so the reference multiplies the same
    values. grad_layout: grad_output's layout (a channels_last network hands channels_last
    ones). A 'causal' case with a mode that would read future frames must be refused."""
    kwargs = case.conv_kwargs
    x64 = torch.randn(case.input, dtype=torch.float64)
    w64 = torch.randn(case.weight_shape, dtype=torch.float64)
    b64 = torch.randn(case.out_channels, dtype=torch.float64) if case.bias else None

    stride = kwargs.get("stride", 1)
    dilation = kwargs.get("dilation", 1)
    stride3 = [stride] * 3 if isinstance(stride, int) else list(stride)
    dil3 = [dilation] * 3 if isinstance(dilation, int) else list(dilation)
    pads = resolve_padding(kwargs.get("padding", 0), list(case.kernel3), stride3, dil3,
                           list(case.input[2:]))

    # The reference sees the same (rounded) values as ours, in float64.
    rounded = round_tf32 if tf32 else (lambda t: t.to(dtype).double())
    x64, w64 = rounded(x64), rounded(w64)
    b64 = b64.to(dtype).double() if b64 is not None else None
    xr = x64.clone().requires_grad_()
    wr = w64.clone().requires_grad_()
    br = b64.clone().requires_grad_() if b64 is not None else None
    ref = reference(xr, wr, br, stride3, pads, dil3, case.groups, mode)
    gy64 = rounded(torch.randn_like(ref))  # rounded like the other inputs
    ref_grads = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], gy64)

    device = backend.device
    x = make_layout(x64.to(device, dtype), layout).requires_grad_()
    w = make_layout(w64.to(device, dtype), weight_layout).requires_grad_()
    b = b64.to(device, dtype).requires_grad_() if b64 is not None else None
    if kwargs.get("padding") == "causal" and mode in ("reflect", "circular"):
        with pytest.raises(ValueError, match="future"):  # would read future frames
            backend.conv(x, w, b, padding_mode=mode, **kwargs)
        return None
    old_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        out = backend.conv(x, w, b, padding_mode=mode, **kwargs)
        grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None],
                                    make_layout(gy64.to(device, dtype), grad_layout))
    finally:
        torch.backends.cudnn.allow_tf32 = old_tf32

    tol = backend.tol[dtype] if tol is None else tol
    assert out.shape == ref.shape
    assert out.dtype == dtype
    errs = {"output": rel_err(out, ref)}
    for label, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert g.shape == r.shape, label
        errs[label] = rel_err(g, r)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, (f"{backend.name} {case.name} {dtype} {mode} {layout}: "
                     f"errors {errs} above {tol}")
    return out, grads
