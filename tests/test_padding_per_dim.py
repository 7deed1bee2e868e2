"""One padding mode per dimension, and causal time padding combined with explicit height and
width padding: against F.pad (one call per dimension) + F.conv3d in float64, on every
backend, through the public API, the module, the checker, vmap, opcheck and ONNX; and three
video VAEs' causal convolutions (faithful look-alikes of diffusers' LTX-Video, CogVideoX and
HunyuanVideo modules) each become one operator call with no padded copy."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import torchconv3d
from torchconv3d import _check
from torchconv3d.functional import resolve_args, resolve_padding_mode
from conftest import rel_err


def reference(x, w, b, stride, pads, dilation, groups, modes):
    """F.pad one dimension at a time, in that dimension's mode, then F.conv3d."""
    for i, mode in enumerate(modes):
        torch_pads = [0] * 6
        torch_pads[4 - 2 * i], torch_pads[5 - 2 * i] = pads[2 * i], pads[2 * i + 1]
        if any(torch_pads):
            x = F.pad(x, torch_pads, mode="constant" if mode == "zeros" else mode)
    return F.conv3d(x, w, b, stride, 0, dilation, groups)


# (modes, pads (d_b, d_a, h_b, h_a, w_b, w_a), kernel, stride, dilation, groups, layout)
CASES = [
    (("replicate", "zeros", "zeros"), (2, 0, 1, 1, 1, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1), 1,
     "contiguous"),
    (("zeros", "reflect", "circular"), (1, 2, 2, 1, 3, 0), (3, 2, 3), (1, 1, 1), (1, 2, 1), 1,
     "contiguous"),
    (("circular", "replicate", "reflect"), (2, 1, 1, 3, 2, 2), (2, 3, 3), (2, 1, 2), (1, 1, 1), 2,
     "contiguous"),
    (("reflect", "zeros", "replicate"), (1, 1, 0, 2, 2, 1), (3, 3, 2), (1, 2, 1), (2, 1, 1), 1,
     "channels_last"),
    (("replicate", "circular", "zeros"), (4, 0, 2, 2, 1, 1), (3, 3, 3), (1, 1, 2), (2, 1, 1), 4,
     "contiguous"),
]
_IDS = ["-".join(c[0]) + f"-{c[6]}" for c in CASES]


# float32 with TF32 allowed sends the 4-channel CUDA layers to the tensor-core kernels,
# whose gathers apply the modes per dimension too (TF32 products: ~1e-3 relative).
DTYPES = {"float64": (torch.float64, 1e-12), "float32": (torch.float32, 1e-5),
          "tf32": (torch.float32, 3e-3)}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_per_dim_modes_match_reference(backend, case, dtype_name):
    # backend: conftest's (TF32 off unless this test turns it on).
    name, device = backend.name, backend.device
    dtype, tol = DTYPES[dtype_name]
    if dtype_name == "tf32":
        if name == "cpu":
            pytest.skip("TF32 is a CUDA setting")
        torch.backends.cudnn.allow_tf32 = True
    modes, pads, kernel, stride, dilation, groups, layout = case
    x = torch.randn(2, 4, 6, 7, 8, dtype=torch.float64, device=device)
    w = torch.randn(8, 4 // groups, *kernel, dtype=torch.float64, device=device)
    b = torch.randn(8, dtype=torch.float64, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    gy = None
    grads = []
    for run, t in (("ours", dtype), ("ref", torch.float64)):
        xi, wi, bi = (v.to(t).detach().requires_grad_() for v in (x, w, b))
        if run == "ours":
            pairs = [pads[2 * d: 2 * d + 2] for d in range(3)]
            y = backend.conv(xi, wi, bi, list(stride), pairs, list(dilation), groups,
                             padding_mode=",".join(modes))
        else:
            y = reference(xi, wi, bi, stride, pads, dilation, groups, modes)
        if gy is None:
            gy = torch.randn(y.shape, dtype=torch.float64, device=device)
        y.backward(gy.to(t))
        grads.append((y, xi.grad, wi.grad, bi.grad))
    for name, ours, ref in zip(("output", "grad_input", "grad_weight", "grad_bias"), *grads):
        assert rel_err(ours, ref) < tol, name


# --- the public forms ------------------------------------------------------------------------

def test_conv3d_takes_modes_as_tuple_list_or_comma_string():
    x, w = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64), torch.randn(3, 2, 3, 3, 3,
                                                                        dtype=torch.float64)
    modes = ("replicate", "reflect", "circular")
    expected = reference(x, w, None, (1, 1, 1), (2, 0, 1, 1, 2, 1), (1, 1, 1), 1, modes)
    for spelling in (modes, list(modes), ",".join(modes)):
        y = torchconv3d.conv3d(x, w, padding=((2, 0), 1, (2, 1)), padding_mode=spelling)
        assert rel_err(y, expected) < 1e-13, spelling
    # Three equal modes are the one mode, the operator's original single-name form.
    assert resolve_padding_mode(("reflect",) * 3) == "reflect"


@pytest.mark.parametrize("padding, expected", [
    # HunyuanVideo's downsampler: causal time, one on each side of H and W, at any stride.
    (("causal", 1, 1), [2, 0, 1, 1, 1, 1]),
    (("causal", (0, 1), (2, 0)), [2, 0, 0, 1, 2, 0]),
    # 'same' per dimension, TensorFlow's rule at stride 2 on 7: total 2 on H, 1 on W (8)
    (("causal", "same", "same"), [2, 0, 1, 1, 0, 1]),
    (("same", "valid", 1), [1, 1, 0, 0, 1, 1]),
])
def test_string_entries_per_dimension(padding, expected):
    x, w = torch.randn(1, 2, 5, 7, 8), torch.randn(3, 2, 3, 3, 3)
    assert resolve_args(x, w, (1, 2, 2), padding, 1)[1] == expected


def test_causal_entry_is_only_for_depth_and_time_mode_must_not_read_the_future():
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match=r"'causal' for the depth.*position 1"):
        torchconv3d.conv3d(x, w, padding=(1, "causal", 1))
    with pytest.raises(ValueError, match=r"future.*'reflect' in time"):
        torchconv3d.conv3d(x, w, padding=("causal", 1, 1),
                           padding_mode=("reflect", "zeros", "zeros"))
    # Reflect in height and width reads no future frame.
    torchconv3d.conv3d(x, w, padding=("causal", 1, 1), padding_mode=("zeros", "reflect",
                                                                      "reflect"))


@pytest.mark.parametrize("mode, pattern", [
    ("zeros,reflect", "or three of them"),
    ("zeros,reflect,replicat", "padding_mode='zeros,reflect,replicat'"),
    ("zeros,,zeros", "padding_mode='zeros,,zeros'"),
])
def test_bad_mode_strings_rejected_alike_by_kernel_and_fake_checkers(mode, pattern):
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)
    args = ([1, 1, 1], [1] * 6, [1, 1, 1], 1, mode)
    with pytest.raises(ValueError, match=pattern) as cpp:
        torch.ops.torchconv3d.conv3d_forward(x, w, None, *args)
    with pytest.raises(ValueError) as fake:
        _check.conv3d_args(x, w, None, None, *args)
    assert str(cpp.value).split("\n")[0] == str(fake.value)


@pytest.mark.parametrize("modes, pads, pattern", [
    # reflect's rule on height only: pad 6 on a height of 6; depth (zeros) may pad more.
    ("zeros,reflect,zeros", [9, 9, 6, 0, 0, 0], r"reflect padding must be smaller.*\(6, 0\) "
     r"for the height of input \[1, 2, 5, 6, 7\]"),
    ("replicate,zeros,circular", [9, 9, 9, 9, 0, 8], r"wraps around more than once: padding "
     r"\(0, 8\) for the width of input \[1, 2, 5, 6, 7\]"),
])
def test_pad_size_rules_apply_per_dimension(modes, pads, pattern):
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)
    args = ([1, 1, 1], pads, [1, 1, 1], 1, modes)
    with pytest.raises(RuntimeError, match=pattern) as cpp:
        torch.ops.torchconv3d.conv3d_forward(x, w, None, *args)
    with pytest.raises(RuntimeError) as fake:
        _check.conv3d_args(x, w, None, None, *args)
    assert str(cpp.value).split("\n")[0] == str(fake.value)
    # The same sizes in a mode without that rule pass.
    ok = modes.replace("reflect", "zeros").replace("circular", "replicate")
    torch.ops.torchconv3d.conv3d_forward(x, w, None, [1, 1, 1], pads, [1, 1, 1], 1, ok)


def test_module_keeps_per_dim_modes_in_repr_pickle_and_state():
    torch.manual_seed(0)
    m = torchconv3d.Conv3d(2, 3, 3, padding=("causal", 1, 1),
                           padding_mode=["replicate", "zeros", "zeros"])
    assert m.padding_mode == ("replicate", "zeros", "zeros")
    assert "padding_mode=('replicate', 'zeros', 'zeros')" in repr(m)
    assert "padding=('causal', 1, 1)" in repr(m)
    torch.manual_seed(0)
    plain = nn.Conv3d(2, 3, 3)
    assert m.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(m.weight, plain.weight)  # nn.Conv3d's initialisation, same seed
    x = torch.randn(1, 2, 4, 5, 6)
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert clone.padding_mode == m.padding_mode and torch.equal(clone(x), m(x))
    with pytest.raises(ValueError, match="three of them"):
        torchconv3d.Conv3d(2, 3, 3, padding_mode=("zeros", "mirror", "zeros"))
    with pytest.raises(ValueError, match=r"3 modes .*\(2 modes\)"):
        torchconv3d.Conv3d(2, 3, 3, padding_mode=("zeros", "zeros"))


def test_opcheck_with_per_dim_modes():
    """Schema, fake kernel (shapes, memory formats), autograd registration agree."""
    x = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    args = (x, w, b, [1, 2, 1], [2, 0, 1, 1, 2, 1], [1, 1, 2], 2, "replicate,reflect,zeros")
    torch.library.opcheck(torch.ops.torchconv3d.conv3d_forward, args)
    gy = torch.randn_like(torch.ops.torchconv3d.conv3d_forward(*args))
    torch.library.opcheck(torch.ops.torchconv3d.conv3d_backward,
                          (gy, x.detach(), w.detach(), *args[3:], [True, True, True]))


def test_vmap_with_per_dim_modes():
    x = torch.randn(3, 2, 2, 5, 6, 7, dtype=torch.float64)
    w = torch.randn(3, 4, 2, 3, 3, 3, dtype=torch.float64)
    modes = ("replicate", "zeros", "circular")

    def f(x, w):
        return torchconv3d.conv3d(x, w, padding=("causal", 1, (2, 0)), padding_mode=modes)

    y = torch.func.vmap(f)(x, w)
    for i in range(3):
        assert rel_err(y[i], f(x[i], w[i])) < 1e-13


def test_compile_with_per_dim_modes():
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)

    def f(x, w):
        return torchconv3d.conv3d(x, w, padding=("causal", 1, 1),
                                  padding_mode=("replicate", "reflect", "zeros"))

    assert rel_err(torch.compile(f, backend="eager", fullgraph=True)(x, w), f(x, w)) < 1e-6


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_writes_one_pad_per_distinct_mode(dynamo):
    pytest.importorskip("onnxruntime")
    from test_onnx import _export, _run

    torch.manual_seed(0)
    model = torchconv3d.Conv3d(4, 6, 3, padding=((2, 0), (1, 2), 1),
                               padding_mode=("replicate", "reflect", "replicate")).eval()
    x = torch.randn(2, 4, 5, 6, 7)
    proto = _export(model, x, dynamo)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 1 and ops.count("Pad") == 2
    assert rel_err(_run(proto, x), model(x).detach()) < 1e-5


def test_onnx_operator_translation_with_per_dim_modes():
    """A graph holding the operator itself (torchconv3d/onnx_export.py): the dynamo
    exporter's translation and the TorchScript symbolic each write one Pad per distinct
    non-zero mode, zeros as Conv's own pads."""
    pytest.importorskip("onnxruntime")
    from test_onnx import _run, export_holding_our_operator

    x = torch.randn(2, 4, 5, 6, 7)
    w, b = torch.randn(6, 4, 3, 3, 3), torch.randn(6)
    args = ([1, 1, 1], [2, 0, 1, 2, 1, 1], [1, 1, 1], 1, "replicate,reflect,replicate")

    class Raw(nn.Module):
        def forward(self, x):
            return torch.ops.torchconv3d.conv3d_forward(x, w, b, *args)

    model = Raw().eval()
    want = model(x)
    for proto in export_holding_our_operator(model, x)[1]:
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("Conv") == 1 and ops.count("Pad") == 2, ops
        assert rel_err(_run(proto, x), want) < 1e-5


# --- the video VAEs' causal convolutions -----------------------------------------------------
# Look-alikes of diffusers' modules (diffusers is not installed here), written from
# diffusers/models/autoencoders: each pads with torch.cat / F.pad, then runs nn.Conv3d.

class LTXVideoCausalConv3d(nn.Module):
    """autoencoder_kl_ltx.py: the first frame repeated k_t - 1 times, H and W zero-padded
    by k // 2 in the conv (is_causal=False: first and last frames repeated (k_t - 1) // 2)."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, is_causal=True):
        super().__init__()
        self.kernel_size = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.is_causal = is_causal
        padding = (0, self.kernel_size[1] // 2, self.kernel_size[2] // 2)
        self.conv = nn.Conv3d(cin, cout, self.kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        k = self.kernel_size[0]
        if self.is_causal:
            x = torch.cat([x[:, :, :1].repeat(1, 1, k - 1, 1, 1), x], dim=2)
        else:
            x = torch.cat([x[:, :, :1].repeat(1, 1, (k - 1) // 2, 1, 1), x,
                           x[:, :, -1:].repeat(1, 1, (k - 1) // 2, 1, 1)], dim=2)
        return self.conv(x)


class CogVideoXCausalConv3d(nn.Module):
    """autoencoder_kl_cogvideox.py: pad_mode 'constant' repeats the first frame (or takes
    conv_cache) in time and zero-pads H and W; 'replicate' F.pads every dimension. Returns
    (output, conv_cache) as diffusers does."""

    def __init__(self, cin, cout, kernel_size, stride=1, dilation=1, pad_mode="constant"):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.height_pad, self.width_pad, self.time_pad = (kh - 1) // 2, (kw - 1) // 2, kt - 1
        self.pad_mode, self.time_kernel_size = pad_mode, kt
        self.time_causal_padding = (self.width_pad, self.width_pad, self.height_pad,
                                    self.height_pad, self.time_pad, 0)
        stride = stride if isinstance(stride, tuple) else (stride, 1, 1)
        self.conv = nn.Conv3d(cin, cout, (kt, kh, kw), stride=stride, dilation=(dilation, 1, 1))

    def forward(self, inputs, conv_cache=None):
        if self.pad_mode == "replicate":
            inputs = F.pad(inputs, self.time_causal_padding, mode="replicate")
            conv_cache = None
        else:
            k = self.time_kernel_size
            if k > 1:
                cached = [conv_cache] if conv_cache is not None else [inputs[:, :, :1]] * (k - 1)
                inputs = torch.cat(cached + [inputs], dim=2)
            conv_cache = inputs[:, :, -k + 1:].clone()
            inputs = F.pad(inputs, (self.width_pad, self.width_pad, self.height_pad,
                                    self.height_pad), mode="constant", value=0)
        return self.conv(inputs), conv_cache


class HunyuanVideoCausalConv3d(nn.Module):
    """autoencoder_kl_hunyuan_video.py: F.pad (k // 2 on each side of W and H, k_t - 1
    before T) in pad_mode 'replicate', then nn.Conv3d(stride, padding). The downsampler
    (HunyuanVideoDownsampleCausal3D) is this with stride (2, 2, 2) or (1, 2, 2), padding 0."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=0, pad_mode="replicate"):
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.pad_mode = pad_mode
        self.time_causal_padding = (k[0] // 2, k[0] // 2, k[1] // 2, k[1] // 2, k[2] - 1, 0)
        self.conv = nn.Conv3d(cin, cout, k, stride, padding)

    def forward(self, x):
        return self.conv(F.pad(x, self.time_causal_padding, mode=self.pad_mode))


def _ours(original, **kwargs):
    """One torchconv3d.Conv3d with the original's nn.Conv3d parameters."""
    c = original.conv
    ours = torchconv3d.Conv3d(c.in_channels, c.out_channels, c.kernel_size, c.stride,
                              dilation=c.dilation, dtype=torch.float64, **kwargs)
    ours.load_state_dict(c.state_dict())
    return ours


# (name, original, our layer's padding arguments, input shape)
VAE_LAYERS = [
    ("ltx_causal", lambda: LTXVideoCausalConv3d(4, 5, 3),
     dict(padding=("causal", 1, 1), padding_mode=("replicate", "zeros", "zeros")),
     (2, 4, 5, 6, 7)),
    ("ltx_causal_stride2", lambda: LTXVideoCausalConv3d(4, 5, 3, stride=2),
     dict(padding=("causal", 1, 1), padding_mode=("replicate", "zeros", "zeros")),
     (2, 4, 7, 8, 6)),
    ("ltx_noncausal", lambda: LTXVideoCausalConv3d(4, 5, 3, is_causal=False),
     dict(padding=1, padding_mode=("replicate", "zeros", "zeros")), (2, 4, 5, 6, 7)),
    ("cogvideox", lambda: CogVideoXCausalConv3d(4, 5, 3),
     dict(padding=("causal", 1, 1), padding_mode=("replicate", "zeros", "zeros")),
     (2, 4, 5, 6, 7)),
    ("cogvideox_kt2", lambda: CogVideoXCausalConv3d(4, 5, (2, 3, 3)),
     dict(padding=("causal", 1, 1), padding_mode=("replicate", "zeros", "zeros")),
     (1, 4, 3, 5, 6)),
    ("cogvideox_replicate", lambda: CogVideoXCausalConv3d(4, 5, 3, pad_mode="replicate"),
     dict(padding=("causal", 1, 1), padding_mode="replicate"), (2, 4, 5, 6, 7)),
    ("hunyuan_conv", lambda: HunyuanVideoCausalConv3d(4, 5, 3),
     dict(padding=("causal", 1, 1), padding_mode="replicate"), (2, 4, 5, 6, 7)),
    ("hunyuan_downsample_t2", lambda: HunyuanVideoCausalConv3d(4, 5, 3, stride=(2, 2, 2)),
     dict(padding=("causal", 1, 1), padding_mode="replicate"), (2, 4, 9, 8, 10)),
    ("hunyuan_downsample_hw", lambda: HunyuanVideoCausalConv3d(4, 5, 3, stride=(1, 2, 2)),
     dict(padding=("causal", 1, 1), padding_mode="replicate"), (2, 4, 5, 7, 6)),
]


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layer", VAE_LAYERS, ids=[v[0] for v in VAE_LAYERS])
def test_vae_causal_conv_is_one_call_exact_against_original(layer):
    name, make, kwargs, shape = layer
    original = make().double()
    ours = _ours(original, **kwargs)
    x = torch.randn(shape, dtype=torch.float64)
    outs, grads = [], []
    for model in (original, ours):
        xi = x.clone().requires_grad_()
        y = model(xi)
        y = y[0] if isinstance(y, tuple) else y
        gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        conv = getattr(model, "conv", model)
        params = [conv.weight, conv.bias]
        grads.append(torch.autograd.grad(y, [xi] + params, gy))
        outs.append(y)
    assert outs[0].shape == outs[1].shape
    assert rel_err(outs[1], outs[0]) < 1e-13
    for ours_g, ref_g in zip(grads[1], grads[0]):
        assert rel_err(ours_g, ref_g) < 1e-13
    # One operator call and nothing else: no cat, no pad, no copy of the input.
    with _Recorder() as rec, torch.no_grad():
        ours(x)
    assert rec.ops == ["conv3d_forward"], rec.ops


def test_hunyuan_downsample_differs_from_plain_causal():
    """Why ('causal', 1, 1) exists: 'causal' gives H and W TensorFlow's 'same' at stride 2
    (all the padding after), not HunyuanVideo's one on each side."""
    original = HunyuanVideoCausalConv3d(4, 5, 3, stride=(2, 2, 2)).double()
    x = torch.randn(1, 4, 9, 8, 10, dtype=torch.float64)
    plain = _ours(original, padding="causal", padding_mode="replicate")
    assert rel_err(plain(x), original(x)) > 0.1
