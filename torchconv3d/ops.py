"""Fake kernels and autograd for the torchconv3d operators.

torch.ops.torchconv3d.conv3d_forward(input, weight, bias, stride[3], padding[6],
    dilation[3], groups, padding_mode) -> output
torch.ops.torchconv3d.conv3d_backward(grad_output, input, weight, stride[3], padding[6],
    dilation[3], groups, padding_mode, output_mask[3]) -> (grad_input, grad_weight, grad_bias)

torch.ops.torchconv3d.conv_transpose3d_forward(input, weight, bias, stride[3], padding[3],
    output_padding[3], dilation[3], groups) -> output
torch.ops.torchconv3d.conv_transpose3d_backward(grad_output, input, weight, stride[3],
    padding[3], output_padding[3], dilation[3], groups, output_mask[3])
    -> (grad_input, grad_weight, grad_bias)

torch.ops.torchconv3d.conv3d_stream_forward(head, input, weight, bias, stride[3], padding[6],
    dilation[3], groups, padding_mode) -> output
torch.ops.torchconv3d.conv3d_stream_backward(grad_output, head, input, weight, stride[3],
    padding[6], dilation[3], groups, padding_mode, output_mask[3])
    -> (grad_volume, grad_weight, grad_bias)
conv3d over torch.cat([head, input], 2) with depth padding (0, 0), the volume read in place
(streaming.py: a cache and its chunk); grad_volume is the gradient of that whole volume.

conv3d's padding is (d_before, d_after, h_before, h_after, w_before, w_after); the
transposed operators take nn.ConvTranspose3d's (symmetric) padding and output_padding.
Gradients that output_mask does not ask for come back as None.

Argument checking lives in C++ (csrc/check.cpp) and runs before any kernel; the fake
kernels here run its mirror (_check.py), then compute shapes and memory formats as
csrc/ops.cpp does.
"""
import contextlib
import sys

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as _forward_ad
from torch._functorch.utils import enable_single_level_autograd_function
from torch._prims_common import suggest_memory_format
from torch.fx.experimental.symbolic_shapes import guard_or_false

from . import _check, _loader

_loader.load()

forward_op = torch.ops.torchconv3d.conv3d_forward
backward_op = torch.ops.torchconv3d.conv3d_backward
transpose_forward_op = torch.ops.torchconv3d.conv_transpose3d_forward
transpose_backward_op = torch.ops.torchconv3d.conv_transpose3d_backward
stream_forward_op = torch.ops.torchconv3d.conv3d_stream_forward
stream_backward_op = torch.ops.torchconv3d.conv3d_stream_backward


def output_size(in_size, kernel, stride, padding, dilation):
    """Spatial output size, as csrc/check.cpp computes it."""
    return [
        (in_size[i] + padding[2 * i] + padding[2 * i + 1] - dilation[i] * (kernel[i] - 1) - 1)
        // stride[i]
        + 1
        for i in range(3)
    ]


def _output_shape(input, weight, stride, padding, dilation):
    """The output's shape: (N, C_out, D, H, W), or (C_out, D, H, W) for an unbatched input."""
    spatial = output_size(input.shape[-3:], weight.shape[2:], stride, padding, dilation)
    return list(input.shape[:-4]) + [weight.shape[0]] + spatial


def _batched(t):
    return t.unsqueeze(0) if t.dim() == 4 else t


def _empty_like_format(shape, like, fmt):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _mkldnn_supports(dtype):
    """csrc/ops.cpp's mkldnn_supports, asked once (the CPU does not change)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
            torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}.get(dtype)


_MKLDNN_HALF = {dtype: _mkldnn_supports(dtype) for dtype in (torch.bfloat16, torch.float16)}


def _torch_uses_channels_last_backend(x, weight, stride, padding, dilation, groups, mode):
    """csrc/ops.cpp's torch_uses_channels_last_backend, condition for condition. Sizes
    come last in each disjunction: with symbolic sizes, a guard is added only where the
    answer depends on them."""
    if guard_or_false(x.shape[0] == 0) or guard_or_false(x.shape[1] == 0):
        return False
    if x.dtype == torch.float64:
        return False
    if x.device.type == "cuda":
        return torch.backends.cudnn.enabled and torch.backends.cudnn.is_available()
    if (x.device.type != "cpu" or not torch.backends.mkldnn.is_available()
            or not torch.backends.mkldnn.enabled):
        return False
    if x.dtype in _MKLDNN_HALF:
        return _MKLDNN_HALF[x.dtype]
    if x.dtype != torch.float32:
        return False
    pads = mode != "zeros"
    n, c = x.shape[0], x.shape[1]
    d = x.shape[2] + (padding[0] + padding[1] if pads else 0)
    h = x.shape[3] + (padding[2] + padding[3] if pads else 0)
    kh, kw = weight.shape[3], weight.shape[4]
    return ((any(v != 1 for v in stride) or any(v != 1 for v in dilation) or kw != 1
             or kh != 1 or torch.get_num_threads() > 1 or n >= 16)
            and (groups > 1 or (kw > 3 and kh > 3) or n > 1 or n * c * d * h > 20480))


def formats_mode(padding_mode):
    """csrc/ops.cpp's formats_mode: the one mode whose nn.Conv3d layouts per-dimension modes
    follow (circular, else any other non-zero mode, else zeros)."""
    modes = _check.padding_modes(padding_mode)
    if "circular" in modes:
        return "circular"
    return next((m for m in modes if m != "zeros"), "zeros")


def torch_formats(x, weight, stride, padding, dilation, groups, mode):
    """csrc/ops.cpp's torch_formats: nn.Conv3d's (output, grad_input, grad_weight) memory
    formats for the batched input x."""
    mode = formats_mode(mode)
    cl, contiguous = torch.channels_last_3d, torch.contiguous_format
    contiguous_copy = mode == "circular" or (mode != "zeros" and x.device.type == "cuda")
    input_cl = suggest_memory_format(x) == cl and not contiguous_copy
    conv = (cl if _torch_uses_channels_last_backend(x, weight, stride, padding, dilation,
                                                    groups, mode)
            and (input_cl or suggest_memory_format(weight) == cl) else contiguous)
    grad_input = conv
    if contiguous_copy:
        grad_input = contiguous
    elif mode != "zeros":
        grad_input = cl if input_cl else contiguous
    grad_weight = conv
    if (x.device.type == "cuda" and conv == cl and mode == "zeros"
            and x.is_contiguous(memory_format=cl) and suggest_memory_format(x) != cl):
        grad_weight = contiguous  # cuDNN: an unbatched channels_last_3d input (ops.cpp)
    return conv, grad_input, grad_weight


@torch.library.register_fake("torchconv3d::conv3d_forward")
def _forward_fake(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    _check.conv3d_args(input, weight, bias, None, stride, padding, dilation, groups,
                       padding_mode)
    x = _batched(input)
    shape = _output_shape(x, weight, stride, padding, dilation)
    fmt = torch_formats(x, weight, stride, padding, dilation, groups, padding_mode)[0]
    out = _empty_like_format(shape, x, fmt)
    return out.squeeze(0) if input.dim() == 4 else out


@torch.library.register_fake("torchconv3d::conv3d_backward")
def _backward_fake(
    grad_output, input, weight, stride, padding, dilation, groups, padding_mode, output_mask
):
    _check.output_mask(output_mask)
    _check.conv3d_args(input, weight, None, grad_output, stride, padding, dilation, groups,
                       padding_mode)
    grad_input = grad_weight = grad_bias = None
    x = _batched(input)
    _, input_format, weight_format = torch_formats(x, weight, stride, padding, dilation,
                                                   groups, padding_mode)
    if output_mask[0]:
        grad_input = _empty_like_format(x.shape, x, input_format)
        if input.dim() == 4:
            grad_input = grad_input.squeeze(0)
    if output_mask[1]:
        grad_weight = _empty_like_format(weight.shape, weight, weight_format)
    if output_mask[2]:
        grad_bias = grad_output.new_empty((weight.shape[0],))
    return grad_input, grad_weight, grad_bias


def _stream_volume_shape(head, input):
    shape = list(input.shape)
    shape[-3] += head.shape[-3]
    return shape


def _stream_volume(head, input, padding):
    """A tensor of the shape of the volume [head; input], the head checked."""
    _check.stream_head(head, input, padding)
    return input.new_empty(_stream_volume_shape(head, input))


@torch.library.register_fake("torchconv3d::conv3d_stream_forward")
def _stream_forward_fake(head, input, weight, bias, stride, padding, dilation, groups,
                         padding_mode):
    volume = _stream_volume(head, input, padding)
    _check.conv3d_args(volume, weight, bias, None, stride, padding, dilation, groups,
                       padding_mode)
    x, v = _batched(input), _batched(volume)
    shape = _output_shape(v, weight, stride, padding, dilation)
    fmt = torch_formats(x, weight, stride, padding, dilation, groups, padding_mode)[0]
    out = _empty_like_format(shape, x, fmt)
    return out.squeeze(0) if input.dim() == 4 else out


@torch.library.register_fake("torchconv3d::conv3d_stream_backward")
def _stream_backward_fake(grad_output, head, input, weight, stride, padding, dilation, groups,
                          padding_mode, output_mask):
    volume = _stream_volume(head, input, padding)
    grads = _backward_fake(grad_output, volume, weight, stride, padding, dilation, groups,
                           padding_mode, output_mask)
    if grads[0] is None:
        return grads
    x = _batched(input)
    fmt = torch_formats(x, weight, stride, padding, dilation, groups, padding_mode)[1]
    grad_volume = _empty_like_format(_batched(volume).shape, x, fmt)
    return (grad_volume.squeeze(0) if input.dim() == 4 else grad_volume, *grads[1:])


def torch_transpose_format(x, weight, stride, output_padding, dilation, groups):
    """csrc/ops.cpp's torch_transpose_format: nn.ConvTranspose3d's one memory format for its
    output and both gradients (x: the batched input)."""
    if x.device.type == "cpu" and any(op >= s for op, s in zip(output_padding, stride)):
        return torch.contiguous_format
    cl = torch.channels_last_3d
    if (_torch_uses_channels_last_backend(x, weight, stride, [0] * 6, dilation, groups,
                                          "zeros")
            and (suggest_memory_format(x) == cl or suggest_memory_format(weight) == cl)):
        return cl
    return torch.contiguous_format


@torch.library.register_fake("torchconv3d::conv_transpose3d_forward")
def _transpose_forward_fake(input, weight, bias, stride, padding, output_padding, dilation,
                            groups):
    spatial = _check.conv_transpose3d_args(input, weight, bias, None, stride, padding,
                                           output_padding, dilation, groups)
    x = _batched(input)
    fmt = torch_transpose_format(x, weight, stride, output_padding, dilation, groups)
    out = _empty_like_format([x.shape[0], weight.shape[1] * groups] + spatial, x, fmt)
    return out.squeeze(0) if input.dim() == 4 else out


@torch.library.register_fake("torchconv3d::conv_transpose3d_backward")
def _transpose_backward_fake(grad_output, input, weight, stride, padding, output_padding,
                             dilation, groups, output_mask):
    _check.output_mask(output_mask)
    _check.conv_transpose3d_args(input, weight, None, grad_output, stride, padding,
                                 output_padding, dilation, groups)
    x = _batched(input)
    fmt = torch_transpose_format(x, weight, stride, output_padding, dilation, groups)
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_input = _empty_like_format(x.shape, x, fmt)
        if input.dim() == 4:
            grad_input = grad_input.squeeze(0)
    if output_mask[1]:
        grad_weight = _empty_like_format(weight.shape, weight, fmt)
    if output_mask[2]:
        grad_bias = grad_output.new_empty((weight.shape[1] * groups,))
    return grad_input, grad_weight, grad_bias


def _transpose_output_shape(input, weight, stride, padding, output_padding, dilation, groups):
    spatial = [(input.shape[-3 + i] - 1) * stride[i] - 2 * padding[i]
               + dilation[i] * (weight.shape[2 + i] - 1) + output_padding[i] + 1
               for i in range(3)]
    return list(input.shape[:-4]) + [weight.shape[1] * groups] + spatial


# --- autograd -----------------------------------------------------------------------------
# Forward:  y = conv(x, w) + b.  Backward: gx = conv^T(gy, w), gw = corr(x, gy), gb = sum(gy).
# Every map here is linear in each tensor argument, so every derivative of one is again a
# forward or backward call (no new kernel), in reverse mode and forward mode alike:
#   double backward:  d<ggx, gx>/d gy = conv(ggx, w)     d<ggx, gx>/d w = corr(ggx, gy)
#                     d<ggw, gw>/d gy = conv(x, ggw)     d<ggw, gw>/d x = conv^T(gy, ggw)
#                     d<ggb, gb>/d gy = ggb broadcast
#   JVP of forward:   dy = conv(dx, w) + conv(x, dw) + db
#   JVP of backward:  dgx = conv^T(dgy, w) + conv^T(gy, dw)   dgw = corr(x, dgy) + corr(dx, gy)
#                     dgb = sum(dgy)
# torch.library.register_autograd builds an autograd.Function with neither a jvp nor a
# setup_context, so forward-mode AD saw zero tangents and torch.func refused it; these are
# our own Functions, registered as the operators' Autograd kernels.
# The transposed convolution is the same kind of map (bilinear in input and weight, plus a
# per-channel bias), with conv and conv^T trading places: every formula above holds with
# (forward, backward) = (conv_transpose3d_forward, conv_transpose3d_backward), so both
# operator pairs get their Functions from one definition (_bilinear_functions).


def _add(terms):
    """Sum of the tensors in terms (None where there are none)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _bias_term(bias, like):
    """bias (C_out,) broadcast over an output-shaped tensor like."""
    shape = [1] * like.dim()
    shape[-4] = -1
    return bias.reshape(shape).expand_as(like)


@contextlib.contextmanager
def _below_autograd():
    """Context for a Function's forward: the device kernel, with this level's autograd
    done by the Function. Under torch.func, the call goes on to the next transform level
    first, which needs gradients (both modes) on, as the C++ Function.apply turned them
    off: functorch's own autograd.Function support turns them back on the same way."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch._C._AutoDispatchBelowAutograd())
        if torch._C._are_functorch_transforms_active():
            stack.enter_context(torch.enable_grad())
            stack.enter_context(_forward_ad._set_fwd_grad_enabled(True))
        yield


def _bilinear_functions(forward_op, backward_op, output_shape):
    """The autograd.Functions (forward, backward) of an operator pair computing
    y = f(x, w) + b and (gx, gw, gb) = its adjoints, both taking the same five non-tensor
    arguments (args); output_shape(input, weight, *args) is y's shape."""

    class _Forward(torch.autograd.Function):
        @staticmethod
        def forward(input, weight, bias, *args):
            with _below_autograd():
                return forward_op(input, weight, bias, *args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, weight, bias, *args = inputs
            ctx.save_for_backward(input, weight)
            ctx.save_for_forward(input, weight)
            ctx.args = args
            ctx.has_bias = bias is not None

        @staticmethod
        def backward(ctx, grad_output):
            input, weight = ctx.saved_tensors
            mask = [
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2],
            ]
            grads = backward_op(grad_output, input, weight, *ctx.args, mask)
            return (*grads, None, None, None, None, None)

        @staticmethod
        def jvp(ctx, d_input, d_weight, d_bias, *_):
            input, weight = ctx.saved_tensors
            out = None
            if d_input is not None:
                out = forward_op(d_input, weight, None, *ctx.args)
            if d_weight is not None:
                return _add([out, forward_op(input, d_weight, d_bias, *ctx.args)])
            if d_bias is None:
                return out
            if out is None:
                shape = output_shape(input, weight, *ctx.args)
                return d_bias.reshape([-1, 1, 1, 1]).expand(shape).contiguous()
            return out + _bias_term(d_bias, out)

    class _Backward(torch.autograd.Function):
        @staticmethod
        def forward(grad_output, input, weight, *args_and_mask):
            with _below_autograd():
                return backward_op(grad_output, input, weight, *args_and_mask)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, input, weight, *args, mask = inputs
            ctx.save_for_backward(grad_output, input, weight)
            ctx.save_for_forward(grad_output, input, weight)
            ctx.args = args
            ctx.mask = list(mask)

        @staticmethod
        def backward(ctx, ggi, ggw, ggb):
            grad_output, input, weight = ctx.saved_tensors
            args = ctx.args
            need_gy, need_x, need_w = ctx.needs_input_grad[:3]
            g_gy = g_x = g_w = None
            if need_gy:
                terms = []
                if ggi is not None:
                    terms.append(forward_op(ggi, weight, None, *args))
                if ggw is not None:
                    terms.append(forward_op(input, ggw, ggb, *args))
                elif ggb is not None:
                    terms.append(_bias_term(ggb, grad_output))
                g_gy = _add(terms)
            if need_x and ggw is not None:
                g_x = backward_op(grad_output, input, ggw, *args, [True, False, False])[0]
            if need_w and ggi is not None:
                g_w = backward_op(grad_output, ggi, weight, *args, [False, True, False])[1]
            return g_gy, g_x, g_w, None, None, None, None, None, None

        @staticmethod
        def jvp(ctx, d_grad_output, d_input, d_weight, *_):
            grad_output, input, weight = ctx.saved_tensors
            args, mask = ctx.args, ctx.mask
            d_gi = d_gw = d_gb = None
            if d_grad_output is not None:
                d_gi, d_gw, d_gb = backward_op(d_grad_output, input, weight, *args, mask)
            if mask[0] and d_weight is not None:
                d_gi = _add([d_gi, backward_op(grad_output, input, d_weight, *args,
                                               [True, False, False])[0]])
            if mask[1] and d_input is not None:
                d_gw = _add([d_gw, backward_op(grad_output, d_input, weight, *args,
                                               [False, True, False])[1]])
            return d_gi, d_gw, d_gb

    return _Forward, _Backward


def _conv3d_output_shape(input, weight, stride, padding, dilation, groups, padding_mode):
    return _output_shape(input, weight, stride, padding, dilation)


_Forward, _Backward = _bilinear_functions(forward_op, backward_op, _conv3d_output_shape)
_TransposeForward, _TransposeBackward = _bilinear_functions(
    transpose_forward_op, transpose_backward_op, _transpose_output_shape)


class _StreamForward(torch.autograd.Function):
    """conv3d_stream_forward's autograd. It equals conv3d_forward over the volume
    [head; input] with the same arguments, so every derivative is conv3d's: first order
    splits the volume's gradient (one tensor) into the head's and the input's frames, as
    views; a backward that builds a graph (second derivatives, torch.func.grad) goes through
    conv3d_backward over the concatenated volume, whose autograd has them (the one case
    that pays for the copy); tangents go through the stream operator itself."""

    @staticmethod
    def forward(head, input, weight, bias, *args):
        with _below_autograd():
            return stream_forward_op(head, input, weight, bias, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        head, input, weight, bias, *args = inputs
        ctx.save_for_backward(head, input, weight)
        ctx.save_for_forward(head, input, weight)
        ctx.args = args
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_output):
        head, input, weight = ctx.saved_tensors
        need_head, need_input, need_weight, need_bias = ctx.needs_input_grad[:4]
        mask = [need_head or need_input, need_weight, ctx.has_bias and need_bias]
        d = input.dim() - 3
        if torch.is_grad_enabled():
            grad_volume, grad_weight, grad_bias = backward_op(
                grad_output, torch.cat([head, input], d), weight, *ctx.args, mask)
        else:
            grad_volume, grad_weight, grad_bias = stream_backward_op(
                grad_output, head, input, weight, *ctx.args, mask)
        grad_head = grad_input = None
        if grad_volume is not None:
            frames = head.shape[d]
            grad_head = grad_volume.narrow(d, 0, frames) if need_head else None
            grad_input = (grad_volume.narrow(d, frames, input.shape[d]) if need_input
                          else None)
        return grad_head, grad_input, grad_weight, grad_bias, *([None] * len(ctx.args))

    @staticmethod
    def jvp(ctx, d_head, d_input, d_weight, d_bias, *_):
        head, input, weight = ctx.saved_tensors
        out = None
        if d_head is not None or d_input is not None:
            out = stream_forward_op(torch.zeros_like(head) if d_head is None else d_head,
                                    torch.zeros_like(input) if d_input is None else d_input,
                                    weight, None, *ctx.args)
        if d_weight is not None:
            return _add([out, stream_forward_op(head, input, d_weight, d_bias, *ctx.args)])
        if d_bias is None:
            return out
        if out is None:
            volume = torch.empty(_stream_volume_shape(head, input), device="meta")
            shape = _output_shape(volume, weight, *ctx.args[:3])
            return d_bias.reshape([-1, 1, 1, 1]).expand(shape).contiguous()
        return out + _bias_term(d_bias, out)


def _gradient_can_flow(*tensors):
    """Whether a call on these tensors must go through the autograd.Function. Forward mode
    ignores grad mode and requires_grad: a tangent can only exist inside an open dual
    level (torch.func.jvp opens one too)."""
    return (torch.is_grad_enabled() and torch._C._any_requires_grad(*tensors)) or (
        _forward_ad._current_level >= 0
    )


def _autograd_kernel(function, op, n_tensors):
    """The operator's Autograd kernel: the Function when a gradient can flow in either
    mode, else straight to the device kernel (no autograd.Function overhead)."""

    # Function.apply hands the call to functorch's custom_function_call when a torch.func
    # transform is active, which has no kernel below the dispatcher's functorch layer; here
    # functorch has already unwrapped this level's tensors, so the plain C++ apply (what a
    # native op's autograd kernel amounts to) is the right one.
    apply = super(torch.autograd.Function, function).apply

    def kernel(*args):
        if _gradient_can_flow(*args[:n_tensors]):
            with enable_single_level_autograd_function():
                return apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return kernel


_lib = torch.library.Library("torchconv3d", "IMPL")
_lib.impl("conv3d_forward", _autograd_kernel(_Forward, forward_op, 3), "Autograd")
_lib.impl("conv3d_backward", _autograd_kernel(_Backward, backward_op, 3), "Autograd")
_lib.impl("conv3d_stream_forward", _autograd_kernel(_StreamForward, stream_forward_op, 4),
          "Autograd")
_lib.impl("conv_transpose3d_forward",
          _autograd_kernel(_TransposeForward, transpose_forward_op, 3), "Autograd")
_lib.impl("conv_transpose3d_backward",
          _autograd_kernel(_TransposeBackward, transpose_backward_op, 3), "Autograd")


# --- vmap ---------------------------------------------------------------------------------
# The vmapped dimension (size B) is folded into one operator call, never looped over:
#   only activations carry it  -> into the batch (B * N samples);
#   input and weight carry it  -> into the groups (B * groups: sample b's input channels
#                                 meet only sample b's weights);
#   only the weight carries it -> into the output channels (the input is shared);
#   only the bias carries it   -> added to the unbatched convolution.
# The backward op folds into the groups (per-sample weight and bias gradients, the
# per-sample-gradient case of differential privacy), or into the batch when grad_input is
# all it is asked for and the weight is shared. Operands are laid out per sample as the
# operator takes them; an unbatched (C, D, H, W) sample becomes N = 1 and goes back.


def _vmapped_first(t, dim):
    return t if t is None or dim is None else t.movedim(dim, 0)


def _sample(t, dim):
    """One sample of a vmapped operand (for the checker's messages)."""
    return t if t is None or dim is None else t.select(dim, 0)


def _with_n(t, vmapped, unbatched):
    """A (possibly vmapped) per-sample tensor with its N dimension, N = 1 if unbatched."""
    return t.unsqueeze(1 if vmapped else 0) if unbatched else t


def _expand_to(t, vmapped, batch):
    return t if vmapped else t.expand(batch, *t.shape)


def _to_groups(t):
    """(B, N, C, ...) -> (N, B * C, ...): sample b's channels as group block b."""
    return t.movedim(0, 1).flatten(1, 2)


def _forward_vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups,
                  padding_mode):
    B = info.batch_size
    xd, wd, bd = in_dims[:3]
    if B > 0:  # messages name one sample's sizes, not the folded ones
        _check.conv3d_args(_sample(input, xd), _sample(weight, wd), _sample(bias, bd), None,
                           stride, padding, dilation, groups, padding_mode)
    x, w, b = _vmapped_first(input, xd), _vmapped_first(weight, wd), _vmapped_first(bias, bd)
    unbatched = input.dim() - (xd is not None) == 4
    x = _with_n(x, xd is not None, unbatched)
    args = (stride, padding, dilation)
    co = w.shape[-5]

    def add_vmapped_bias(out):  # out: (B, N, C_out, D, H, W)
        return out + b.view(B, 1, co, 1, 1, 1)

    if wd is None and xd is None:
        out = add_vmapped_bias(forward_op(x, w, None, *args, groups, padding_mode).unsqueeze(0))
    elif wd is None:
        n = x.shape[1]
        out = forward_op(x.flatten(0, 1), w, None if bd is not None else b, *args, groups,
                         padding_mode).unflatten(0, (B, n))
        if bd is not None:
            out = add_vmapped_bias(out)
    else:
        if b is not None and bd is None:
            b = b.expand(B, co)
        if xd is None:
            # Output channels ordered (group, sample, channel) so each group's block stays
            # whole: (B, g, co/g, ...) -> (g, B, co/g, ...).
            g = groups

            def by_group(t):
                return t.unflatten(1, (g, co // g)).transpose(0, 1).flatten(0, 2)
            out = forward_op(x, by_group(w), None if b is None else by_group(b), *args, g,
                             padding_mode)
            out = out.unflatten(1, (g, B, co // g)).transpose(1, 2).flatten(2, 3).movedim(1, 0)
        else:
            out = forward_op(_to_groups(x), w.flatten(0, 1),
                             None if b is None else b.flatten(), *args, B * groups,
                             padding_mode)
            out = out.unflatten(1, (B, co)).movedim(1, 0)
    return (out.squeeze(1) if unbatched else out), 0


torch.library.register_vmap("torchconv3d::conv3d_forward", _forward_vmap)


def _backward_vmap(info, in_dims, grad_output, input, weight, stride, padding, dilation,
                   groups, padding_mode, output_mask):
    B = info.batch_size
    gd, xd, wd = in_dims[:3]
    _check.output_mask(output_mask)
    if B > 0:
        _check.conv3d_args(_sample(input, xd), _sample(weight, wd), None,
                           _sample(grad_output, gd), stride, padding, dilation, groups,
                           padding_mode)
    unbatched = input.dim() - (xd is not None) == 4
    gy = _with_n(_vmapped_first(grad_output, gd), gd is not None, unbatched)
    x = _with_n(_vmapped_first(input, xd), xd is not None, unbatched)
    gy, x = _expand_to(gy, gd is not None, B), _expand_to(x, xd is not None, B)
    w = _vmapped_first(weight, wd)
    args = (stride, padding, dilation)
    mask = list(output_mask)
    n, c = x.shape[1], x.shape[2]
    if wd is None and not mask[1] and not mask[2]:
        gi = backward_op(gy.flatten(0, 1), x.flatten(0, 1), w, *args, groups, padding_mode,
                         mask)[0].unflatten(0, (B, n))
        gw = gb = None
    else:
        w = _expand_to(w, wd is not None, B)
        co = w.shape[1]
        gi, gw, gb = backward_op(_to_groups(gy), _to_groups(x), w.flatten(0, 1), *args,
                                 B * groups, padding_mode, mask)
        gi = None if gi is None else gi.unflatten(1, (B, c)).movedim(1, 0)
        gw = None if gw is None else gw.unflatten(0, (B, co))
        gb = None if gb is None else gb.unflatten(0, (B, co))
    if gi is not None and unbatched:
        gi = gi.squeeze(1)
    outs = (gi, gw, gb)
    return outs, tuple(None if t is None else 0 for t in outs)


torch.library.register_vmap("torchconv3d::conv3d_backward", _backward_vmap)


def _vmapped_volume(info, head, hd, input, xd, padding):
    """The volume [head; input] of a vmapped stream call and its in_dim (the stream's rules
    below are conv3d's over it: the copy is what vmap of a stream costs)."""
    if info.batch_size > 0:
        _check.stream_head(_sample(head, hd), _sample(input, xd), padding)
    if hd is None and xd is None:
        return torch.cat([head, input], input.dim() - 3), None
    h = _expand_to(_vmapped_first(head, hd), hd is not None, info.batch_size)
    x = _expand_to(_vmapped_first(input, xd), xd is not None, info.batch_size)
    return torch.cat([h, x], x.dim() - 3), 0


def _stream_forward_vmap(info, in_dims, head, input, weight, bias, stride, padding, dilation,
                         groups, padding_mode):
    volume, vd = _vmapped_volume(info, head, in_dims[0], input, in_dims[1], padding)
    return _forward_vmap(info, (vd, *in_dims[2:]), volume, weight, bias, stride, padding,
                         dilation, groups, padding_mode)


torch.library.register_vmap("torchconv3d::conv3d_stream_forward", _stream_forward_vmap)


def _stream_backward_vmap(info, in_dims, grad_output, head, input, weight, stride, padding,
                          dilation, groups, padding_mode, output_mask):
    volume, vd = _vmapped_volume(info, head, in_dims[1], input, in_dims[2], padding)
    return _backward_vmap(info, (in_dims[0], vd, *in_dims[3:]), grad_output, volume, weight,
                          stride, padding, dilation, groups, padding_mode, output_mask)


torch.library.register_vmap("torchconv3d::conv3d_stream_backward", _stream_backward_vmap)


# --- ONNX ---------------------------------------------------------------------------------
# ONNX has no torchconv3d domain: while torch.onnx exports (either exporter), forward writes
# the convolution as F.pad + F.conv3d, which both exporters turn into ONNX Pad (constant,
# reflect, edge or wrap) and Conv.


def _exporting_to_onnx():
    """torch.onnx.is_in_onnx_export() without its two imports per call (~1.3 us): its two
    flags, read once an export has loaded their modules."""
    dynamo = sys.modules.get("torch.onnx._internal.exporter._flags")
    script = sys.modules.get("torch.onnx._internal.torchscript_exporter._globals")
    return bool((dynamo is not None and dynamo._is_onnx_exporting)
                or (script is not None and script.GLOBALS.in_onnx_export))


def _as_standard_ops(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """conv3d_forward as F.pad + F.conv3d (F.conv3d's own padding where it is zeros on both
    sides), after our checker's rules. (The TorchScript exporter's trace gives sizes as
    tensors, which the rules cannot take; there F.pad's and F.conv3d's own checks run.)"""
    if torch._C._get_tracing_state() is None:
        _check.conv3d_args(input, weight, bias, None, stride, padding, dilation, groups,
                           padding_mode)
    before, after = list(padding[0::2]), list(padding[1::2])
    modes = _check.padding_modes(padding_mode)
    if modes == ["zeros"] * 3 and before == after:
        return F.conv3d(input, weight, bias, stride, before, dilation, groups)
    x = _batched(input)
    # One F.pad per distinct mode, each padding only its dimensions: pads along different
    # dimensions commute (each is an index map, or zeros, along its own axis), so the
    # corners come out as the kernels' per-dimension source_index gives them.
    for mode in dict.fromkeys(modes):
        pads = [0] * 6  # F.pad's order: (w_before, w_after, h_before, h_after, d_...)
        for i in range(3):
            if modes[i] == mode:
                pads[4 - 2 * i], pads[5 - 2 * i] = padding[2 * i], padding[2 * i + 1]
        if any(pads):
            x = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    out = F.conv3d(x, weight, bias, stride, 0, dilation, groups)
    return out.squeeze(0) if input.dim() == 4 else out


_forward_default = forward_op.default


def _plain_eager(input, weight, bias):
    """Whether a call may skip the (Python) Autograd kernel, which would only step aside.

    In eager inference nothing records a gradient, yet the dispatcher still calls the
    Autograd kernel, a Python round trip (~5 us of the ~20 us a call costs). Where no
    gradient can flow, no transform, trace or dispatch mode is active and nothing is being
    compiled, the call may go below autograd directly.
    """
    # is_compiling first: dynamo folds it to True and must not see the rest.
    return (
        not torch.compiler.is_compiling()
        and not _gradient_can_flow(input, weight, bias)
        and torch._C._functorch.peek_interpreter_stack() is None
        and torch._C._get_tracing_state() is None
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )


def forward(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """forward_op, below autograd directly where _plain_eager allows it."""
    if _plain_eager(input, weight, bias):
        with torch._C._AutoDispatchBelowAutograd():
            return _forward_default(input, weight, bias, stride, padding, dilation, groups,
                                    padding_mode)
    # (not while dynamo traces: torch.onnx's flags are code it refuses to trace; torch.onnx
    # exports through torch.export's non-strict trace, which reaches this)
    if not torch.compiler.is_dynamo_compiling() and _exporting_to_onnx():
        return _as_standard_ops(input, weight, bias, stride, padding, dilation, groups,
                                padding_mode)
    return forward_op(input, weight, bias, stride, padding, dilation, groups, padding_mode)


_transpose_forward_default = transpose_forward_op.default


def transpose_forward(input, weight, bias, stride, padding, output_padding, dilation, groups):
    """transpose_forward_op, below autograd directly where _plain_eager allows it."""
    if _plain_eager(input, weight, bias):
        with torch._C._AutoDispatchBelowAutograd():
            return _transpose_forward_default(input, weight, bias, stride, padding,
                                              output_padding, dilation, groups)
    return transpose_forward_op(input, weight, bias, stride, padding, output_padding,
                                dilation, groups)
