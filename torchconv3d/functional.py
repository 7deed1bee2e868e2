"""conv3d: F.conv3d plus padding_mode and the padding extensions."""
from .ops import forward_op

PADDING_STRINGS = ("valid", "same", "causal")


def _triple(value):
    if isinstance(value, int):
        return [value] * 3
    return [int(v) for v in value]  # length is checked by the operator


def _same_pads(in_size, k, s, d):
    """TensorFlow's 'same': output = ceil(in / stride), smaller half of the padding before."""
    out = (in_size + s - 1) // s
    total = max((out - 1) * s + (k - 1) * d + 1 - in_size, 0)
    return [total // 2, total - total // 2]


def resolve_padding(padding, kernel, stride, dilation, in_size):
    """Turns a padding spec into (d_before, d_after, h_before, h_after, w_before, w_after).

    padding: int, 3 ints, 3 (before, after) pairs (ints and pairs may mix), 'valid',
    'same' (any stride, TensorFlow rule) or 'causal' (depth padded only before, by
    (kd - 1) * dilation_d; height and width as 'same'). kernel, stride, dilation and
    in_size are the three spatial values each.
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
    if isinstance(padding, int):
        return [padding] * 6
    entries = list(padding)
    if len(entries) != 3:
        raise ValueError(
            "padding must be an int, 3 values or 3 (before, after) pairs for (D, H, W), "
            f"but got padding={padding!r}"
        )
    pads = []
    for e in entries:
        if isinstance(e, int):
            pads += [e, e]
        else:
            pair = list(e)
            if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
                raise ValueError(
                    f"each padding entry must be an int or a (before, after) pair of ints, "
                    f"but got {e!r} in padding={padding!r}"
                )
            pads += pair
    return pads


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    """F.conv3d with torchconv3d's kernels, plus padding_mode and the padding extensions.

    input: (N, C_in, D, H, W) or unbatched (C_in, D, H, W); any strides.
    weight: (C_out, C_in / groups, kD, kH, kW). bias: (C_out,) or None.
    padding: see resolve_padding. padding_mode: 'zeros', 'reflect', 'replicate' or
    'circular', applied inside the kernels (no padded copy).
    Returns (N, C_out, D_out, H_out, W_out), channels_last_3d when input or weight is.
    """
    stride, pads, dilation = resolve_args(input, weight, stride, padding, dilation)
    return forward_op(input, weight, bias, stride, pads, dilation, groups, padding_mode)


def resolve_args(input, weight, stride, padding, dilation):
    """The operator's (stride[3], padding[6], dilation[3]) from conv3d's arguments."""
    stride = _triple(stride)
    dilation = _triple(dilation)
    spatial = list(input.shape[-3:]) if input.dim() in (4, 5) else []
    kernel = list(weight.shape[2:]) if weight.dim() == 5 else []
    return stride, resolve_padding(padding, kernel, stride, dilation, spatial), dilation
