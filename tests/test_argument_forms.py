"""Every argument form F.conv3d / nn.Conv3d take is taken (and computed the same), every
form they refuse is refused with the same exception type; PyTorch's own OpInfo samples
and error inputs for nn.functional.conv3d, and its ModuleInfo inputs for nn.Conv3d."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d
from conftest import TOL, rel_err


def _pytorch_test_db():
    """PyTorch's OpInfo and ModuleInfo databases. Importing them freezes torch.backends'
    flags and wraps TorchScript calls for the whole process; both are put back, so the
    test files that run after this one see torch as it was."""
    saved = (torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__,
             torch.backends.flags_frozen())
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

    torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = saved[:2]
    # (the flag lives in torch.backends' own module globals, behind its module wrapper)
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = not saved[2]
    assert torch.backends.flags_frozen() == saved[2]
    opinfo = next(op for op in op_db if op.name == "nn.functional.conv3d")
    moduleinfo = next(m for m in module_db if m.module_cls is nn.Conv3d)
    return opinfo, moduleinfo


@pytest.fixture(scope="module")
def pytorch_db():
    return _pytorch_test_db()


# Forms F.conv3d and nn.Conv3d take: one-element lists expanded, numpy integers, integer
# tensors of one element, and mixes of them.
ACCEPTED = [
    dict(stride=(2,)), dict(padding=[1]), dict(dilation=(2,)), dict(stride=[2, 1, 2]),
    dict(stride=np.int64(2)), dict(padding=torch.tensor(1)), dict(dilation=np.int32(2)),
    dict(padding=(1, np.int64(0), torch.tensor(2))), dict(stride=torch.tensor([2])),
    dict(groups=np.int64(2)), dict(padding=torch.Size([1, 0, 1])),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kwargs", ACCEPTED, ids=repr)
def test_functional_takes_every_form_f_conv3d_takes(kwargs, dtype):
    x = torch.randn(2, 4, 7, 6, 8, dtype=dtype)
    w = torch.randn(6, 4 // int(kwargs.get("groups", 1)), 3, 2, 3, dtype=dtype)
    b = torch.randn(6, dtype=dtype)
    want = F.conv3d(x, w, b, **kwargs)
    got = torchconv3d.conv3d(x, w, b, **kwargs)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL[dtype]


MODULE_ACCEPTED = [
    dict(kernel_size=np.int64(3)), dict(kernel_size=(3, np.int64(2), 1)),
    dict(stride=np.int64(2)), dict(stride=(2,)), dict(padding=[1]), dict(dilation=(2,)),
    dict(padding=np.int64(1), padding_mode="reflect"), dict(groups=np.int64(2)),
]


@pytest.mark.parametrize("kwargs", MODULE_ACCEPTED, ids=repr)
def test_module_takes_every_form_nn_conv3d_takes(kwargs):
    kwargs = dict(dict(kernel_size=3), **kwargs)
    torch.manual_seed(3)
    ref = nn.Conv3d(4, 6, dtype=torch.float64, **kwargs)
    torch.manual_seed(3)
    ours = torchconv3d.Conv3d(4, 6, dtype=torch.float64, **kwargs)
    x = torch.randn(2, 4, 7, 6, 8, dtype=torch.float64)
    assert rel_err(ours(x), ref(x)) <= 1e-10


X = torch.randn(1, 2, 6, 6, 6)
W = torch.randn(4, 2, 3, 3, 3)

# Forms torch refuses, with the type it raises (ours must raise the same type).
REFUSED = [
    dict(stride=(2.5, 1, 1)), dict(stride=2.0), dict(padding=1.0), dict(dilation=(1, 1.0, 1)),
    dict(stride=True), dict(stride=(True, 1, 1)), dict(groups=1.0), dict(groups=True),
    dict(stride=np.array([2, 1, 1])), dict(stride=torch.tensor([2, 1, 1])),
    dict(padding=torch.tensor(1.0)), dict(stride=None), dict(padding=None),
    dict(stride=[2, 2]), dict(dilation=(1, 1, 1, 1)), dict(padding=(1, 1)),
    dict(padding=(1,) * 6), dict(stride=()),
]


@pytest.mark.parametrize("kwargs", REFUSED, ids=repr)
def test_functional_refuses_with_torchs_exception_type(kwargs):
    with pytest.raises(Exception) as theirs:
        F.conv3d(X, W, **kwargs)
    with pytest.raises(theirs.type) as ours:
        torchconv3d.conv3d(X, W, **kwargs)
    assert str(ours.value)


@pytest.mark.parametrize("name,args", [
    ("input", (None, W)), ("input", ([1.0], W)), ("weight", (X, None)),
    ("bias", (X, W, [0.0] * 4)),
])
def test_non_tensor_arguments_are_type_errors(name, args):
    with pytest.raises(TypeError):
        F.conv3d(*args)
    with pytest.raises(TypeError, match=rf"argument '{name}' \(position \d\) must be Tensor"):
        torchconv3d.conv3d(*args)


@pytest.mark.parametrize("kwargs", [dict(stride=(2.5, 1, 1)), dict(padding=1.5),
                                    dict(dilation=2.0), dict(padding=torch.tensor(1))],
                         ids=repr)
def test_module_refuses_like_nn_conv3d(kwargs):
    """Construction or forward: where nn.Conv3d raises, with its type."""
    def run(cls):
        cls(2, 4, 3, **kwargs)(X)

    with pytest.raises(Exception) as theirs:
        run(nn.Conv3d)
    with pytest.raises(theirs.type):
        run(torchconv3d.Conv3d)


@pytest.mark.parametrize("cls", [nn.Conv3d, torchconv3d.Conv3d])
def test_module_called_on_none_is_a_type_error(cls):
    with pytest.raises(TypeError):
        cls(2, 4, 3)(None)


def _samples(opinfo, dtype):
    return list(opinfo.sample_inputs("cpu", dtype, requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opinfo_samples_match_f_conv3d(pytorch_db, dtype):
    opinfo, _ = pytorch_db
    samples = _samples(opinfo, dtype)
    assert len(samples) >= 20
    for s in samples:
        want = F.conv3d(s.input, *s.args, **s.kwargs)
        got = torchconv3d.conv3d(s.input, *s.args, **s.kwargs)
        assert got.shape == want.shape, s
        assert rel_err(got, want) <= TOL[dtype], s
        gy = torch.randn_like(want)
        inputs = [t for t in (s.input, *s.args) if isinstance(t, torch.Tensor)]
        grads = zip(torch.autograd.grad(got, inputs, gy), torch.autograd.grad(want, inputs, gy))
        for g, r in grads:
            assert rel_err(g, r) <= TOL[dtype] * 10, s


# Where we deliberately differ from PyTorch's expected message (the type always matches):
# 'same' with a stride is our extension (TensorFlow's rule), so it is accepted; and a 4-D
# weight is named as conv3d's 5-D weight, not as a 4-D input torch would have expected.
_OWN_WORDING = ("Expected 4-dimensional input for 4-dimensional weight",)
_ACCEPTED_EXTENSION = ("padding='same' is not supported for strided convolutions",)


def test_opinfo_error_inputs_raise_torchs_type_and_message(pytorch_db):
    opinfo, _ = pytorch_db
    errors = list(opinfo.error_inputs("cpu"))
    assert len(errors) >= 8
    for e in errors:
        s = e.sample_input
        call = lambda: torchconv3d.conv3d(s.input, *s.args, **s.kwargs)  # noqa: E731
        if e.error_regex in _ACCEPTED_EXTENSION:
            assert call().dim() == 5
        elif e.error_regex in _OWN_WORDING:
            with pytest.raises(e.error_type):
                call()
        else:
            with pytest.raises(e.error_type, match=e.error_regex):
                call()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_moduleinfo_inputs_match_nn_conv3d(pytorch_db, dtype):
    _, moduleinfo = pytorch_db
    inputs = moduleinfo.module_inputs_func(moduleinfo, device="cpu", dtype=dtype,
                                           requires_grad=True, training=True)
    assert len(inputs) >= 4
    for mi in inputs:
        c = mi.constructor_input
        torch.manual_seed(5)
        ref = nn.Conv3d(*c.args, **c.kwargs, dtype=dtype)
        torch.manual_seed(5)
        ours = torchconv3d.Conv3d(*c.args, **c.kwargs, dtype=dtype)
        (x,) = mi.forward_input.args
        want, got = ref(x), ours(x)
        assert got.shape == want.shape, mi.desc
        assert rel_err(got, want) <= TOL[dtype], mi.desc
        gy = torch.randn_like(want)
        want.backward(gy)
        got.backward(gy)
        assert rel_err(ours.weight.grad, ref.weight.grad) <= TOL[dtype] * 10, mi.desc
