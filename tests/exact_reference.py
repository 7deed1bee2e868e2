"""A float64 convolution that forms exactly the terms of the definition, for NaN/Inf tests.

y[n, o, p] = b[o] + sum over (c, tap) of w[o, c, tap] * xpad[n, c, p * stride + tap * dil],
where xpad is the input extended by the padding mode: zero padding is a real zero (as in
nn.Conv3d's definition, "zero-padding added to all sides of the input"), so a NaN or Inf
weight meeting it gives NaN; the other modes read the input element they map to.
Products are formed elementwise and summed with torch.sum, so no BLAS shortcut (which may
skip zeros) decides how a NaN or an Inf propagates. Autograd through it gives the exact
gradients: every term of grad_input and grad_weight pairs a real output position with a
real (or padded-zero) input element, and nothing else.
"""
import itertools

import torch
import torch.nn.functional as F


def _source(q, size, mode):
    """Input index read at padded coordinate q (a tensor); out of [0, size) for zeros."""
    if mode == "zeros":
        return q
    if mode == "reflect":
        period = max(2 * (size - 1), 1)
        r = q.remainder(period)
        return torch.where(r >= size, period - r, r)
    if mode == "replicate":
        return q.clamp(0, size - 1)
    if mode == "circular":
        return q.remainder(size)
    raise ValueError(mode)


def exact_conv3d(x, w, b, stride, pads, dilation, groups, mode):
    """pads = (d_before, d_after, h_before, h_after, w_before, w_after); 5-D x."""
    if mode == "zeros" and any(pads):
        x = F.pad(x, (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1]))
        pads = [0] * 6
    n = x.shape[0]
    cout, cig = w.shape[:2]
    k, ins = w.shape[2:], x.shape[2:]
    outs = [
        (ins[i] + pads[2 * i] + pads[2 * i + 1] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
        for i in range(3)
    ]
    cog = cout // groups
    xg = x.reshape(n, groups, 1, cig, *ins)
    wg = w.reshape(1, groups, cog, cig, *k)
    y = x.new_zeros(n, groups, cog, *outs)
    for tap in itertools.product(*(range(s) for s in k)):
        # Output positions whose source is an element for this tap: a box, since the
        # source index grows with the position.
        box, src = [], []
        for i in range(3):
            q = torch.arange(outs[i]) * stride[i] + tap[i] * dilation[i] - pads[2 * i]
            s = _source(q, ins[i], mode)
            ok = ((s >= 0) & (s < ins[i])).nonzero().flatten()
            if ok.numel() == 0:
                break
            box.append(slice(int(ok[0]), int(ok[-1]) + 1))
            src.append(s[box[-1]])
        else:
            xs = xg
            for i in range(3):
                xs = xs.index_select(4 + i, src[i])
            wt = wg[(Ellipsis,) + tap].reshape(1, groups, cog, cig, 1, 1, 1)
            where = (slice(None),) * 3 + tuple(box)
            y = y.clone()
            y[where] = y[where] + (wt * xs).sum(dim=3)
    y = y.reshape(n, cout, *outs)
    if b is not None:
        y = y + b.reshape(1, cout, 1, 1, 1)
    return y


def value_class(t):
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf, per element."""
    t = t.detach().double().cpu()
    c = torch.zeros(t.shape, dtype=torch.int8)
    c[t.isnan()] = 1
    c[t == float("inf")] = 2
    c[t == -float("inf")] = 3
    return c


def assert_same_values(actual, expected, tol, label):
    """Same NaN/+Inf/-Inf pattern; finite elements within tol (relative to the finite max)."""
    ca, ce = value_class(actual), value_class(expected)
    wrong = (ca != ce).nonzero()
    assert wrong.numel() == 0, (
        f"{label}: {len(wrong)} elements differ in NaN/Inf, first at {wrong[0].tolist()}: "
        f"{actual.detach().cpu()[tuple(wrong[0])].item()} vs "
        f"{expected.detach()[tuple(wrong[0])].item()}"
    )
    finite = ce == 0
    if finite.any():
        a, e = actual.detach().double().cpu()[finite], expected.detach().double()[finite]
        scale = max(e.abs().max().item(), 1e-300)
        err = (a - e).abs().max().item() / scale
        assert err <= tol, f"{label}: finite elements off by {err} (tol {tol})"
