"""torchconv3d.ConvTranspose3d / conv_transpose3d against nn.ConvTranspose3d /
F.conv_transpose3d: values, gradients, memory formats, autograd modes, opcheck,
torch.compile, the module's drop-in surface and the errors.

Parametrized over device ('cuda' skips itself without a GPU) so that the cases can move
into the backend fixture later.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import torchconv3d
from cases import cuda_emulated
from conftest import CL, TOL, make_layout, rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]

# (name, in_channels, out_channels, input D H W, kernel, arguments of F.conv_transpose3d)
CASES = [
    ("k2s2_unet_up", 4, 6, (3, 4, 3), (2, 2, 2), dict(stride=2)),
    ("k3s2_op1", 4, 5, (3, 3, 4), (3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("anisotropic", 3, 4, (2, 4, 3), (1, 3, 2),
     dict(stride=(1, 2, 3), padding=(0, 1, 1), output_padding=(0, 1, 2))),
    ("dilated_op_past_stride", 4, 4, (3, 3, 3), (3, 2, 3),
     dict(stride=1, padding=(0, 1, 2), output_padding=(1, 0, 1), dilation=(2, 1, 3))),
    ("groups", 6, 4, (3, 3, 3), (3, 3, 3), dict(stride=2, padding=1, groups=2)),
    ("depthwise", 4, 4, (4, 3, 3), (3, 3, 3), dict(stride=(2, 1, 2), padding=1, groups=4)),
    ("pad_crops", 4, 3, (3, 3, 3), (3, 3, 3), dict(stride=2, padding=2, output_padding=1)),
    # kernel 1, output_padding < dilation only: the last output rows are past every tap
    ("past_every_tap", 3, 2, (2, 2, 2), (1, 1, 1),
     dict(stride=1, padding=0, output_padding=2, dilation=3)),
]
IDS = [c[0] for c in CASES]


def _tensors(case, dtype, device, batch=2, bias=True, layout="contiguous"):
    _, cin, cout, size, kernel, kw = case
    groups = kw.get("groups", 1)
    x = torch.randn((batch, cin) + size if batch else (cin,) + size, dtype=torch.float64)
    w = torch.randn((cin, cout // groups) + kernel, dtype=torch.float64)
    b = torch.randn(cout, dtype=torch.float64) if bias else None
    x, w = (make_layout(t.to(device, dtype), layout) for t in (x, w))
    return x, w, (b.to(device, dtype) if bias else None)


def _values_and_grads(fn, x, w, b, gy=None):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = fn(x, w, b)
    if gy is None:
        gy = torch.randn_like(y)
    leaves = [t for t in (x, w, b) if t is not None]
    return [y, *torch.autograd.grad(y, leaves, gy)], gy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("batch", [2, 0, None], ids=["batched", "batch0", "unbatched"])
def test_matches_torch(device, dtype, case, batch):
    """Output and input, weight and bias gradients against F.conv_transpose3d in float64
    on the same (rounded) values."""
    kw = case[5]
    x, w, b = _tensors(case, dtype, device, batch=batch)
    ours, gy = _values_and_grads(
        lambda x, w, b: torchconv3d.conv_transpose3d(x, w, b, **kw), x, w, b)
    ref, _ = _values_and_grads(lambda x, w, b: F.conv_transpose3d(x, w, b, **kw),
                               x.double(), w.double(), b.double(), gy.double())
    for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        assert a.shape == e.shape and a.dtype == dtype, name
        assert rel_err(a, e) <= TOL[dtype], (name, rel_err(a, e))


def _format(t):
    if t.dim() == 5 and t.is_contiguous(memory_format=CL) and not t.is_contiguous():
        return "channels_last_3d"
    return "contiguous" if t.is_contiguous() else "strided"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("channels_last", "contiguous"),
                                     ("contiguous", "channels_last"),
                                     ("channels_last", "channels_last")])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=lambda c: c[0])
def test_memory_formats_match_torch(dtype, layouts, batch, case):
    """Output, grad_input and grad_weight come back in nn.ConvTranspose3d's layouts, in
    eager and in the fake kernels (what torch.compile plans with)."""
    kw = case[5]
    x, w, b = _tensors(case, dtype, "cpu", batch=batch)
    x, w = make_layout(x, layouts[0]), make_layout(w, layouts[1])
    ours, gy = _values_and_grads(
        lambda x, w, b: torchconv3d.conv_transpose3d(x, w, b, **kw), x, w, b)
    theirs, _ = _values_and_grads(lambda x, w, b: F.conv_transpose3d(x, w, b, **kw),
                                  x, w, b, gy)
    assert [_format(t) for t in ours[:3]] == [_format(t) for t in theirs[:3]]
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = (kw.get("stride", 1), kw.get("padding", 0), kw.get("output_padding", 0),
            kw.get("dilation", 1))
    args = [[a] * 3 if isinstance(a, int) else list(a) for a in args]
    with FakeTensorMode() as mode:
        fx, fw, fb, fgy = (mode.from_tensor(t) for t in (x, w, b, gy))
        fy = torch.ops.torchconv3d.conv_transpose3d_forward(fx, fw, fb, *args, 1)
        fgx, fgw, _ = torch.ops.torchconv3d.conv_transpose3d_backward(
            fgy, fx, fw, *args, 1, [True, True, True])
    assert [t.stride() for t in (fy, fgx, fgw)] == [t.stride() for t in ours[:3]]


GRAD_CASES = [CASES[1], CASES[3], CASES[4]]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("batch", [2, None], ids=["batched", "unbatched"])
def test_gradcheck_and_gradgradcheck(case, batch):
    """Reverse and forward mode, double backward and forward-over-reverse, float64."""
    kw = case[5]
    x, w, b = (t.requires_grad_() for t in _tensors(case, torch.float64, "cpu", batch=batch))
    f = lambda x, w, b: torchconv3d.conv_transpose3d(x, w, b, **kw)  # noqa: E731
    assert gradcheck(f, (x, w, b), check_forward_ad=True)
    assert gradgradcheck(f, (x, w, b), check_fwd_over_rev=True)


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=lambda c: c[0])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(case, layout):
    kw = case[5]
    x, w, b = _tensors(case, torch.float32, "cpu", layout=layout)
    args = [[kw.get(k, d)] * 3 if isinstance(kw.get(k, d), int) else list(kw[k])
            for k, d in (("stride", 1), ("padding", 0), ("output_padding", 0), ("dilation", 1))]
    groups = kw.get("groups", 1)
    opcheck(torch.ops.torchconv3d.conv_transpose3d_forward.default, (x, w, b, *args, groups))
    opcheck(torch.ops.torchconv3d.conv_transpose3d_forward.default,
            (x.requires_grad_(), w.requires_grad_(), None, *args, groups))
    y = torchconv3d.conv_transpose3d(x.detach(), w.detach(), b, **kw)
    gy = torch.randn_like(y)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        opcheck(torch.ops.torchconv3d.conv_transpose3d_backward.default,
                (gy, x.detach(), w.detach(), *args, groups, mask))


def test_torch_compile_fullgraph_forward_and_backward():
    """A decoder step (transposed up-sampling then a convolution), compiled with
    fullgraph=True (a graph break would raise), matches eager, and the graph calls our
    operators."""
    torch._dynamo.reset()
    model = nn.Sequential(torchconv3d.ConvTranspose3d(4, 6, 3, stride=2, padding=1,
                                                      output_padding=1),
                          nn.ReLU(), torchconv3d.Conv3d(6, 3, 3, padding=1)).double()
    x = torch.randn(2, 4, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return gm

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    gx, = torch.autograd.grad(y.sum(), x)
    y_ref = model(x)
    gx_ref, = torch.autograd.grad(y_ref.sum(), x)
    assert rel_err(y, y_ref) <= 1e-12 and rel_err(gx, gx_ref) <= 1e-12
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True, backend=backend)(x)
    assert any("conv_transpose3d_forward" in t for t in seen), seen


@pytest.mark.parametrize("kwargs", [
    dict(stride=2), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2, 1)),
    dict(bias=False, stride=(1, 2, 2), padding=(0, 1, 1))])
def test_module_is_a_drop_in(kwargs):
    """Same parameters under the same seed, state_dict, repr and isinstance as
    nn.ConvTranspose3d; the same output, also with output_size."""
    torch.manual_seed(7)
    theirs = nn.ConvTranspose3d(4, 6, 3, **kwargs)
    torch.manual_seed(7)
    ours = torchconv3d.ConvTranspose3d(4, 6, 3, **kwargs)
    assert isinstance(ours, nn.ConvTranspose3d)
    assert repr(ours) == repr(theirs)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert sd_ours.keys() == sd_theirs.keys()
    assert all(torch.equal(sd_ours[k], sd_theirs[k]) for k in sd_ours)
    x = torch.randn(2, 4, 3, 4, 4)
    assert rel_err(ours(x), theirs(x)) <= 1e-5
    size = theirs(x).shape[2:]
    smallest = [s - op for s, op in zip(size, theirs.output_padding)]
    largest = [s + st - 1 for s, st in zip(smallest, theirs.stride)]
    for output_size in (smallest, [2, 6] + largest):
        assert rel_err(ours(x, output_size), theirs(x, output_size)) <= 1e-5
    with pytest.raises(ValueError) as theirs_error:
        theirs(x, [s + 5 for s in size])
    with pytest.raises(ValueError) as ours_error:
        ours(x, [s + 5 for s in size])
    assert str(ours_error.value) == str(theirs_error.value)


def test_padding_modes_refused_like_torch():
    for mode in ("reflect", "replicate", "circular"):
        with pytest.raises(ValueError) as theirs:
            nn.ConvTranspose3d(4, 4, 3, padding_mode=mode)
        with pytest.raises(ValueError) as ours:
            torchconv3d.ConvTranspose3d(4, 4, 3, padding_mode=mode)
        assert str(ours.value) == str(theirs.value)


def test_convert_swaps_conv_transpose3d_sharing_parameters_and_hooks():
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1),
                          nn.ConvTranspose3d(4, 2, 2, stride=2)).double().eval()
    up = model[1]
    calls = []
    up.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 3, 3, 3, dtype=torch.float64)
    expected = model(x)
    new = torchconv3d.convert(model)
    assert new is model and type(model[1]) is torchconv3d.ConvTranspose3d
    assert model[1].weight is up.weight and model[1].bias is up.bias
    assert not model[1].training
    assert rel_err(model(x), expected) <= 1e-12 and len(calls) == 2


# (builder, input) of calls F.conv_transpose3d rejects; ours must reject them too, with the
# same exception type, before any kernel runs.
BAD_CALLS = [
    ("channels", lambda: (torch.randn(2, 5, 3, 3, 3), torch.randn(4, 3, 3, 3, 3), None, {})),
    ("bias_size", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3),
                           torch.randn(4), {})),
    ("output_padding_big", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3),
                                    None, dict(stride=2, output_padding=2))),
    ("output_padding_negative", lambda: (torch.randn(2, 4, 3, 3, 3),
                                         torch.randn(4, 3, 3, 3, 3), None,
                                         dict(output_padding=-1))),
    ("groups_divide", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3), None,
                               dict(groups=3))),
    ("output_too_small", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3),
                                  None, dict(padding=5))),
    ("stride_zero", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3), None,
                             dict(stride=0))),
    ("stride_length", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3), None,
                               dict(stride=(1, 2)))),
    ("input_rank", lambda: (torch.randn(3, 3, 3), torch.randn(4, 3, 3, 3, 3), None, {})),
    ("dtype", lambda: (torch.randn(2, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3).double(), None,
                       {})),
    ("empty_depth", lambda: (torch.randn(2, 4, 0, 3, 3), torch.randn(4, 3, 3, 3, 3), None, {})),
]


@pytest.mark.parametrize("build", [b for _, b in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_errors_match_torch_and_fake_kernels(build):
    """Rejected where F.conv_transpose3d rejects, with its exception type; the fake kernel's
    checker (_check.py) raises the same type and message as check.cpp."""
    x, w, b, kw = build()
    with pytest.raises(Exception) as theirs:
        F.conv_transpose3d(x, w, b, **kw)
    with pytest.raises(Exception) as ours:
        torchconv3d.conv_transpose3d(x, w, b, **kw)
    assert isinstance(ours.value, type(theirs.value)), (ours.value, theirs.value)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with pytest.raises(Exception) as fake:
        with FakeTensorMode() as mode:
            torchconv3d.conv_transpose3d(*(None if t is None else mode.from_tensor(t)
                                           for t in (x, w, b)), **kw)
    assert type(fake.value) is type(ours.value) and str(fake.value) == str(ours.value)


def test_error_messages_name_the_sizes():
    with pytest.raises(RuntimeError, match=r"Given transposed=1, weight of size \[4, 3, 3, 3, "
                       r"3\], expected input\[2, 5, 3, 3, 3\] to have 4 channels"):
        torchconv3d.conv_transpose3d(torch.randn(2, 5, 3, 3, 3), torch.randn(4, 3, 3, 3, 3))
    with pytest.raises(RuntimeError, match=r"output padding must be smaller than either stride "
                       r"or dilation, but got output_padding=\[2, 2, 2\], stride=\[2, 2, 2\]"):
        torchconv3d.conv_transpose3d(torch.randn(1, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3),
                                     stride=2, output_padding=2)
    with pytest.raises(RuntimeError, match=r"Given input size per channel: \(3 x 3 x 3\)\. "
                       r"Calculated output size per channel: \(-5 x -5 x -5\)"):
        torchconv3d.conv_transpose3d(torch.randn(1, 4, 3, 3, 3), torch.randn(4, 3, 3, 3, 3),
                                     padding=5)


@pytest.fixture(scope="module")
def emulated_ops():
    """The CUDA kernel table run on the CPU by tests/cuda_emulation (tests/cases.py)."""
    return cuda_emulated().ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[5], CASES[7]], ids=lambda c: c[0])
def test_cuda_kernels_emulated(emulated_ops, dtype, case):
    """The transposed operators over the CUDA kernel table, in the emulator, against
    F.conv_transpose3d (TF32 off: exact float32 products)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        kw = case[5]
        x, w, b = _tensors(case, dtype, "cpu")
        args = [[kw.get(k, d)] * 3 if isinstance(kw.get(k, d), int) else list(kw[k])
                for k, d in (("stride", 1), ("padding", 0), ("output_padding", 0),
                             ("dilation", 1))]
        groups = kw.get("groups", 1)
        y = emulated_ops.conv_transpose3d_forward(x, w, b, *args, groups)
        gy = torch.randn_like(y)
        grads = emulated_ops.conv_transpose3d_backward(gy, x, w, *args, groups,
                                                        [True, True, True])
        ref, _ = _values_and_grads(lambda x, w, b: F.conv_transpose3d(x, w, b, **kw),
                                   x.double(), w.double(), b.double(), gy.double())
        for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"),
                              [y, *grads], ref):
            assert rel_err(a, e) <= TOL[dtype], (name, rel_err(a, e))
    finally:
        torch.backends.cudnn.allow_tf32 = old
