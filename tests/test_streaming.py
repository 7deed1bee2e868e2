"""Causal convolution run over a video in chunks (torchconv3d/streaming.py): the chunks'
outputs, concatenated, equal the whole video's, and the gradients of the chunked
computation (w.r.t. every chunk, the weight, the bias) equal the whole-video gradients,
for any chunk sizes (chunks shorter than the cache too), both causal time modes, every
height/width padding mode, and temporal strides (the cache then carries the phase)."""
from itertools import product

import pytest
import torch

import torchconv3d
from cases import each_backend
from conftest import rel_err
from test_autograd import (_assert_same_results, _func_transforms, _vmap_transforms,  # noqa: F401
                           no_vmap_fallback)
from test_padding_per_dim import CogVideoXCausalConv3d, _Recorder

T = 11  # frames of the whole video

# (kernel, dilation, padding, stride): P = (k_d - 1) * d_d frames of cache
LAYERS = [
    ((3, 3, 3), (1, 1, 1), ("causal", 1, 1), 1),               # P = 2
    ((4, 3, 2), (2, 1, 2), ("causal", "same", (2, 0)), 1),     # P = 6: chunks shorter than it
    ((1, 3, 3), (1, 1, 1), ("causal", (0, 2), 1), 1),          # P = 0: no cache at all
    ((2, 2, 3), (3, 1, 1), "causal", 1),                       # P = 3, H and W 'same'
    ((3, 3, 3), (1, 1, 1), ("causal", 1, 1), (2, 2, 2)),       # HunyuanVideo's downsampler
    ((4, 3, 3), (1, 1, 1), ("causal", "same", 1), (3, 1, 2)),  # P = 3, phases 1..3
    ((2, 3, 3), (2, 1, 1), "causal", (3, 1, 1)),               # s = P + 1: caches of 0..2
]
MODES = [
    ("zeros", "zeros", "zeros"),
    ("replicate", "zeros", "zeros"),       # LTX-Video, CogVideoX
    ("replicate", "reflect", "circular"),
    ("zeros", "replicate", "reflect"),
]
SPLITS = [[T], [1] * T, [2, 1, 3, 1, 4], [1, 6, 4], [5, 0, 6]]


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


def _whole_and_chunked(x, w, b, gy, splits, **kwargs):
    """[(output, grad_x, grad_w, grad_b)] of the whole-video call and of the chunked one."""
    results = []
    for chunked in (False, True):
        xi, wi, bi = (v.detach().clone().requires_grad_() for v in (x, w, b))
        if chunked:
            outs, cache = [], None
            for chunk in xi.split(splits, dim=2):
                y, cache = torchconv3d.conv3d_step(chunk, wi, bi, cache=cache, **kwargs)
                outs.append(y)
            y = torch.cat(outs, 2)  # (the test's own copy, to compare)
        else:
            y = torchconv3d.conv3d(xi, wi, bi, **kwargs)
        y.backward(gy)
        results.append((y, xi.grad, wi.grad, bi.grad))
    return results


@pytest.mark.parametrize("splits", SPLITS, ids=lambda s: "+".join(map(str, s)))
@pytest.mark.parametrize("modes", MODES, ids="-".join)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: f"k{l[0]}d{l[1]}s{l[3]}")
def test_chunked_equals_whole_forward_and_backward(device, layer, modes, splits):
    kernel, dilation, padding, stride = layer
    x = torch.randn(2, 4, T, 6, 7, dtype=torch.float64, device=device)
    w = torch.randn(6, 2, *kernel, dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    kwargs = dict(padding=padding, dilation=dilation, stride=stride, groups=2,
                  padding_mode=modes)
    gy = torch.randn_like(torchconv3d.conv3d(x, w, b, **kwargs))
    whole, chunked = _whole_and_chunked(x, w, b, gy, splits, **kwargs)
    for name, c, ref in zip(("output", "grad_input", "grad_weight", "grad_bias"), chunked,
                            whole):
        assert rel_err(c, ref) < 1e-14, name


def test_chunked_float32_close_to_whole():
    x = torch.randn(1, 3, T, 8, 9)
    w, b = torch.randn(5, 3, 3, 3, 3), torch.randn(5)
    kwargs = dict(padding=("causal", 1, 1), padding_mode=("replicate", "reflect", "zeros"))
    gy = torch.randn(1, 5, T, 8, 9)
    whole, chunked = _whole_and_chunked(x, w, b, gy, [3, 1, 7], **kwargs)
    for c, ref in zip(chunked, whole):
        assert rel_err(c, ref) < 1e-6


@pytest.mark.parametrize("conv_mode", ["cross_correlation", "convolution"])
def test_module_stream_and_step_match_the_layer(conv_mode):
    layer = torchconv3d.Conv3d(3, 4, (3, 2, 3), padding=("causal", 1, 1),
                               padding_mode=("replicate", "zeros", "zeros"),
                               dtype=torch.float64, conv_mode=conv_mode)
    x = torch.randn(3, T, 6, 7, dtype=torch.float64)  # unbatched
    expected = layer(x)
    stream = layer.stream()
    for _ in range(2):  # reset() starts a new video
        y = torch.cat([stream(c) for c in x.split([4, 1, 6], dim=1)], dim=1)
        assert rel_err(y, expected) < 1e-14
        stream.reset()
    y0, cache = layer.step(x[:, :5])
    y1, _ = layer.step(x[:, 5:], cache)
    assert rel_err(torch.cat([y0, y1], 1), expected) < 1e-14


def test_cogvideox_conv_cache_streaming_is_reproduced():
    """CogVideoX decodes in chunks with its conv_cache (torch.cat of cache and chunk, then
    F.pad); our stream gives the same frames, reading the chunk in place."""
    original = CogVideoXCausalConv3d(4, 5, 3).double()
    ours = torchconv3d.Conv3d(4, 5, 3, padding=("causal", 1, 1),
                              padding_mode=("replicate", "zeros", "zeros"),
                              dtype=torch.float64)
    ours.load_state_dict(original.conv.state_dict())
    x = torch.randn(1, 4, 9, 6, 7, dtype=torch.float64)
    stream, cache = ours.stream(), None
    for chunk in x.split([1, 4, 4], dim=2):  # CogVideoX's frame batches: 1, then 4s
        expected, cache = original(chunk, cache)
        assert rel_err(stream(chunk), expected) < 1e-14


def test_hunyuan_downsampler_streams():
    """HunyuanVideo's stride-2 causal downsampler, on a video in chunks of any length (the
    cache carries the stride's phase), equals the original module on the whole video."""
    from test_padding_per_dim import HunyuanVideoCausalConv3d

    original = HunyuanVideoCausalConv3d(3, 4, 3, stride=(2, 2, 2)).double()
    ours = torchconv3d.Conv3d(3, 4, 3, stride=2, padding=("causal", 1, 1),
                              padding_mode="replicate", dtype=torch.float64)
    ours.load_state_dict(original.conv.state_dict())
    x = torch.randn(1, 3, 17, 8, 10, dtype=torch.float64)
    stream = ours.stream()
    y = torch.cat([stream(c) for c in x.split([1, 4, 3, 2, 7], dim=2)], dim=2)
    assert rel_err(y, original(x)) < 1e-14


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_step_reads_chunk_and_cache_in_place(layout):
    """One operator call over [cache; chunk]: no concatenation, padded copy or copy of any
    kind, in Python or in the operator (the profiler lists every ATen op the C++ side
    calls, forward and backward); the next cache is a view of the chunk. (The gradients are
    taken with autograd.grad: accumulating into a leaf's .grad, autograd clones a view.)"""
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    w = torch.randn(32, 32, 3, 3, 3, requires_grad=True)
    x = torch.randn(1, 32, 8, 6, 7).to(memory_format=fmt)
    _, cache = torchconv3d.conv3d_step(x[:, :, :3], w, padding=("causal", 1, 1))
    chunk = x[:, :, 3:].requires_grad_()
    cache.requires_grad_()
    with _Recorder() as rec, torch.profiler.profile() as prof:
        y, new_cache = torchconv3d.conv3d_step(chunk, w, padding=("causal", 1, 1),
                                               cache=cache)
        torch.autograd.grad(y, (cache, chunk, w), torch.ones_like(y))
    assert rec.ops.count("conv3d_stream_forward") == 1 and "conv3d_forward" not in rec.ops
    copies = {"cat", "constant_pad_nd", "replication_pad3d", "clone", "copy_", "contiguous"}
    assert not copies & set(rec.ops)
    ran = {e.name.removeprefix("aten::") for e in prof.events()}
    assert "torchconv3d::conv3d_stream_backward" in ran
    assert not copies & ran, copies & ran
    assert torch.equal(new_cache, chunk[:, :, -2:])
    assert new_cache.data_ptr() == chunk[:, :, -2:].data_ptr()


# Layers for the stream operator's own check, each reaching kernels of its own: (C_in,
# C_out, groups, kernel, stride, dilation, H/W padding, H/W modes, H, W).
STREAM_LAYERS = {
    "grouped": (4, 6, 2, (3, 3, 2), (1, 1, 1), (1, 1, 1), (1, 1, 0, 1), "zeros", 5, 6),
    "dense32": (32, 32, 1, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1, 1), "zeros", 6, 5),
    "dense32_s2": (32, 32, 1, (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1, 1), "replicate", 6, 5),
    "depthwise": (16, 16, 16, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1, 1), "reflect", 5, 6),
    "rgb": (3, 8, 1, (2, 5, 5), (1, 2, 2), (1, 1, 1), (2, 2, 2, 2), "zeros", 7, 7),
    # taps that read only padding along H (dropped: the head is cropped with the input)
    "dead_taps": (4, 4, 1, (2, 3, 3), (1, 1, 1), (2, 5, 1), (5, 5, 1, 1), "zeros", 4, 5),
    "pointwise": (8, 8, 1, (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0, 0), "zeros", 3, 4),
}
STREAM_TOL = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2e-2,
              torch.float16: 5e-3}


def _emulated_row(name, layout, dtype):
    # The emulator's fibers are slow: the layers that reach v1's GEMM and depthwise kernels
    # (float64), the depthwise stencil and the tensor-core GEMM (half types; channels_last
    # reads the head in place, masked and general gathers; contiguous, a channels-last copy).
    return (dtype == torch.float64 and name in ("grouped", "depthwise", "dead_taps")) or (
        dtype == torch.bfloat16 and (
            (layout == "channels_last" and name in ("dense32", "dense32_s2", "depthwise"))
            or (layout == "contiguous" and name == "dense32")))


@each_backend("name, layout, dtype",
              product(STREAM_LAYERS, ["contiguous", "channels_last"],
                      [torch.float64, torch.float32, torch.bfloat16, torch.float16]),
              emulated=_emulated_row)
def test_stream_operator_equals_conv_of_the_concatenation(backend, name, layout, dtype):
    """conv3d_stream_forward/backward(head, input) against conv3d_forward/backward of
    torch.cat([head, input], 2) on the same backend: output, the volume's gradient, the
    weight's and the bias's, for every layout and dtype (each kernel family on the CPU,
    v1 and v2 on CUDA)."""
    cin, cout, groups, kernel, stride, dilation, hw_pads, mode, H, W = STREAM_LAYERS[name]
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    dev = backend.device
    head = torch.randn(2, cin, 3, H, W, dtype=dtype, device=dev).to(memory_format=fmt)
    x = torch.randn(2, cin, 4, H, W, dtype=dtype, device=dev).to(memory_format=fmt)
    w = torch.randn(cout, cin // groups, *kernel, dtype=dtype, device=dev)
    b = torch.randn(cout, dtype=dtype, device=dev)
    args = (list(stride), [0, 0, *hw_pads], list(dilation), groups,
            f"zeros,{mode},{mode}")
    y = backend.ops.conv3d_stream_forward(head, x, w, b, *args)
    volume = torch.cat([head, x], 2)
    ref = backend.ops.conv3d_forward(volume, w, b, *args)
    assert y.shape == ref.shape and rel_err(y, ref) < STREAM_TOL[dtype]
    gy = torch.randn_like(ref)
    grads = backend.ops.conv3d_stream_backward(gy, head, x, w, *args, [True, True, True])
    refs = backend.ops.conv3d_backward(gy, volume, w, *args, [True, True, True])
    for what, g, r in zip(("volume", "weight", "bias"), grads, refs):
        assert g.shape == r.shape and rel_err(g, r) < STREAM_TOL[dtype], what


@each_backend("name", ["dense32", "dense32_s2", "depthwise"],
              backends=("cuda", "cuda_emulated"))
def test_v2_kernels_read_a_channels_last_head_in_place(backend, name):
    """CUDA's v2 kernels (tensor-core GEMM with masked and general gathers, depthwise
    stencil; forward and grad_weight) read a channels_last stream's head and input where
    they lie: no copy of either in the forward or the backward, and the result of the
    concatenated volume. The head's sample stride differs from the input's (fewer frames)."""
    cin, cout, groups, kernel, stride, dilation, hw_pads, mode, H, W = STREAM_LAYERS[name]
    cl, dev = torch.channels_last_3d, backend.device
    head = torch.randn(2, cin, 3, H, W, dtype=torch.bfloat16, device=dev).to(memory_format=cl)
    x = torch.randn(2, cin, 4, H, W, dtype=torch.bfloat16, device=dev).to(memory_format=cl)
    w = torch.randn(cout, cin // groups, *kernel, dtype=torch.bfloat16, device=dev)
    args = (list(stride), [0, 0, *hw_pads], list(dilation), groups,
            f"zeros,{mode},{mode}")
    ref = backend.ops.conv3d_forward(torch.cat([head, x], 2), w, None, *args)
    gy = torch.randn_like(ref).contiguous(memory_format=cl)
    kernel_name = "depthwise" if name == "depthwise" else "forward"
    launched = backend.v2_launches(kernel_name)
    with torch.profiler.profile(record_shapes=True) as prof:
        y = backend.ops.conv3d_stream_forward(head, x, w, None, *args)
        grads = backend.ops.conv3d_stream_backward(gy, head, x, w, *args, [True, True, False])
    if launched is not None:
        assert backend.v2_launches(kernel_name) > launched
    copied = [e.input_shapes for e in prof.events() if e.name in ("aten::copy_", "aten::cat")]
    assert not [s for s in copied if list(head.shape) in s or list(x.shape) in s], copied
    refs = backend.ops.conv3d_backward(gy, torch.cat([head, x], 2), w, *args,
                                       [True, True, False])
    assert rel_err(y, ref) < STREAM_TOL[torch.bfloat16]
    for what, g, r in zip(("volume", "weight"), grads[:2], refs[:2]):
        assert rel_err(g, r) < STREAM_TOL[torch.bfloat16], what


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stream_operator_nonfinite_head(layout):
    """An Inf or NaN in the head reaches exactly the outputs and weight gradients it
    reaches in the concatenated volume (the kernels' exact non-finite paths read the head)."""
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    head = torch.randn(1, 16, 2, 5, 6).to(memory_format=fmt)
    head[0, 3, 1, 2, 4] = float("inf")
    head[0, 7, 0, 0, 0] = float("nan")
    x = torch.randn(1, 16, 3, 5, 6).to(memory_format=fmt)
    w = torch.randn(16, 16, 3, 3, 3)
    args = ([1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1], 1, "zeros")
    ops = torch.ops.torchconv3d
    y = ops.conv3d_stream_forward(head, x, w, None, *args)
    volume = torch.cat([head, x], 2)
    torch.testing.assert_close(y, ops.conv3d_forward(volume, w, None, *args), equal_nan=True)
    gy = torch.randn_like(y)
    got = ops.conv3d_stream_backward(gy, head, x, w, *args, [True, True, False])
    ref = ops.conv3d_backward(gy, volume, w, *args, [True, True, False])
    for g, r in zip(got[:2], ref[:2]):
        torch.testing.assert_close(g, r, equal_nan=True)


def _stream_and_volume_convs(own_head):
    """conv(x, w, b) through the stream operator and through conv3d_forward of the volume
    it stands for: the head is x's first 3 frames (both carry tangents and vmapped
    dimensions), or with own_head 2 frames of constants shaped after x (only x does)."""
    ops = torch.ops.torchconv3d
    args = ([1, 2, 1], [0, 0, 1, 1, 0, 2], [1, 1, 2], 1, "zeros,replicate,zeros")

    def split(x):
        if not own_head:
            return x.narrow(-3, 0, 3), x.narrow(-3, 3, x.shape[-3] - 3)
        shape = list(x.shape)
        shape[-3] = 2
        n = torch.Size(shape).numel()
        head = torch.arange(n, dtype=x.dtype, device=x.device).mul(0.37).cos().reshape(shape)
        return head, x

    def stream(x, w, b):
        return ops.conv3d_stream_forward(*split(x), w, b, *args)

    def volume(x, w, b):
        return ops.conv3d_forward(torch.cat(split(x), -3), w, b, *args)

    return stream, volume


@pytest.mark.parametrize("own_head", [False, True], ids=["head_of_x", "own_head"])
def test_torch_func_transforms_through_a_stream(own_head):
    """Every derivative of the stream operator is conv3d's over [head; input]: torch.func
    (jvp, jacfwd, jacrev, grad, hessian, Hessian-vector products) and forward_ad, to 1e-10
    in float64 (second order goes through conv3d_backward of the concatenated volume)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 5, 6, dtype=torch.float64)
    w, b = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    stream, volume = _stream_and_volume_convs(own_head)
    _assert_same_results(_func_transforms(stream, x, w, b), _func_transforms(volume, x, w, b))


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, None), (1, 0, 0)], ids=str)
@pytest.mark.parametrize("own_head", [False, True], ids=["head_of_x", "own_head"])
def test_vmap_through_a_stream(own_head, in_dims, no_vmap_fallback):
    """vmap, vmap(grad), grad(vmap), vmap(jvp) and nested vmap of the stream operator (and
    of its backward) through batching rules, equal to conv3d's over [head; input]."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 5, 6, dtype=torch.float64)
    w, b = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    x, w, b = (t if d is None else torch.stack([t, t.sin(), -t], d)
               for t, d in zip((x, w, b), in_dims))
    stream, volume = _stream_and_volume_convs(own_head)
    _assert_same_results(_vmap_transforms(stream, in_dims, x, w, b),
                         _vmap_transforms(volume, in_dims, x, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_stream_operators(layout):
    """torch.library.opcheck: schema, fake kernels, autograd registration and AOT dispatch
    of both stream operators (batched and unbatched)."""
    from torch.library import opcheck

    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    head = torch.randn(2, 4, 2, 5, 6, dtype=torch.float64).to(memory_format=fmt)
    x = torch.randn(2, 4, 3, 5, 6, dtype=torch.float64).to(memory_format=fmt)
    w, b = torch.randn(6, 2, 3, 3, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    args = ([1, 1, 2], [0, 0, 1, 1, 0, 1], [1, 1, 1], 2, "zeros,reflect,zeros")
    ops = torch.ops.torchconv3d
    for h, v in ((head, x), (head[0], x[0])):
        opcheck(ops.conv3d_stream_forward.default, (h, v, w, b, *args))
        opcheck(ops.conv3d_stream_forward.default,
                (h.requires_grad_(), v.requires_grad_(), w.requires_grad_(), None, *args))
        gy = ops.conv3d_stream_forward(h.detach(), v.detach(), w.detach(), b, *args)
        gy = torch.randn_like(gy)
        for mask in ([True, True, True], [False, True, False]):
            opcheck(ops.conv3d_stream_backward.default, (gy, h.detach(), v.detach(),
                                                          w.detach(), *args, mask))


def test_a_streamed_layer_has_second_derivatives():
    """Conv3d.step with create_graph=True: gradgradcheck through cache and chunk."""
    layer = torchconv3d.Conv3d(2, 3, 3, padding=("causal", 1, 1), dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, 4, dtype=torch.float64, requires_grad=True)

    def two_steps(x):
        y0, cache = layer.step(x[:, :, :2])
        y1, _ = layer.step(x[:, :, 2:], cache)
        return torch.cat([y0, y1], 2)

    assert torch.autograd.gradgradcheck(two_steps, (x,))
    torch.testing.assert_close(two_steps(x), layer(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("head_shape, padding, pattern", [
    ((1, 4, 2, 6, 5), [0, 0, 1, 1, 1, 1], r"head of size \[1, 4, 2, 6, 5\] does not fit input "
     r"of size \[1, 4, 3, 6, 7\]: they must differ only in depth \(dimension 2\)"),
    ((1, 4, 2, 6, 7), [1, 0, 1, 1, 1, 1], r"must be \(0, 0\), but got padding=\[1, 0, 1, 1, 1, 1\]"),
])
def test_stream_operator_rejects_bad_heads(head_shape, padding, pattern):
    x, w = torch.randn(1, 4, 3, 6, 7), torch.randn(5, 4, 3, 3, 3)
    args = ([1, 1, 1], padding, [1, 1, 1], 1, "zeros")
    for device in ("cpu", "meta"):  # the operator and its fake kernel
        with pytest.raises(ValueError, match=pattern):
            torch.ops.torchconv3d.conv3d_stream_forward(
                torch.randn(head_shape, device=device), x.to(device), w.to(device), None, *args)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(padding="causal", stride=(4, 1, 1)), r"at most the dilated kernel depth "
     r"\(k_d - 1\) \* dilation_d \+ 1 = 3, but got stride=\[4, 1, 1\] \(temporal stride 4\)"),
    (dict(padding=1), r"\(2, 0\) for kernel depth 3 and dilation 1, but got \(1, 1\)"),
    (dict(padding=((2, 0), 1, 1), padding_mode="circular"), r"'circular'.*reads future"),
])
def test_non_streamable_layers_rejected(kwargs, pattern):
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match=pattern):
        torchconv3d.conv3d_step(x, w, **kwargs)
    layer = torchconv3d.Conv3d(2, 3, 3, **kwargs) if "circular" not in str(kwargs) else None
    if layer is not None:
        with pytest.raises(ValueError, match=pattern):
            layer.stream()


def test_cache_must_fit_the_chunk():
    x, w = torch.randn(1, 2, 5, 6, 7), torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match=r"cache of size \[1, 2, 3, 6, 7\] does not fit input "
                       r"chunk of size \[1, 2, 5, 6, 7\]: expected \[1, 2, '2', 6, 7\]"):
        torchconv3d.conv3d_step(x, w, padding="causal", cache=torch.randn(1, 2, 3, 6, 7))
    with pytest.raises(ValueError, match=r"cache of size \[1, 2, 2, 6, 8\] .* expected "
                       r"\[1, 2, '1 to 2', 6, 7\]"):  # stride 2: one or two frames
        torchconv3d.conv3d_step(x, w, padding="causal", stride=(2, 1, 1),
                                cache=torch.randn(1, 2, 2, 6, 8))
    with pytest.raises(ValueError, match="NCDHW"):
        torchconv3d.Conv3d(2, 3, 3, padding="causal", data_format="NDHWC").stream()
