"""conv3d: F.conv3d plus padding_mode and the padding extensions."""
import operator

import torch
from torch.overrides import handle_torch_function, has_torch_function_variadic

from .ops import forward as _forward
from .ops import transpose_forward as _transpose_forward

PADDING_STRINGS = ("valid", "same", "causal")

_INT_OR_INTS = "an int or a tuple of ints"


def _as_int(name, whole, value, expected=_INT_OR_INTS):
    """value as torch's argument parser takes an integer: an int, a numpy integer or an
    integer tensor of one element. A bool or a float is a TypeError, as in F.conv3d (int()
    would truncate stride=2.5 to 2)."""
    if type(value) is int or isinstance(value, torch.SymInt):  # (the common case first)
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"conv3d(): argument '{name}' must be {expected}, but got {name}={whole!r} "
                    f"(a {type(value).__name__})")


def _ints(name, value):
    """An int list argument as torch's parser reads it: a list or tuple of integers, or one
    integer (a one-element list)."""
    if isinstance(value, (list, tuple)):
        return [_as_int(name, value, v) for v in value]
    return [_as_int(name, value, value)]


def _triple(name, value):
    """stride or dilation: one integer, or a list of 1 or 3, expanded as F.conv3d does (any
    other length is left to the operator's checker, which names it in F.conv3d's words)."""
    values = _ints(name, value)
    return values * 3 if len(values) == 1 else values


def _check_tensor(name, position, value, optional=False):
    if not (isinstance(value, torch.Tensor) or (optional and value is None)):
        raise TypeError(f"conv3d(): argument '{name}' (position {position}) must be Tensor, "
                        f"not {type(value).__name__}")


def _same_pads(in_size, k, s, d):
    """TensorFlow's 'same': output = ceil(in / stride), smaller half of the padding before."""
    out = (in_size + s - 1) // s
    total = max((out - 1) * s + (k - 1) * d + 1 - in_size, 0)
    return [total // 2, total - total // 2]


# Padding modes that, in place of 'causal' padding before the first frame, read future
# frames: reflect reads frames 1, 2, ... and circular the last ones. (zeros reads nothing,
# replicate repeats frame 0, the present.)
FUTURE_MODES = ("reflect", "circular")


def is_causal(padding):
    """Whether a padding spec pads time causally: 'causal', or ('causal', h, w)."""
    if isinstance(padding, str):
        return padding == "causal"
    return (isinstance(padding, (list, tuple)) and len(padding) == 3
            and isinstance(padding[0], str) and padding[0] == "causal")


def resolve_padding_mode(padding_mode):
    """The operator's padding_mode string from conv3d's: a mode name (every dimension), or
    3 names in (depth, height, width) order, as a list, a tuple or a comma-joined string.
    Three equal names become the one name (the operator's original form). Unknown names are
    left to the operator's checker, which lists the modes."""
    if isinstance(padding_mode, str):
        modes = padding_mode.split(",")
    elif isinstance(padding_mode, (list, tuple)) and all(isinstance(m, str)
                                                         for m in padding_mode):
        modes = list(padding_mode)
        if len(modes) != 3:
            raise ValueError(
                "padding_mode must be one mode or 3 modes (depth, height, width), but got "
                f"padding_mode={padding_mode!r} ({len(modes)} modes)")
    else:
        raise TypeError("conv3d(): argument 'padding_mode' must be a str or a tuple of 3 "
                        f"str, but got padding_mode={padding_mode!r}")
    return modes[0] if len(modes) == 3 and len(set(modes)) == 1 else ",".join(modes)


def check_causal(padding, padding_mode):
    # (an unknown mode is left to the operator's checker, which names the modes)
    if not is_causal(padding):
        return
    time_mode = resolve_padding_mode(padding_mode).split(",")[0]
    if time_mode in FUTURE_MODES:
        raise ValueError(
            f"padding={padding!r} with padding_mode={padding_mode!r} would let the first "
            f"output frames read future input frames ({time_mode!r} in time); use 'zeros' or "
            "'replicate' for the depth (time) dimension")


def resolve_padding(padding, kernel, stride, dilation, in_size):
    """Turns a padding spec into (d_before, d_after, h_before, h_after, w_before, w_after).

    padding: an integer, 1 or 3 integers, 3 (before, after) pairs (integers and pairs may
    mix; an integer is what F.conv3d takes as one: int, numpy integer, integer tensor of one
    element), 'valid',
    'same' (any stride, TensorFlow rule) or 'causal' (depth padded only before, by
    (kd - 1) * dilation_d; height and width as 'same'). Among 3 entries, 'same' and 'valid'
    may stand for one dimension and 'causal' for the depth: ('causal', 1, 1) pads time
    causally and height and width by 1 on each side (HunyuanVideo's downsamplers),
    ('causal', (0, 1), 'same') mixes pairs and rules. kernel, stride, dilation and in_size
    are the three spatial values each.
    """
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise ValueError(
                f"Invalid padding string {padding!r}, should be one of {PADDING_STRINGS}"
            )
        if padding == "valid":
            return [0] * 6
        if min(stride) <= 0 or len(kernel) != 3 or len(in_size) != 3:
            return [0] * 6  # the operator's checker reports what is wrong
        pads = []
        for i in range(3):
            pads += _same_pads(in_size[i], kernel[i], stride[i], dilation[i])
        if padding == "causal":
            pads[0], pads[1] = (kernel[0] - 1) * dilation[0], 0
        return pads
    expected = "an int, a string, or a tuple of ints or of (before, after) pairs"
    if not isinstance(padding, (list, tuple)):
        return [_as_int("padding", padding, padding, expected)] * 6
    entries = list(padding)
    if len(entries) == 1 and not isinstance(entries[0], (list, tuple)):
        entries *= 3  # F.conv3d expands padding=[1]
    if len(entries) != 3:
        # (a RuntimeError with F.conv3d's words)
        raise RuntimeError(
            "expected padding to be a single integer value or a list of 3 values to match the "
            "convolution dimensions (or 3 (before, after) pairs), but got "
            f"padding={list(padding)!r}"
        )
    pads = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            pads += _dimension_rule(e, i, padding, kernel, stride, dilation, in_size)
            continue
        if not isinstance(e, (list, tuple)):
            pads += [_as_int("padding", padding, e, expected)] * 2
            continue
        if len(e) != 2:
            raise ValueError(
                f"each padding entry must be an int or a (before, after) pair of ints, "
                f"but got {e!r} in padding={padding!r}"
            )
        pads += [_as_int("padding", padding, v, expected) for v in e]
    return pads


def _dimension_rule(rule, i, padding, kernel, stride, dilation, in_size):
    """(before, after) for dimension i under a string entry of a 3-entry padding."""
    if rule not in PADDING_STRINGS or (rule == "causal" and i != 0):
        raise ValueError(
            f"a string entry of padding must be 'same' or 'valid' (or 'causal' for the depth, "
            f"the first entry), but got {rule!r} at position {i} in padding={padding!r}")
    if rule == "valid":
        return [0, 0]
    if min(stride) <= 0 or len(kernel) != 3 or len(in_size) != 3:
        return [0, 0]  # the operator's checker reports what is wrong
    if rule == "causal":
        return [(kernel[0] - 1) * dilation[0], 0]
    return _same_pads(in_size[i], kernel[i], stride[i], dilation[i])


DATA_FORMATS = ("NCDHW", "NDHWC")
CONV_MODES = ("cross_correlation", "convolution")


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", *, data_format="NCDHW", conv_mode="cross_correlation"):
    """F.conv3d with torchconv3d's kernels, plus padding_mode and the padding extensions.

    input: (N, C_in, D, H, W) or unbatched (C_in, D, H, W); any strides. With
    data_format='NDHWC' (TensorFlow's layout) it is (N, D, H, W, C_in) or (D, H, W, C_in)
    and so is the result: the kernels read it in place (no transposed copy).
    weight: (C_out, C_in / groups, kD, kH, kW), or MegEngine's grouped layout
    (groups, C_out / groups, C_in / groups, kD, kH, kW). bias: (C_out,), MegEngine's
    (1, C_out, 1, 1, 1), or None.
    padding: see resolve_padding. padding_mode: 'zeros', 'reflect', 'replicate' or
    'circular', or one per dimension as a tuple (depth, height, width), e.g.
    ('replicate', 'zeros', 'zeros') for a causal video conv that repeats the first frame in
    time; applied inside the kernels (no padded copy).
    conv_mode: 'cross_correlation' (what every framework's conv computes) or 'convolution'
    (MegEngine's name for the same with the kernel flipped in D, H and W).
    Returns (N, C_out, D_out, H_out, W_out), channels_last_3d exactly when nn.Conv3d's
    output would be (torchconv3d.ops.torch_formats).
    """
    # The __torch_function__ protocol, as torch.nn.functional's Python functions follow it:
    # torch.fx's Proxy (symbolic_trace, FX quantization) then records one call to conv3d,
    # a leaf, instead of tracing into its Python, and tensor subclasses can override it.
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            conv3d, (input, weight, bias), input, weight, bias=bias, stride=stride,
            padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode,
            data_format=data_format, conv_mode=conv_mode)
    _check_tensor("input", 1, input)
    _check_tensor("weight", 2, weight)
    _check_tensor("bias", 3, bias, optional=True)
    groups = _as_int("groups", groups, groups, "an int")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, but got {data_format!r}")
    check_causal(padding, padding_mode)
    padding_mode = resolve_padding_mode(padding_mode)
    weight, bias = megengine_to_torch(weight, bias, groups)
    if conv_mode == "convolution":
        weight = weight.flip(-3, -2, -1)
    elif conv_mode != "cross_correlation":
        raise ValueError(f"conv_mode must be one of {CONV_MODES}, but got {conv_mode!r}")
    ndhwc = data_format == "NDHWC"
    if ndhwc:
        if input.dim() not in (4, 5):
            raise ValueError(
                f"data_format='NDHWC' expects a 5-D (N, D, H, W, C) or 4-D (D, H, W, C) "
                f"input, but got input of size {list(input.shape)}")
        unbatched = input.dim() == 4
        # A channels_last_3d view (the batch dimension makes it one when unbatched): the
        # kernels read it as is.
        # (dims counted from the front: the TorchScript ONNX exporter writes movedim(-1, 1)
        # as a Transpose with a negative perm, which ONNX refuses)
        input = (input.unsqueeze(0) if unbatched else input).movedim(4, 1)
    stride, pads, dilation = resolve_args(input, weight, stride, padding, dilation)
    out = _forward(input, weight, bias, stride, pads, dilation, groups, padding_mode)
    if ndhwc:
        # A contiguous NDHWC result, as TensorFlow's: free where the operator's output is
        # channels_last_3d (nn.Conv3d's rule for this dtype); a copy where it is not.
        out = out.movedim(1, 4).contiguous()
        return out.squeeze(0) if unbatched else out
    return out


def megengine_to_torch(weight, bias, groups):
    """Views of MegEngine-layout parameters in torch's layout; torch-layout ones as they are.

    weight (groups, C_out / groups, C_in / groups, kD, kH, kW) -> (C_out, C_in / groups,
    kD, kH, kW); bias (1, C_out, 1, 1, 1) -> (C_out,).
    """
    if weight.dim() == 6:
        if weight.shape[0] != groups:
            raise ValueError(
                f"a grouped (MegEngine-layout) weight of size {list(weight.shape)} has "
                f"{weight.shape[0]} groups, but groups={groups}")
        weight = weight.flatten(0, 1)
    if bias is not None and bias.dim() == 5:
        if list(bias.shape) != [1, bias.shape[1], 1, 1, 1]:
            raise ValueError(
                f"a 5-D (MegEngine-layout) bias must have size (1, C_out, 1, 1, 1), but got "
                f"{list(bias.shape)}")
        bias = bias.flatten()
    return weight, bias


_INT64 = (-(2**63), 2**63 - 1)


def _check_int64(name, values):
    """The operator takes int64 lists: a value past them gets a message naming it here
    (the dispatcher's own says only 'Expected a value of type List[int]')."""
    for v in values:
        if not _INT64[0] <= v <= _INT64[1]:
            raise ValueError(f"{name} values must fit in 64 bits, but got {name}={values}")
    return values


def resolve_args(input, weight, stride, padding, dilation):
    """The operator's (stride[3], padding[6], dilation[3]) from conv3d's arguments."""
    stride = _check_int64("stride", _triple("stride", stride))
    dilation = _check_int64("dilation", _triple("dilation", dilation))
    spatial = list(input.shape[-3:]) if input.dim() in (4, 5) else []
    kernel = list(weight.shape[2:]) if weight.dim() == 5 else []
    pads = _check_int64("padding", resolve_padding(padding, kernel, stride, dilation, spatial))
    return stride, pads, dilation


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1):
    """F.conv_transpose3d (same signature and semantics) with torchconv3d's kernels: the
    transposed convolution runs as our convolution's grad_input pass, and its gradients as
    our forward (grad_input) and grad_weight passes.

    input: (N, C_in, D, H, W) or unbatched (C_in, D, H, W); any strides. weight:
    (C_in, C_out / groups, kD, kH, kW). bias: (C_out,) or None. stride, padding,
    output_padding, dilation: an int or 1 or 3 of them. Returns (N, C_out, D_out, H_out,
    W_out), D_out = (D - 1) * stride - 2 * padding + dilation * (kD - 1) + output_padding + 1,
    channels_last_3d exactly when F.conv_transpose3d's would be.
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            conv_transpose3d, (input, weight, bias), input, weight, bias=bias, stride=stride,
            padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    _check_tensor("input", 1, input)
    _check_tensor("weight", 2, weight)
    _check_tensor("bias", 3, bias, optional=True)
    groups = _as_int("groups", groups, groups, "an int")
    args = [_check_int64(name, _triple(name, value)) for name, value in (
        ("stride", stride), ("padding", padding), ("output_padding", output_padding),
        ("dilation", dilation))]
    return _transpose_forward(input, weight, bias, *args, groups)
