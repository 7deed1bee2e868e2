"""torch.ops.torchconv3d.conv3d_forward as standard ONNX (Pad + Conv), for graphs that hold
the operator itself: an ExportedProgram given to torch.onnx.export, a model calling
torch.ops.torchconv3d directly.

A model that calls torchconv3d.Conv3d / conv3d needs none of this: while torch.onnx exports,
conv3d is written as F.pad + F.conv3d (torchconv3d/ops.py), which both exporters translate.

    import torchconv3d.onnx_export
    # dynamo=True (torch.onnx's default):
    torch.onnx.export(
        program, dynamo=True,
        custom_translation_table=torchconv3d.onnx_export.TRANSLATION_TABLE)
    # the TorchScript exporter: importing this module registered the symbolic (opset >= 13;
    # circular padding needs opset 19, ONNX's first Pad with mode 'wrap').
"""
import torch

from ._check import padding_modes

_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv_attributes(stride, padding, dilation, groups, padding_mode):
    """The ONNX form of the operator's arguments: (Conv's attributes, the Pads before it).
    Zero padding, asymmetric too, is Conv's own `pads`; each other mode present is one Pad
    of the batched input over the dimensions that have it (pads on different axes commute),
    pads as ONNX orders them (every axis's start, then every end)."""
    modes = padding_modes(padding_mode)
    before, after = list(padding[0::2]), list(padding[1::2])
    conv = dict(strides=list(stride), dilations=list(dilation), group=groups)

    def only(mode, values):
        return [v if modes[i] == mode else 0 for i, v in enumerate(values)]

    pads = [dict(pads=[0, 0] + only(mode, before) + [0, 0] + only(mode, after),
                 mode=_PAD_MODES[mode])
            for mode in dict.fromkeys(modes) if mode != "zeros"]
    return dict(conv, pads=only("zeros", before) + only("zeros", after)), pads


def _conv3d_forward_onnxscript(input, weight, bias, stride, padding, dilation, groups,
                               padding_mode):
    """The dynamo exporter's translation (attributes are Python values here)."""
    from onnxscript import opset20 as op

    conv, pads = conv_attributes(stride, padding, dilation, groups, padding_mode)
    unbatched = len(input.shape) == 4
    x = op.Unsqueeze(input, op.Constant(value_ints=[0])) if unbatched else input
    for pad in pads:
        x = op.Pad(x, op.Constant(value_ints=pad["pads"]), mode=pad["mode"])
    inputs = (x, weight) if bias is None else (x, weight, bias)
    out = op.Conv(*inputs, kernel_shape=list(weight.shape[2:]), **conv)
    return op.Squeeze(out, op.Constant(value_ints=[0])) if unbatched else out


TRANSLATION_TABLE = {torch.ops.torchconv3d.conv3d_forward.default: _conv3d_forward_onnxscript}


def _conv3d_forward_symbolic(g, input, weight, bias, stride, padding, dilation, groups,
                             padding_mode):
    """The TorchScript exporter's symbolic."""
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    stride, padding, dilation = (sh._get_const(v, "is", name) for v, name in
                                 ((stride, "stride"), (padding, "padding"),
                                  (dilation, "dilation")))
    groups = sh._get_const(groups, "i", "groups")
    padding_mode = sh._get_const(padding_mode, "s", "padding_mode")
    conv, pads = conv_attributes(stride, padding, dilation, groups, padding_mode)
    if "circular" in padding_modes(padding_mode) and GLOBALS.export_onnx_opset_version < 19:
        raise torch.onnx.errors.SymbolicValueError(
            "torchconv3d: circular padding is ONNX Pad mode 'wrap', which needs "
            f"opset_version >= 19, got {GLOBALS.export_onnx_opset_version}", input)
    unbatched = sh._get_tensor_rank(input) == 4
    axis0 = g.op("Constant", value_t=torch.tensor([0]))
    x = g.op("Unsqueeze", input, axis0) if unbatched else input
    for pad in pads:
        x = g.op("Pad", x, g.op("Constant", value_t=torch.tensor(pad["pads"])),
                 mode_s=pad["mode"])
    inputs = (x, weight) if sh._is_none(bias) else (x, weight, bias)
    out = g.op("Conv", *inputs, strides_i=conv["strides"], dilations_i=conv["dilations"],
               group_i=conv["group"], pads_i=conv["pads"])
    return g.op("Squeeze", out, axis0) if unbatched else out


# (opset 13: Unsqueeze and Squeeze take their axes as an input from there on)
torch.onnx.register_custom_op_symbolic("torchconv3d::conv3d_forward", _conv3d_forward_symbolic,
                                       13)
