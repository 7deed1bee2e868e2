"""Causal convolution over a video in chunks: the output of every chunk equals the
whole-video output's frames, forward and backward.

A causal layer (depth padding ((k_d - 1) * d_d, 0), temporal stride 1) reads, for output
frame t, the padded frames t .. t + P, P = (k_d - 1) * d_d. Run chunk by chunk, the P frames
before a chunk are its *cache*: the last P frames of what came before (for the first chunk,
the causal padding itself: zeros, or the first frame repeated under 'replicate' in time).

    y0, cache = torchconv3d.conv3d_step(x0, w, b, padding="causal")          # first chunk
    y1, cache = torchconv3d.conv3d_step(x1, w, b, padding="causal", cache=cache)
    # torch.cat([y0, y1], 2) == conv3d(torch.cat([x0, x1], 2), w, b, padding="causal")

    stream = layer.stream()      # torchconv3d.Conv3d; holds the cache between calls
    ys = [stream(chunk) for chunk in chunks]

How a chunk is computed (no copy of the chunk, nor of the seam): by linearity in the
input, output frame t's sum over taps splits into the taps that read the chunk and those
that read the cache. The first is the operator on the chunk alone, its time padding (P, 0)
*zeros* (the cache is not padding); the second is the operator on the cache alone with time
padding (0, L) zeros, L = min(P, T), whose L output frames are exactly the cache's terms of
frames 0..L-1, and are added to them (bias once, in the first). Height and width keep the
layer's padding and modes in both (a padding mode acts on each dimension separately). So
the kernels read chunk and cache in place, through the operator's own zero padding; the
price is one extra small call (L output frames, the taps that reach the cache) and one add
over L frames. Gradients flow to every chunk, every cache and the parameters through the
ordinary autograd of those calls, so the chunked backward equals the whole-video one.

Exactness: every output term is the same product as in the whole-video call; only the
order of the sums over the first L frames of a chunk differs (the cache's terms are summed
apart, then added), so float64 agrees to rounding (~1e-16 relative) and float32 to ~1e-7,
not bitwise. Frames past the first P of a chunk are the same sum as the whole video's.

The new cache is a view of the chunk's last P frames when T >= P; when the chunk is
shorter, the old cache's tail and the chunk are concatenated (P frames, the cache's own
size). Temporal stride > 1 is refused: a chunk boundary would then need to carry the
stride's phase as well.
"""
import torch

from . import _check
from .functional import (FUTURE_MODES, _check_tensor, check_causal, megengine_to_torch,
                         resolve_args, resolve_padding_mode)
from .ops import forward as _forward
from .ops import output_size


def _causal_geometry(input, weight, stride, padding, dilation, padding_mode):
    """(stride, pads, dilation, modes, P) for a streamable layer, or a ValueError naming
    what makes it not one."""
    check_causal(padding, padding_mode)
    mode = resolve_padding_mode(padding_mode)
    stride, pads, dilation = resolve_args(input, weight, stride, padding, dilation)
    modes = _check.padding_modes(mode)
    if weight.dim() != 5 or len(stride) != 3 or len(dilation) != 3:
        return stride, pads, dilation, modes, None  # the operator's checker names it
    k, d = weight.shape[2], dilation[0]
    P = (k - 1) * d
    if stride[0] != 1:
        raise ValueError(
            f"streaming (conv3d_step) needs temporal stride 1, but got stride={stride}: with "
            f"stride {stride[0]} in time a chunk boundary would also have to carry the "
            "stride's phase; run the layer on the whole video instead")
    if pads[0] != P or pads[1] != 0:
        raise ValueError(
            f"streaming (conv3d_step) needs a causal layer: depth padding ((k_d - 1) * "
            f"dilation_d, 0) = ({P}, 0) for kernel depth {k} and dilation {d}, but got "
            f"({pads[0]}, {pads[1]}) from padding={padding!r}")
    if modes[0] in FUTURE_MODES:
        raise ValueError(
            f"streaming (conv3d_step) needs the time padding mode 'zeros' or 'replicate', but "
            f"got {modes[0]!r} (padding_mode={padding_mode!r}), which reads future frames")
    return stride, pads, dilation, modes, P


def _check_cache(cache, x, P):
    """The cache must be P frames of a volume like x: (N, C, P, H, W)."""
    expected = list(x.shape[:2]) + [P] + list(x.shape[3:])
    if list(cache.shape) != expected:
        raise ValueError(
            f"cache of size {list(cache.shape)} does not fit input chunk of size "
            f"{list(x.shape)}: expected {expected} (the last (k_d - 1) * dilation_d = {P} "
            "frames before the chunk)")
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
    dilation_d, 0) ('causal', ('causal', h, w) or explicit pairs), temporal stride 1, and
    the time padding mode 'zeros' or 'replicate'. Height and width take any padding and
    mode. Returns the T output frames and the new cache ((k_d - 1) * dilation_d frames,
    a view of input where it is long enough; gradients flow through it to earlier chunks).
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
    if c is not None:
        _check_cache(c, x, P)
    T = x.shape[2]

    if T == 0:  # nothing to compute; the cache carries over unchanged
        spatial = output_size(x.shape[2:], weight.shape[2:], stride, [0, 0] + pads[2:],
                              dilation)
        out = x.new_empty([x.shape[0], weight.shape[0], 0] + spatial[1:])
        if c is None:  # (the first frame is still to come: no cache yet)
            return (out.squeeze(0) if unbatched else out), None
        return (out.squeeze(0) if unbatched else out), cache

    if c is None:
        # The first chunk: the causal padding is the operator's own, in the layer's mode.
        out = _forward(x, weight, bias, stride, pads, dilation, groups, ",".join(modes))
        if P > 0 and T < P:  # the cache still holds padding frames
            head = (x[:, :, :1].expand(-1, -1, P - T, -1, -1) if modes[0] == "replicate"
                    else x.new_zeros(x.shape[:2] + (P - T,) + x.shape[3:]))
            new_cache = torch.cat([head, x], 2)
        else:
            new_cache = x[:, :, T - P:]
    else:
        # Chunk terms (time padding zeros: the cache is not padding), then the cache's
        # terms of the first L frames (see the module's docstring).
        inner = ",".join(["zeros"] + modes[1:])
        out = _forward(x, weight, bias, stride, pads, dilation, groups, inner)
        if P > 0:
            L = min(P, T)
            seam = _forward(c, weight, None, stride, [0, L] + pads[2:], dilation, groups,
                            inner)
            out.narrow(2, 0, L).add_(seam)
        new_cache = x[:, :, T - P:] if T >= P else torch.cat([c[:, :, T:], x], 2)
    if unbatched:
        out, new_cache = out.squeeze(0), new_cache.squeeze(0)
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
