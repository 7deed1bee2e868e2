"""Fake kernels and autograd for the torchconv3d operators.

torch.ops.torchconv3d.conv3d_forward(input, weight, bias, stride[3], padding[6],
    dilation[3], groups, padding_mode) -> output
torch.ops.torchconv3d.conv3d_backward(grad_output, input, weight, stride[3], padding[6],
    dilation[3], groups, padding_mode, output_mask[3]) -> (grad_input, grad_weight, grad_bias)

padding is (d_before, d_after, h_before, h_after, w_before, w_after). Gradients that
output_mask does not ask for come back as None.

Argument checking lives in C++ (csrc/check.cpp) and runs before any kernel; the fake
kernels here only compute shapes and memory formats, mirroring csrc/ops.cpp.
"""
import torch
from torch._prims_common import suggest_memory_format

from . import _loader

_loader.load()

forward_op = torch.ops.torchconv3d.conv3d_forward
backward_op = torch.ops.torchconv3d.conv3d_backward


def output_size(in_size, kernel, stride, padding, dilation):
    """Spatial output size, as csrc/check.cpp computes it."""
    return [
        (in_size[i] + padding[2 * i] + padding[2 * i + 1] - dilation[i] * (kernel[i] - 1) - 1)
        // stride[i]
        + 1
        for i in range(3)
    ]


def _batched(t):
    return t.unsqueeze(0) if t.dim() == 4 else t


def _empty_like_format(shape, like, fmt):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


@torch.library.register_fake("torchconv3d::conv3d_forward")
def _forward_fake(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    x = _batched(input)
    shape = [x.shape[0], weight.shape[0]] + output_size(
        x.shape[2:], weight.shape[2:], stride, padding, dilation
    )
    cl = torch.channels_last_3d
    fmt = (
        cl
        if suggest_memory_format(x) == cl or suggest_memory_format(weight) == cl
        else torch.contiguous_format
    )
    out = _empty_like_format(shape, x, fmt)
    return out.squeeze(0) if input.dim() == 4 else out


@torch.library.register_fake("torchconv3d::conv3d_backward")
def _backward_fake(
    grad_output, input, weight, stride, padding, dilation, groups, padding_mode, output_mask
):
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        x = _batched(input)
        grad_input = _empty_like_format(x.shape, x, suggest_memory_format(x))
        if input.dim() == 4:
            grad_input = grad_input.squeeze(0)
    if output_mask[1]:
        grad_weight = _empty_like_format(weight.shape, weight, suggest_memory_format(weight))
    if output_mask[2]:
        grad_bias = grad_output.new_empty((weight.shape[0],))
    return grad_input, grad_weight, grad_bias


# --- autograd -----------------------------------------------------------------------------
# Forward:  y = conv(x, w) + b.  Backward: gx = conv^T(gy, w), gw = corr(x, gy), gb = sum(gy).
# Both backward maps are linear in each argument, so their own gradients are again
# forward and backward calls (double backward needs no new kernel):
#   d<ggx, gx>/d gy = conv(ggx, w)       d<ggx, gx>/d w = corr(ggx, gy)
#   d<ggw, gw>/d gy = conv(x, ggw)       d<ggw, gw>/d x = conv^T(gy, ggw)
#   d<ggb, gb>/d gy = ggb broadcast


def _forward_setup(ctx, inputs, output):
    input, weight, bias, *args = inputs
    ctx.save_for_backward(input, weight)
    ctx.args = args
    ctx.has_bias = bias is not None


def _forward_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.has_bias and ctx.needs_input_grad[2],
    ]
    grad_input, grad_weight, grad_bias = backward_op(grad_output, input, weight, *ctx.args, mask)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


def _backward_setup(ctx, inputs, output):
    grad_output, input, weight, *args, _mask = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.args = args


def _backward_backward(ctx, ggi, ggw, ggb):
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
            shape = [1] * grad_output.dim()
            shape[-4] = -1
            terms.append(ggb.reshape(shape).expand_as(grad_output))
        if terms:
            g_gy = terms[0]
            for t in terms[1:]:
                g_gy = g_gy + t
    if need_x and ggw is not None:
        g_x = backward_op(grad_output, input, ggw, *args, [True, False, False])[0]
    if need_w and ggi is not None:
        g_w = backward_op(grad_output, ggi, weight, *args, [False, True, False])[1]
    return g_gy, g_x, g_w, None, None, None, None, None, None


torch.library.register_autograd(
    "torchconv3d::conv3d_forward", _forward_backward, setup_context=_forward_setup
)
torch.library.register_autograd(
    "torchconv3d::conv3d_backward", _backward_backward, setup_context=_backward_setup
)
