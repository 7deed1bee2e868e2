"""gradcheck, gradgradcheck, opcheck, torch.compile and determinism."""
import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import torchconv3d
from conftest import CL, make_layout, reference
from torchconv3d.functional import resolve_args

GRAD_CASES = [
    dict(padding=1),
    dict(stride=(2, 1, 2), padding=((1, 0), (0, 2), (1, 1)), padding_mode="reflect"),
    dict(dilation=(1, 2, 1), padding="same", padding_mode="circular", groups=2),
    dict(padding="causal", padding_mode="replicate"),
    dict(padding=1, groups=4),  # depthwise
    dict(padding="same", stride=2, groups=4, padding_mode="reflect"),  # depthwise, TF same
]


# Our operators on a GPU too (the emulator's autograd is first order only).
CPU_AND_CUDA = pytest.mark.parametrize("backend", ["cpu", "cuda"], indirect=True)


def _tensors(case, unbatched=False, device="cpu"):
    groups = case.get("groups", 1)
    shape = (4, 4, 5, 4) if unbatched else (2, 4, 4, 5, 4)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 4 // groups, 3, 2, 3, dtype=torch.float64, device=device,
                    requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    return x, w, b


@CPU_AND_CUDA
@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_and_gradgradcheck(backend, case):
    x, w, b = _tensors(case, device=backend.device)
    f = lambda x, w, b: torchconv3d.conv3d(x, w, b, **case)  # noqa: E731
    _check_every_mode(f, (x, w, b))


def test_gradgradcheck_unbatched_no_bias():
    x, w, _ = _tensors({}, unbatched=True)
    f = lambda x, w: torchconv3d.conv3d(x, w, None, padding=(1, 0, 1))  # noqa: E731
    _check_every_mode(f, (x, w))


def _check_every_mode(f, inputs):
    """Reverse mode, forward mode (JVP) and their second-order mixes against finite
    differences."""
    assert gradcheck(f, inputs, check_forward_ad=True)
    assert gradgradcheck(f, inputs, check_fwd_over_rev=True)


def _op_samples(device="cpu"):
    samples = []
    for case, layout in [(dict(padding=[1, 1, 1, 1, 1, 1]), None),
                         (dict(padding=[1, 0, 2, 1, 0, 1], stride=[2, 1, 1], mode="reflect"), CL),
                         (dict(padding=[1, 1, 0, 0, 1, 1], groups=4, mode="circular"), None),
                         (dict(padding=[0] * 6, dilation=[1, 2, 1], groups=2), CL)]:
        groups = case.get("groups", 1)
        x = torch.randn(2, 4, 5, 6, 5)
        w = torch.randn(4, 4 // groups, 3, 2, 3)
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        b = torch.randn(4)
        args = (case.get("stride", [1, 1, 1]), case["padding"], case.get("dilation", [1, 1, 1]),
                groups, case.get("mode", "zeros"))
        samples.append((x.to(device), w.to(device), b.to(device), args))
    return samples


@CPU_AND_CUDA
@pytest.mark.parametrize("sample", range(4))
def test_opcheck_forward(backend, sample):
    x, w, b, args = _op_samples(backend.device)[sample]
    opcheck(torch.ops.torchconv3d.conv3d_forward.default, (x, w, b, *args))
    opcheck(torch.ops.torchconv3d.conv3d_forward.default, (x.requires_grad_(), w, None, *args))


@CPU_AND_CUDA
@pytest.mark.parametrize("sample", range(4))
def test_opcheck_backward(backend, sample):
    x, w, b, args = _op_samples(backend.device)[sample]
    gy = torch.randn_like(torch.ops.torchconv3d.conv3d_forward(x, w, b, *args))
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        opcheck(torch.ops.torchconv3d.conv3d_backward.default, (gy, x, w, *args, mask))


def test_backward_mask_computes_only_what_is_asked():
    x, w, _, args = _op_samples()[0]
    gy = torch.randn_like(torch.ops.torchconv3d.conv3d_forward(x, w, None, *args))
    gi, gw, gb = torch.ops.torchconv3d.conv3d_backward(gy, x, w, *args, [False, True, False])
    assert gi is None and gb is None and gw.shape == w.shape


@CPU_AND_CUDA
def test_torch_compile_fullgraph_forward_and_backward(backend):
    """A small model, compiled with fullgraph=True, matches eager forward and backward."""
    device = backend.device
    torch.manual_seed(0)
    model = nn.Sequential(
        torchconv3d.Conv3d(3, 8, 3, padding="same"), nn.ReLU(),
        torchconv3d.Conv3d(8, 8, 3, stride=2, padding="same", padding_mode="reflect", groups=8),
        nn.ReLU(),
        torchconv3d.Conv3d(8, 4, (3, 1, 1), padding="causal"),
    ).to(device)
    x = torch.randn(2, 3, 6, 7, 8, device=device)
    ref = model(x)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)


# (channels, groups, layout, padding mode, stride): the planar passes, channels_last with
# enough channels for the channels-innermost ones (grad_input by stride phases), and 64
# channels at stride 1 for the Winograd passes (grad_weight summed over chunks of tiles).
@pytest.mark.parametrize("channels, groups, layout, mode, stride", [
    (8, 1, "contiguous", "reflect", 1),
    (8, 4, "contiguous", "reflect", 1),
    (32, 1, "channels_last", "zeros", 2),
    (32, 1, "channels_last", "replicate", 1),
    (64, 1, "channels_last", "zeros", 1),
    (64, 1, "contiguous", "reflect", 1),
])
def test_gradients_are_bitwise_deterministic(channels, groups, layout, mode, stride):
    x = make_layout(torch.randn(2, channels, 9, 10, 11), layout)
    w = torch.randn(channels, channels // groups, 3, 3, 3)
    b = torch.randn(channels)

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = torchconv3d.conv3d(xs, ws, bs, stride=stride, padding=1, padding_mode=mode,
                               groups=groups)
        gy = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
        y.backward(make_layout(gy, layout))
        return xs.grad, ws.grad, bs.grad

    first, second = grads(), grads()
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)
    # and with another thread count
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = grads()
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(first, single):
        assert torch.equal(a, b_)


def _func_transforms(conv, x, w, b):
    """Every torch.func transform and torch.autograd.forward_ad over conv(x, w, b): the
    results, to compare between our conv3d and F.conv3d."""
    from torch.autograd import forward_ad as fwAD
    from torch.func import grad, hessian, jacfwd, jacrev, jvp

    tx, tw, tb = torch.cos(x), torch.sin(w), torch.cos(b)
    small = (x[:1, :, :3, :3, :3], w, b)
    loss = lambda x, w, b: conv(x, w, b).pow(3).sum()  # noqa: E731
    out = {
        "jvp": jvp(conv, (x, w, b), (tx, tw, tb)),
        "jvp bias only": jvp(lambda b: conv(x, w, b), (b,), (tb,)),
        "jacfwd": jacfwd(conv, argnums=(0, 1, 2))(*small),
        "jacrev": jacrev(conv, argnums=(0, 1, 2))(*small),
        "grad": grad(loss, argnums=(0, 1, 2))(x, w, b),
        "hessian": hessian(lambda x: loss(x, small[1], small[2]))(small[0]),
        # forward-over-reverse: Hessian-vector products
        "hvp x": jvp(lambda x: grad(loss)(x, w, b), (x,), (tx,)),
        "hvp w": jvp(lambda w: grad(loss, argnums=1)(x, w, b), (w,), (tw,)),
        # reverse-over-forward
        "grad of jvp": grad(
            lambda w: jvp(lambda x: conv(x, w, b), (x,), (tx,))[1].square().sum())(w),
    }
    with fwAD.dual_level():
        y = conv(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), fwAD.make_dual(b, tb))
        out["forward_ad"] = fwAD.unpack_dual(y).tangent
        xr = x.clone().requires_grad_()
        y = conv(fwAD.make_dual(xr, tx), w, b).square().sum()
        out["backward of a tangent"] = torch.autograd.grad(fwAD.unpack_dual(y).tangent, xr)
    return out


def _ours_and_ref(case):
    """(our conv3d, F.pad + F.conv3d) with case's arguments, as functions of (x, w, b)."""
    ours = lambda x, w, b: torchconv3d.conv3d(x, w, b, **case)  # noqa: E731

    def ref(x, w, b):
        stride, pads, dilation = resolve_args(
            x, w, case.get("stride", 1), case.get("padding", 0), case.get("dilation", 1))
        return reference(x, w, b, stride, pads, dilation, case.get("groups", 1),
                         case.get("padding_mode", "zeros"))

    return ours, ref


def _assert_same_results(got, want):
    for name in want:
        got_leaves = torch.utils._pytree.tree_leaves(got[name])
        want_leaves = torch.utils._pytree.tree_leaves(want[name])
        assert len(got_leaves) == len(want_leaves), name
        for g, r in zip(got_leaves, want_leaves):
            assert r.abs().max() > 0, name  # a zero tangent would compare equal to nothing
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("case", GRAD_CASES)
def test_torch_func_transforms_match_nn_conv3d(case):
    """Forward-mode AD gave zero tangents once (the operators had no JVP); every transform
    must give nn.Conv3d's numbers."""
    torch.manual_seed(0)
    x, w, b = (t.detach() for t in _tensors(case))
    ours, ref = _ours_and_ref(case)
    _assert_same_results(_func_transforms(ours, x, w, b), _func_transforms(ref, x, w, b))


@pytest.fixture
def no_vmap_fallback():
    """vmap of an operator without a batching rule runs it once per sample (with a
    warning); here it raises instead, so a test passes only through our batching rules."""
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(enabled)


def _vmap_transforms(conv, in_dims, x, w, b):
    """vmap over conv and over its derivatives, with in_dims for (x, w, b)."""
    from torch.func import grad, jvp, vmap

    loss = lambda x, w, b: conv(x, w, b).pow(3).sum()  # noqa: E731
    tangents = tuple(torch.cos(t) for t in (x, w, b))
    outer = tuple(None if d is None else 0 for d in in_dims)
    return {
        "vmap": vmap(conv, in_dims)(x, w, b),
        # per-sample gradients (what differential-privacy training computes)
        "vmap(grad)": vmap(grad(loss, argnums=(0, 1, 2)), in_dims)(x, w, b),
        "grad(vmap)": grad(lambda x, w, b: vmap(conv, in_dims)(x, w, b).pow(3).sum(),
                           argnums=(0, 1, 2))(x, w, b),
        "vmap(jvp)": vmap(lambda *a: jvp(conv, a[:3], a[3:]), in_dims * 2)(x, w, b,
                                                                            *tangents),
        "vmap(vmap)": vmap(vmap(conv, in_dims), outer)(
            *(t if d is None else torch.stack([t, t.flip(0)]) for t, d in
              zip((x, w, b), in_dims))),
    }


VMAP_IN_DIMS = [(0, None, None), (None, 0, None), (None, None, 0), (1, 0, None),
                (0, None, 1), (None, 2, 0), (2, 1, 0)]


@pytest.mark.parametrize("unbatched", [False, True], ids=["NCDHW", "CDHW"])
@pytest.mark.parametrize("in_dims", VMAP_IN_DIMS, ids=str)
@pytest.mark.parametrize("case", GRAD_CASES)
def test_vmap_batching_rules_match_nn_conv3d(case, in_dims, unbatched, no_vmap_fallback):
    """A real batching rule for each operator (the vmapped dimension folded into batch,
    groups or output channels), tested with the per-sample fallback turned off; every
    vmapped operand, per-sample inputs batched or not."""
    torch.manual_seed(0)
    x, w, b = (t.detach() for t in _tensors(case, unbatched))
    # A vmapped operand gets 3 samples along its in_dim (not always the first).
    x, w, b = (t if d is None else torch.stack([t, t.sin(), -t], d)
               for t, d in zip((x, w, b), in_dims))
    ours, ref = _ours_and_ref(case)
    _assert_same_results(_vmap_transforms(ours, in_dims, x, w, b),
                         _vmap_transforms(ref, in_dims, x, w, b))


def test_vmap_errors_name_one_samples_sizes(no_vmap_fallback):
    """The batching rules check one sample's arguments, so a message names the sizes the
    caller's function saw, not the folded ones."""
    from torch.func import vmap

    x, w = torch.randn(3, 2, 4, 5, 6, 7), torch.randn(3, 8, 3, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r"weight of size \[8, 3, 3, 3, 3\], expected "
                       r"input\[2, 4, 5, 6, 7\] to have 3 channels, but got 4"):
        vmap(torchconv3d.conv3d)(x, w)
