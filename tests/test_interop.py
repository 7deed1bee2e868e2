"""The PyTorch features users apply to nn.Conv3d, applied to a model converted to ours:
each must give nn.Conv3d's numbers (or, where one cannot work, say what does)."""
import copy

import pytest
import torch
import torch.nn as nn

import torchconv3d
from conftest import rel_err


class _Net(nn.Module):
    """Three layers and a call of the functional from user code."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(3, 6, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv3d(6, 6, 3, stride=(1, 2, 2), padding="valid", groups=3)
        self.c = nn.Conv3d(6, 4, (3, 1, 1), padding="same", bias=False)
        self.extra = nn.Parameter(torch.randn(4, 4, 1, 1, 1))

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return torchconv3d.conv3d(y, self.extra.to(y.dtype))


def _pair(dtype=torch.float64):
    """(nn.Conv3d model, the same converted to ours, an input)."""
    torch.manual_seed(0)
    ref = _Net().to(dtype)
    ours = torchconv3d.convert(_Net().to(dtype))
    ours.load_state_dict(ref.state_dict())
    return ref, ours, torch.randn(2, 3, 5, 9, 8, dtype=dtype)


def _uses_our_layers(model):
    return sum(isinstance(m, torchconv3d.Conv3d) for m in model.modules()) == 3


def _grads(model, x):
    y = model(x)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
    return [y] + [p.grad for p in model.parameters()]


def _assert_same(got, want, tol=1e-10):
    for g, w in zip(got, want, strict=True):
        assert w.abs().max() > 0 and rel_err(g, w) <= tol


def test_fx_symbolic_trace_keeps_conv3d_a_leaf():
    """symbolic_trace once failed inside conv3d's Python ('symbolically traced variables
    cannot be used as inputs to control flow'); now each call is one node."""
    ref, ours, x = _pair()
    assert _uses_our_layers(ours)
    gm = torch.fx.symbolic_trace(ours)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torchconv3d.conv3d) == 4
    _assert_same(_grads(gm, x), _grads(ref, x))


def test_fx_quantization_prepare_and_convert():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _, ours, x = _pair(torch.float32)
    ours.eval()
    want = ours(x)
    prepared = prepare_fx(ours, get_default_qconfig_mapping(), (x,))
    assert torch.equal(prepared(x), want)  # observers only watch
    quantized = convert_fx(prepared)
    # Our conv stays float; what FX quantizes around it (the ReLUs' outputs) is 8-bit.
    assert rel_err(quantized(x), want) < 0.05


def test_jit_script_names_what_works_instead():
    _, ours, _ = _pair()
    with pytest.raises(RuntimeError, match=r"torch.jit.script.*torch.compile.*torch.export.*"
                       r"torch.jit.trace"):
        torch.jit.script(ours)


def test_jit_trace_records_our_operator():
    ref, ours, x = _pair()
    traced = torch.jit.trace(ours, x)
    assert "torchconv3d::conv3d_forward" in str(traced.inlined_graph)
    _assert_same(_grads(traced, x), _grads(ref, x))


def test_per_sample_gradients_with_functional_call():
    """vmap(grad) over a model's parameters with torch.func.functional_call, the way
    differential-privacy training (Opacus' functorch mode) gets per-sample gradients."""
    from torch.func import functional_call, grad, vmap

    torch._C._functorch._set_vmap_fallback_enabled(False)  # our batching rules only
    try:
        per_sample = {}
        for name, model in zip(("ref", "ours"), _pair()[:2]):
            params = {k: v.detach() for k, v in model.named_parameters()}
            x = _pair()[2]

            def loss(params, sample):
                return functional_call(model, params, (sample.unsqueeze(0),)).square().sum()

            per_sample[name] = vmap(grad(loss), in_dims=(None, 0))(params, x)
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)
    for k, want in per_sample["ref"].items():
        assert want.shape[0] == 2
        _assert_same([per_sample["ours"][k]], [want])


@pytest.mark.parametrize("batch", [2, 1])
def test_export_with_dynamic_batch_and_depth(batch):
    """Dims without a max: the fake kernels' checks add no guard that would bound them
    (the int64-overflow rules are left to the C++ checker on real sizes). (min=4: _Net's
    'valid' layer needs a depth of 3, and torch specialises its output depth of 1.)"""
    ref, ours, x = _pair(torch.float32)
    x = x[:batch]
    dims = {2: torch.export.Dim("depth", min=4)}
    if batch > 1:
        dims[0] = torch.export.Dim("batch")
    ep = torch.export.export(ours.eval(), (x,), dynamic_shapes=(dims,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "torchconv3d.conv3d_forward.default" in ops
    for shape in [(batch, 3, 5, 9, 8), (batch + (batch > 1), 3, 11, 9, 8)]:
        x2 = torch.randn(shape)
        _assert_same([ep.module()(x2)], [ref.eval()(x2)], tol=1e-5)


def test_compile_dynamic_shapes_across_layouts_and_sizes():
    """torch.compile(dynamic=True): one graph for several sizes, channels_last_3d inputs
    included, forward and backward; the fake kernels' strides match the real ones (inductor
    asserts them)."""
    ref, ours, _ = _pair(torch.float32)
    compiled = torch.compile(ours, dynamic=True, fullgraph=True)
    for shape, cl in [((2, 3, 5, 9, 8), False), ((3, 3, 7, 9, 10), True),
                      ((1, 3, 6, 9, 8), True)]:
        x = torch.randn(shape)
        x = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
        ours.zero_grad()
        ref.zero_grad()
        _assert_same(_grads(compiled, x), _grads(ref, x), tol=1e-5)


def _weight_norm(model):
    from torch.nn.utils.parametrizations import weight_norm

    for name in ("a", "b", "c"):
        weight_norm(getattr(model, name))
    return model


def _fuse_batch_norm(model):
    """fuse_conv_bn_eval, as inference tooling does; batch-norm statistics made nontrivial."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(1)
    bn = nn.BatchNorm3d(6, dtype=model.a.weight.dtype).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    model.a = fuse_conv_bn_eval(model.eval().a, bn)
    return model


def _pickled(model):
    import io
    import pickle

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return pickle.loads(pickle.dumps(torch.load(buffer, weights_only=False)))


def _hooked(model):
    """Forward pre-hooks, forward hooks and full backward hooks that change what flows."""
    for m in (model.a, model.b, model.c):
        m.register_forward_pre_hook(lambda m, args: (args[0] * 1.5,))
        m.register_forward_hook(lambda m, args, out: out - 0.25)
        m.register_full_backward_hook(
            lambda m, gin, gout: (None if gin[0] is None else gin[0] * 2,))
    return model


TRANSFORMS = {"weight_norm": _weight_norm, "fuse_conv_bn_eval": _fuse_batch_norm,
              "torch.save/load and pickle": _pickled, "copy.deepcopy": copy.deepcopy,
              "hooks": _hooked}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_module_transforms_match_nn_conv3d(name):
    """What users apply to nn.Conv3d modules (after convert): the result still runs our
    layer and gives nn.Conv3d's outputs and parameter gradients."""
    ref, ours, x = _pair()
    ref, ours = TRANSFORMS[name](ref), TRANSFORMS[name](ours)
    assert _uses_our_layers(ours) and not _uses_our_layers(ref)
    _assert_same(_grads(ours, x), _grads(ref, x))
