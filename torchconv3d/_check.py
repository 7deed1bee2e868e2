"""csrc/check.cpp's rules for the fake (meta) kernels, which never reach C++.

check.cpp is the one argument checker; this is its mirror, rule for rule and message for
message, written with torch._check so that traced (symbolic) sizes become guards rather than
errors. tests/test_errors.py runs every rejected call both ways and requires the same
exception type and text, so the two cannot drift apart unseen.
"""
import torch
from torch.fx.experimental.symbolic_shapes import statically_known_false

_MAX_PADDING = 2**62 - 1
_INT64_MAX = 2**63 - 1
_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_MODES = ("zeros", "reflect", "replicate", "circular")

# c10's names for scalar types and layouts, as check.cpp's messages print them.
_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short",
    torch.int32: "Int", torch.int64: "Long", torch.bool: "Bool", torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}
_LAYOUT_NAMES = {torch.sparse_coo: "Sparse", torch.sparse_csr: "SparseCsr",
                 torch.sparse_csc: "SparseCsc", torch.sparse_bsr: "SparseBsr",
                 torch.sparse_bsc: "SparseBsc", torch._mkldnn: "Mkldnn"}


def _dtype(t):
    return _DTYPE_NAMES.get(t.dtype, str(t.dtype))


def _sizes(t):
    return str(list(t.shape))


def _dims(a):
    return f"({a[0]} x {a[1]} x {a[2]})"


def _check(cond, message):
    torch._check(cond, lambda: message)


def _check_value(cond, message):
    torch._check_value(cond, lambda: message)


def _check_fits(cond, message):
    """An int64-overflow rule (a ValueError). On symbolic sizes it fails only where it is
    false for every size, adding no guard: one would bound each dynamic dimension (and
    torch.export refuses a Dim without a max), and check.cpp runs it again on the real sizes
    before any kernel does."""
    if isinstance(cond, bool):
        _check_value(cond, message)
    elif statically_known_false(cond):
        raise ValueError(message)


def padding_modes(mode):
    """The operator's padding_mode string as its three (depth, height, width) modes: one
    name for all three, or three joined by commas (check.cpp's parse_padding_mode)."""
    names = mode.split(",")
    if len(names) == 1:
        names *= 3
    _check_value(len(names) == 3 and all(n in _MODES for n in names),
                 "padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', or "
                 "three of them (depth, height, width) joined by commas, but got "
                 f"padding_mode='{mode}'")
    return names


def _tensor_kinds(input, weight, bias, op, weight_dims):
    """check.cpp's check_tensor_kinds: ranks, dtypes, devices, layouts."""
    _check(input.dim() in (4, 5), f"Expected 4D (unbatched) or 5D (batched) input to {op}, but "
           f"got input of size: {_sizes(input)}")
    _check(weight.dim() == 5, f"Expected 5D weight {weight_dims}, "
           f"but got weight of size {_sizes(weight)}")
    _check(input.dtype == weight.dtype,
           f"Input type ({_dtype(input)}) and weight type ({_dtype(weight)}) should be the same")
    _check(input.device == weight.device, "Expected input and weight on the same device, but "
           f"got input on {input.device} and weight on {weight.device}")
    if bias is not None:
        _check(input.dtype == bias.dtype,
               f"Input type ({_dtype(input)}) and bias type ({_dtype(bias)}) should be the same")
        _check(input.device == bias.device, "Expected input and bias on the same device, but "
               f"got input on {input.device} and bias on {bias.device}")
    _check(input.dtype in _SUPPORTED, "torchconv3d supports float32, float64, bfloat16 and "
           "float16 tensors (not integer or complex ones), but got input of dtype "
           f"{_dtype(input)}")
    for t in (input, weight):
        _check(t.layout == torch.strided, "torchconv3d needs strided (dense) tensors, got "
               f"{_LAYOUT_NAMES.get(t.layout, str(t.layout))}")


def _grad_output(grad_output, input, expected):
    """check.cpp's check_grad_output."""
    _check(list(grad_output.shape) == expected, f"Expected grad_output of size {expected} "
           f"(the output of this convolution), but got {_sizes(grad_output)}")
    _check(grad_output.dtype == input.dtype, f"grad_output type ({_dtype(grad_output)}) and "
           f"input type ({_dtype(input)}) should be the same")
    _check(grad_output.device == input.device, "Expected grad_output and input on the same "
           f"device, but got grad_output on {grad_output.device} and input on {input.device}")


def _stride_dilation(stride, dilation, i):
    """Dimension i's stride and dilation, as both convolutions check them."""
    _check(stride[i] > 0, f"non-positive stride is not supported, got stride={stride}")
    _check(dilation[i] > 0, f"dilation should be greater than zero, but got dilation={dilation}")


def _weight_groups(weight, groups):
    """The weight's dimension 0 (conv3d: output channels; transposed: input channels) must
    split into the groups."""
    _check(weight.shape[0] >= groups, f"Given groups={groups}, expected weight to be at least "
           f"{groups} at dimension 0, but got weight of size {_sizes(weight)} instead")
    _check(weight.shape[0] % groups == 0, f"Given groups={groups}, expected weight to be "
           f"divisible by {groups} at dimension 0, but got weight of size {_sizes(weight)} "
           "instead")


def conv3d_args(input, weight, bias, grad_output, stride, padding, dilation, groups, mode):
    """Raises what check_conv3d_args raises for these arguments; returns the output's
    spatial size."""
    modes = padding_modes(mode)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    for name, values in (("stride", stride), ("dilation", dilation)):
        _check(len(values) == 3, f"expected {name} to be a single integer value or a list of 3 "
               f"values to match the convolution dimensions, but got {name}={values}")
    _check(len(padding) == 6, "expected padding to have 6 values (d_before, d_after, h_before, "
           f"h_after, w_before, w_after), but got padding={padding}")
    _check(groups > 0, f"non-positive groups is not supported, got groups={groups}")
    for i in range(3):
        _stride_dilation(stride, dilation, i)
        _check(padding[2 * i] >= 0 and padding[2 * i + 1] >= 0,
               f"negative padding is not supported, got padding={padding}")
        for pad in padding[2 * i:2 * i + 2]:
            _check_fits(pad <= _MAX_PADDING, f"padding must be at most 2^62 - 1, got "
                        f"padding={padding}")

    _tensor_kinds(input, weight, bias, "conv3d",
                  "(out_channels, in_channels/groups, kD, kH, kW)")

    batched = input.dim() == 5
    batch = input.shape[0] if batched else 1
    in_channels = input.shape[1 if batched else 0]
    out_channels = weight.shape[0]
    _weight_groups(weight, groups)
    batched_sizes = _sizes(input) if batched else str([1] + list(input.shape))
    _check(in_channels == weight.shape[1] * groups,
           f"Given groups={groups}, weight of size {_sizes(weight)}, expected input"
           f"{batched_sizes} to have {weight.shape[1] * groups} channels, but got "
           f"{in_channels} channels instead")
    if bias is not None:
        _check(bias.dim() == 1 and bias.shape[0] == out_channels,
               f"Given weight of size {_sizes(weight)}, expected bias to be 1-dimensional with "
               f"{out_channels} elements, but got bias of size {_sizes(bias)} instead")

    spatial = list(input.shape[-3:])
    kernel = list(weight.shape[2:])
    padded, dilated = [], []
    for i in range(3):
        _check(kernel[i] > 0, f"kernel size must be positive, but got weight of size "
               f"{_sizes(weight)}")
        padded.append(spatial[i] + padding[2 * i] + padding[2 * i + 1])
        _check_fits(padded[i] <= _INT64_MAX, f"padding={padding} with input of size "
                    f"{_sizes(input)} gives a padded size past 2^63 - 1")
        dilated.append(dilation[i] * (kernel[i] - 1) + 1)
        _check_fits(dilated[i] <= _INT64_MAX, f"dilation={dilation} with kernel of size "
                    f"{_sizes(weight)} gives a dilated kernel past 2^63 - 1")
    out = []
    for i in range(3):
        _check(padded[i] >= dilated[i], f"Calculated padded input size per channel: "
               f"{_dims(padded)}. Kernel size: {_dims(dilated)}. Kernel size can't be greater "
               "than actual input size")
        out.append((padded[i] - dilated[i]) // stride[i] + 1)
    numel = batch
    for n in [out_channels] + out:
        numel = numel * n
        _check_fits(numel <= _INT64_MAX, f"the output of size ({batch}, {out_channels}, "
                    f"{out[0]}, {out[1]}, {out[2]}) has more than 2^63 - 1 elements")

    _check(batch == 0 or in_channels == 0 or all(n > 0 for n in spatial),
           "Only zero batch or zero channel inputs are supported, but got input of size "
           f"{_sizes(input)} (an empty depth, height or width)")
    for i, name in enumerate(("depth", "height", "width")):
        before, after, n = padding[2 * i], padding[2 * i + 1], spatial[i]
        if before == 0 and after == 0:
            continue
        if modes[i] == "reflect":
            _check(before < n and after < n, "reflect padding must be smaller than the input, "
                   f"but got padding ({before}, {after}) for the {name} of input {_sizes(input)}")
        elif modes[i] == "replicate":
            _check(n > 0, f"replicate padding needs a non-empty {name}, but got input "
                   f"{_sizes(input)}")
        elif modes[i] == "circular":
            _check(before <= n and after <= n, "circular padding wraps around more than once: "
                   f"padding ({before}, {after}) for the {name} of input {_sizes(input)}")

    if grad_output is not None:
        expected = [batch, out_channels] + out if batched else [out_channels] + out
        _grad_output(grad_output, input, expected)
    return out


def stream_head(head, input, padding):
    """Raises what check_stream_head raises."""
    _check(input.dim() in (4, 5), "Expected 4D (unbatched) or 5D (batched) input to conv3d "
           f"stream, but got input of size: {_sizes(input)}")
    d = input.dim() - 3

    def other_than_depth(t):
        return list(t.shape[:d]) + list(t.shape[d + 1:])

    _check_value(head.dim() == input.dim() and other_than_depth(head) == other_than_depth(input),
                 f"conv3d stream: head of size {_sizes(head)} does not fit input of size "
                 f"{_sizes(input)}: they must differ only in depth (dimension {d})")
    _check_value(head.dtype == input.dtype and head.device == input.device,
                 f"conv3d stream: head ({_dtype(head)} on {head.device}) must match input "
                 f"({_dtype(input)} on {input.device})")
    _check_value(len(padding) == 6 and padding[0] == 0 and padding[1] == 0,
                 "conv3d stream: the head stands for the depth padding, which must be (0, 0), "
                 f"but got padding={list(padding)}")


def output_mask(mask):
    mask = list(mask)
    _check(len(mask) == 3, "expected output_mask to have 3 values (grad_input, grad_weight, "
           f"grad_bias), but got output_mask={mask}")


def conv_transpose3d_args(input, weight, bias, grad_output, stride, padding, output_padding,
                          dilation, groups):
    """Raises what check_conv_transpose3d_args raises; returns the output's spatial size."""
    stride, padding = list(stride), list(padding)
    output_padding, dilation = list(output_padding), list(dilation)
    for name, values in (("stride", stride), ("padding", padding),
                         ("output_padding", output_padding), ("dilation", dilation)):
        _check(len(values) == 3, f"expected {name} to be a single integer value or a list of 3 "
               f"values to match the convolution dimensions, but got {name}={values}")
    _check(groups > 0, f"non-positive groups is not supported, got groups={groups}")
    for i in range(3):
        _stride_dilation(stride, dilation, i)
        _check(padding[i] >= 0, f"negative padding is not supported, got padding={padding}")
        _check(output_padding[i] >= 0, "negative output_padding is not supported, got "
               f"output_padding={output_padding}")
        _check_fits(padding[i] <= _MAX_PADDING, f"padding must be at most 2^62 - 1, got "
                    f"padding={padding}")
        _check(output_padding[i] < stride[i] or output_padding[i] < dilation[i],
               "output padding must be smaller than either stride or dilation, but got "
               f"output_padding={output_padding}, stride={stride}, dilation={dilation}")

    _tensor_kinds(input, weight, bias, "conv_transpose3d",
                  "(in_channels, out_channels/groups, kD, kH, kW)")
    batched = input.dim() == 5
    batch = input.shape[0] if batched else 1
    in_channels = input.shape[1 if batched else 0]
    _weight_groups(weight, groups)
    batched_sizes = _sizes(input) if batched else str([1] + list(input.shape))
    _check(in_channels == weight.shape[0],
           f"Given transposed=1, weight of size {_sizes(weight)}, expected input"
           f"{batched_sizes} to have {weight.shape[0]} channels, but got {in_channels} "
           "channels instead")
    out_channels = weight.shape[1] * groups
    _check_fits(out_channels <= _INT64_MAX, f"weight of size {_sizes(weight)} with "
                f"groups={groups} gives more than 2^63 - 1 output channels")
    if bias is not None:
        _check(bias.dim() == 1 and bias.shape[0] == out_channels,
               f"Given transposed=1, weight of size {_sizes(weight)}, expected bias to be "
               f"1-dimensional with {out_channels} elements, but got bias of size "
               f"{_sizes(bias)} instead")
    spatial = list(input.shape[-3:])
    kernel = list(weight.shape[2:])
    for i in range(3):
        _check(kernel[i] > 0, f"kernel size must be positive, but got weight of size "
               f"{_sizes(weight)}")
    _check(batch == 0 or in_channels == 0 or all(n > 0 for n in spatial),
           "Only zero batch or zero channel inputs are supported, but got input of size "
           f"{_sizes(input)} (an empty depth, height or width)")
    out = [(spatial[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1)
           + output_padding[i] + 1 for i in range(3)]
    for i in range(3):
        _check_fits(out[i] <= _INT64_MAX, f"stride={stride}, dilation={dilation} with input "
                    f"of size {_sizes(input)} and weight of size {_sizes(weight)} give an "
                    "output size past 2^63 - 1")
    _check(out[0] > 0 and out[1] > 0 and out[2] > 0, f"Given input size per channel: "
           f"{_dims(spatial)}. Calculated output size per channel: {_dims(out)}. Output size "
           "is too small")
    numel = batch
    for n in [out_channels] + out:
        numel = numel * n
        _check_fits(numel <= _INT64_MAX, f"the output of size ({batch}, {out_channels}, "
                    f"{out[0]}, {out[1]}, {out[2]}) has more than 2^63 - 1 elements")
    if grad_output is not None:
        expected = [batch, out_channels] + out if batched else [out_channels] + out
        _grad_output(grad_output, input, expected)
    return out
