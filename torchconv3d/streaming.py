"""Causal convolution over a video in chunks: the output of every chunk equals the
whole-video output's frames, forward and backward.

A causal layer (depth padding (P, 0), P = (k_d - 1) * d_d) with temporal stride s reads,
for output frame t, the padded frames t*s .. t*s + P. Run chunk by chunk, the frames before
a chunk that later outputs still read are its *cache*: the padded video's frames from the
next output's first one on (for the first chunk, the causal padding itself: zeros, or the
first frame repeated under 'replicate' in time). With s = 1 the cache is always the last P
frames; with s > 1 its length, between P + 1 - s and P, carries the stride's phase.

    y0, cache = torchconv3d.conv3d_step(x0, w, b, padding="causal")          # first chunk
    y1, cache = torchconv3d.conv3d_step(x1, w, b, padding="causal", cache=cache)
    # torch.cat([y0, y1], 2) == conv3d(torch.cat([x0, x1], 2), w, b, padding="causal")

    stream = layer.stream()      # torchconv3d.Conv3d; holds the cache between calls
    ys = [stream(chunk) for chunk in chunks]

How a chunk is computed: one operator call (conv3d_stream_forward) over the volume
[cache; chunk], which is never built: its kernels read frames before the cache's length
from the cache and the rest from the chunk, both in place (csrc/conv3d.h's DepthHead).
The volume needs no time padding (the cache is it); height and width keep the layer's
padding and modes. Its backward computes the gradient of that volume (one tensor) and hands
the cache's and the chunk's frames back as views of it, with the weight and bias gradients,
so gradients reach every chunk, every cache and the parameters and the chunked backward
equals the whole-video one.

Exactness: every output sums the same products as in the whole-video call, so float64
agrees to rounding (~1e-16 relative) and float32 to ~1e-7; not bitwise, as the kernels may
order a sum differently for a different volume (and the CPU takes its direct kernels where
the whole video would go through a layout copy of the input).

The new cache is a view of the chunk's tail when the chunk is long enough; otherwise the
old cache's tail and the chunk are concatenated (at most P frames, the cache's own size). A
temporal stride larger than the dilated kernel depth (s > P + 1) is refused: the stream
would skip whole frames between chunks, which no cache can hold.
"""
import torch

from . import _check
from .functional import (FUTURE_MODES, _check_tensor, check_causal, megengine_to_torch,
                         resolve_args, resolve_padding_mode)
from .ops import forward as _forward
from .ops import output_size, stream_forward_op


def _causal_geometry(input, weight, stride, padding, dilation, padding_mode):
    """(stride, pads, dilation, modes, P) for a streamable layer, or a ValueError naming
    what makes it not one."""
    check_causal(padding, padding_mode)
    mode = resolve_padding_mode(padding_mode)
    stride, pads, dilation = resolve_args(input, weight, stride, padding, dilation)
    modes = _check.padding_modes(mode)
    if weight.dim() != 5 or len(stride) != 3 or len(dilation) != 3:
        return stride, pads, dilation, modes, None  # the operator's checker names it
    k, d, st = weight.shape[2], dilation[0], stride[0]
    P = (k - 1) * d
    if pads[0] != P or pads[1] != 0:
        raise ValueError(
            f"streaming (conv3d_step) needs a causal layer: depth padding ((k_d - 1) * "
            f"dilation_d, 0) = ({P}, 0) for kernel depth {k} and dilation {d}, but got "
            f"({pads[0]}, {pads[1]}) from padding={padding!r}")
    if st > P + 1:
        raise ValueError(
            f"streaming (conv3d_step) needs a temporal stride of at most the dilated kernel "
            f"depth (k_d - 1) * dilation_d + 1 = {P + 1}, but got stride={stride} (temporal "
            f"stride {st}): the stream would skip whole frames between chunks")
    if modes[0] in FUTURE_MODES:
        raise ValueError(
            f"streaming (conv3d_step) needs the time padding mode 'zeros' or 'replicate', but "
            f"got {modes[0]!r} (padding_mode={padding_mode!r}), which reads future frames")
    return stride, pads, dilation, modes, P


def _check_cache(cache, x, P, s):
    """The cache must be (N, C, F, H, W) like x, P + 1 - s <= F <= P frames."""
    shape, lo = list(cache.shape), max(0, P + 1 - s)
    if (len(shape) != x.dim() or shape[:2] != list(x.shape[:2])
            or shape[3:] != list(x.shape[3:]) or not lo <= shape[2] <= P):
        frames = f"{P}" if lo == P else f"{lo} to {P}"
        raise ValueError(
            f"cache of size {shape} does not fit input chunk of size {list(x.shape)}: "
            f"expected {list(x.shape[:2]) + [frames] + list(x.shape[3:])} (the frames before "
            f"the chunk that the next outputs read: (k_d - 1) * dilation_d = {P}, fewer by "
            f"the temporal stride's phase)")
    if cache.dtype != x.dtype or cache.device != x.device:
        raise ValueError(
            f"cache ({cache.dtype} on {cache.device}) must match the input chunk "
            f"({x.dtype} on {x.device})")


def conv3d_step(input, weight, bias=None, stride=1, padding="causal", dilation=1, groups=1,
                padding_mode="zeros", *, cache=None):
    """One chunk of a causal convolution: returns (output, cache).

    input: (N, C_in, T, H, W) or unbatched (C_in, T, H, W), the next T >= 0 frames.
    cache: None for the first chunk (the causal padding, per the time padding mode, stands
    before it), else the cache this function returned for the previous chunk.
    The other arguments are conv3d's; the depth padding must be causal, ((k_d - 1) *
    dilation_d, 0) ('causal', ('causal', h, w) or explicit pairs), the temporal stride at
    most (k_d - 1) * dilation_d + 1, and the time padding mode 'zeros' or 'replicate'.
    Height and width take any padding, stride and mode. Returns the output frames this
    chunk completes (T of them at temporal stride 1) and the new cache (a view of input
    where it is long enough; gradients flow through it to earlier chunks).
    """
    _check_tensor("input", 1, input)
    _check_tensor("weight", 2, weight)
    _check_tensor("bias", 3, bias, optional=True)
    _check_tensor("cache", 9, cache, optional=True)
    weight, bias = megengine_to_torch(weight, bias, groups)
    stride, pads, dilation, modes, P = _causal_geometry(input, weight, stride, padding,
                                                        dilation, padding_mode)
    unbatched = input.dim() == 4
    x = input.unsqueeze(0) if unbatched else input
    c = None if cache is None else (cache.unsqueeze(0) if unbatched else cache)
    if P is None or x.dim() != 5:  # let the operator's checker say what is wrong
        out = _forward(input, weight, bias, stride, pads, dilation, groups, ",".join(modes))
        return out, cache
    s = stride[0]
    if c is not None:
        _check_cache(c, x, P, s)
    T = x.shape[2]
    inner = ",".join(["zeros"] + modes[1:])  # time padding that is cache, not padding

    if c is None and T == 0:  # (the first frame is still to come: no cache yet)
        out = None
    elif c is None:
        # The first chunk: the causal padding is the operator's own, in the layer's mode.
        out = _forward(x, weight, bias, stride, pads, dilation, groups, ",".join(modes))
        start = out.shape[2] * s - P  # the next output's first frame, in chunk frames
        if start >= 0:
            new_cache = x[:, :, start:]
        else:  # the cache still holds padding frames
            head = (x[:, :, :1].expand(-1, -1, -start, -1, -1) if modes[0] == "replicate"
                    else x.new_zeros(x.shape[:2] + (-start,) + x.shape[3:]))
            new_cache = torch.cat([head, x], 2)
    else:
        C = c.shape[2]
        n = (C + T - P - 1) // s + 1 if C + T > P else 0  # output frames this chunk ends
        if n > 0:  # the n frames of [cache; chunk] (module docstring)
            out = stream_forward_op(c, x, weight, bias, stride, [0, 0] + pads[2:], dilation,
                                    groups, inner)
        else:
            out = None
        start = n * s  # the next output's first frame, in cache + chunk frames
        new_cache = x[:, :, start - C:] if start >= C else torch.cat([c[:, :, start:], x], 2)
    if out is None:  # no output frame ends in this chunk
        spatial = output_size(x.shape[2:], weight.shape[2:], stride, [P, 0] + pads[2:],
                              dilation)
        out = x.new_empty([x.shape[0], weight.shape[0], 0] + spatial[1:])
        new_cache = None if c is None else new_cache
    if unbatched:
        out = out.squeeze(0)
        new_cache = None if new_cache is None else new_cache.squeeze(0)
    return out, new_cache


class ConvStream:
    """A causal torchconv3d.Conv3d run chunk by chunk: `stream(chunk)` returns the chunk's
    output frames and keeps the cache for the next call. reset() starts a new video."""

    def __init__(self, layer):
        layer.check_streamable()
        self.layer = layer
        self.cache = None

    def __call__(self, chunk):
        out, self.cache = self.layer.step(chunk, self.cache)
        return out

    def reset(self):
        self.cache = None
