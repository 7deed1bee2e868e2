"""ONNX export of models using our layer, by both torch.onnx exporters (dynamo=True and the
TorchScript one), as standard ONNX (Pad + Conv) run in onnxruntime against our output."""
import io
import warnings

import pytest
import torch
import torch.nn as nn

import torchconv3d
from conftest import rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# (kwargs of Conv3d(4, 6, ...), input shape): every padding form and mode, groups, stride,
# dilation, unbatched and TensorFlow-layout inputs, MegEngine's flipped kernel.
CASES = [
    (dict(kernel_size=3, padding=1), (2, 4, 5, 6, 7)),
    (dict(kernel_size=(3, 2, 3), padding=((1, 0), (0, 1), (2, 1)), stride=(1, 2, 1)),
     (2, 4, 5, 6, 7)),
    (dict(kernel_size=3, padding=1, padding_mode="reflect", dilation=(1, 2, 1)),
     (2, 4, 5, 6, 7)),
    (dict(kernel_size=3, padding=(2, 1, 0), padding_mode="replicate", groups=2, bias=False),
     (2, 4, 5, 6, 7)),
    (dict(kernel_size=3, padding="same", padding_mode="circular", stride=2), (2, 4, 5, 6, 7)),
    (dict(kernel_size=(3, 3, 1), padding="causal", padding_mode="replicate"), (4, 5, 6, 7)),
    (dict(kernel_size=3, padding="valid", groups=2, conv_mode="convolution"), (2, 4, 5, 6, 7)),
    (dict(kernel_size=3, padding=1, data_format="NDHWC"), (2, 5, 6, 7, 4)),
]


def _export(model, x, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the TorchScript exporter is deprecated)
        if dynamo:
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=19)
        return onnx.load_from_string(f.getvalue())


def _run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c[0]))
def test_onnx_export_runs_in_onnxruntime(case, dynamo):
    kwargs, shape = case
    torch.manual_seed(0)
    model = nn.Sequential(torchconv3d.Conv3d(4, 6, **kwargs), nn.ReLU()).eval()
    x = torch.randn(shape)
    proto = _export(model, x, dynamo)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 1 and all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    if dynamo:
        # Zero padding, asymmetric too, is Conv's own attribute; the other modes a Pad.
        # (The TorchScript exporter writes a Pad for asymmetric zero padding and Slice +
        # Concat for circular.)
        assert ("Pad" in ops) == (kwargs.get("padding_mode", "zeros") != "zeros"), ops
    with torch.no_grad():
        want = model(x)
    got = _run(proto, x)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_a_converted_model(dynamo):
    """The issue's case: a model built with nn.Conv3d, converted, exported, deployed."""
    torch.manual_seed(0)
    model = torchconv3d.convert(nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv3d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
        nn.Conv3d(8, 4, 1))).eval()
    x = torch.randn(1, 3, 8, 9, 10)
    proto = _export(model, x, dynamo)
    with torch.no_grad():
        want = model(x)
    assert rel_err(_run(proto, x), want) <= 1e-5


def test_exporting_flag_follows_torch_onnx():
    """The cheap flag read by ops.forward agrees with torch.onnx.is_in_onnx_export inside
    both exporters (it reads torch's private flags)."""
    from torchconv3d.ops import _exporting_to_onnx

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((_exporting_to_onnx(), torch.onnx.is_in_onnx_export()))
            return x + 1

    for dynamo in (True, False):
        seen.clear()
        _export(Probe(), torch.randn(2), dynamo)
        assert seen and all(ours == theirs for ours, theirs in seen), seen
        assert any(theirs for _, theirs in seen)
    assert not _exporting_to_onnx()


def _raw_op_model(kwargs, x):
    """A module calling torch.ops.torchconv3d.conv3d_forward itself, with case's arguments
    (NCDHW cases): what a graph holding our operator looks like to an exporter."""
    from torchconv3d.functional import resolve_args

    conv = torchconv3d.Conv3d(4, 6, **kwargs)
    weight = conv.weight.detach()
    if kwargs.get("conv_mode") == "convolution":
        weight = weight.flip(2, 3, 4)
    args = (*resolve_args(x, weight, conv.stride, conv.padding, conv.dilation), conv.groups,
            conv.padding_mode)

    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(weight)
            self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach())

        def forward(self, x):
            return torch.ops.torchconv3d.conv3d_forward(x, self.weight, self.bias, *args)

    return Raw().eval()


def export_holding_our_operator(model, x):
    """(ExportedProgram, [ONNX models]) for a graph holding our operator: the dynamo
    exporter given the ExportedProgram and torchconv3d.onnx_export.TRANSLATION_TABLE, and
    the TorchScript exporter with the symbolic that importing onnx_export registers."""
    import torchconv3d.onnx_export as ours_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
        dynamo = torch.onnx.export(program, dynamo=True,
                                   custom_translation_table=ours_onnx.TRANSLATION_TABLE)
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=19)
    return program, [dynamo.model_proto, onnx.load_from_string(f.getvalue())]


NCDHW_CASES = [c for c in CASES if "data_format" not in c[0]]


@pytest.mark.parametrize("case", NCDHW_CASES, ids=lambda c: str(c[0]))
def test_operator_translation_for_each_exporter(case):
    """Graphs that hold our operator: an ExportedProgram given to the dynamo exporter with
    torchconv3d.onnx_export.TRANSLATION_TABLE, and the TorchScript exporter with the
    symbolic that importing torchconv3d.onnx_export registers; both write Pad + Conv."""
    kwargs, shape = case
    torch.manual_seed(0)
    x = torch.randn(shape)
    model = _raw_op_model(kwargs, x)
    with torch.no_grad():
        want = model(x)
    program, protos = export_holding_our_operator(model, x)
    assert any("torchconv3d" in str(n.target) for n in program.graph.nodes)
    for proto in protos:
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("Conv") == 1, ops
        assert ("Pad" in ops) == (kwargs.get("padding_mode", "zeros") != "zeros"), ops
        assert rel_err(_run(proto, x), want) <= 1e-5


def test_circular_padding_before_opset_19_is_refused_by_name():
    import torchconv3d.onnx_export  # noqa: F401  (registers the symbolic)

    x = torch.randn(1, 4, 5, 6, 7)
    model = _raw_op_model(dict(kernel_size=3, padding=1, padding_mode="circular"), x)
    with warnings.catch_warnings(), pytest.raises(Exception, match=r"opset_version >= 19, got 17"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False, opset_version=17)
