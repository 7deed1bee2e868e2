"""Causal convolution run over a video in chunks (torchconv3d/streaming.py): the chunks'
outputs, concatenated, equal the whole video's, and the gradients of the chunked
computation (w.r.t. every chunk, the weight, the bias) equal the whole-video gradients,
for any chunk sizes (chunks shorter than the cache too), both causal time modes, every
height/width padding mode, and temporal strides (the cache then carries the phase)."""
import pytest
import torch

import torchconv3d
from conftest import rel_err
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


def test_a_step_reads_chunk_and_cache_in_place():
    """Two operator calls (chunk, cache) and an add over the first P frames: no
    concatenation, no padded copy; the next cache is a view of the chunk."""
    w = torch.randn(4, 3, 3, 3, 3)
    x = torch.randn(1, 3, 8, 6, 7)
    _, cache = torchconv3d.conv3d_step(x[:, :, :3], w, padding=("causal", 1, 1))
    chunk = x[:, :, 3:]
    with _Recorder() as rec, torch.no_grad():
        _, new_cache = torchconv3d.conv3d_step(chunk, w, padding=("causal", 1, 1),
                                               cache=cache)
    assert rec.ops.count("conv3d_forward") == 2
    assert not {"cat", "constant_pad_nd", "replication_pad3d", "clone", "copy_"} & set(rec.ops)
    assert new_cache._base is chunk._base and torch.equal(new_cache, chunk[:, :, -2:])


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
