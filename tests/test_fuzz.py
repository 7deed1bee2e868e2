"""Property-based differential fuzzing against F.pad + F.conv3d (what nn.Conv3d computes).

Valid random configurations (every argument; tiny, odd and empty shapes; anisotropic
kernels; all dtypes; contiguous, channels_last and strided layouts) must match output and
all three gradients. Invalid ones must raise a ValueError/RuntimeError exactly when torch
raises, and never take the process down.

CI runs a bounded number of examples; the long mode runs thousands:

    TORCHCONV3D_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py
"""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import torchconv3d
from cases import CPU, Case, reference, run_case
from torchconv3d.functional import resolve_args

EXAMPLES = int(os.environ.get("TORCHCONV3D_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="TORCHCONV3D_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODES = ["zeros", "reflect", "replicate", "circular"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@st.composite
def configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    depthwise = draw(st.booleans()) and groups > 1
    if depthwise:
        cin = groups
    cout = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(3))
    # Large dilations: with 'same' or wide padding, taps that read only padding.
    dilation = tuple(draw(st.one_of(st.integers(1, 3), st.integers(4, 10))) for _ in range(3))
    padding = draw(st.one_of(
        st.integers(0, 3),
        st.tuples(*[st.integers(0, 3)] * 3),
        st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3))] * 3),
        st.sampled_from(["same", "valid", "causal"]),
    ))
    # 'causal' refuses the modes that would read future frames (tests/test_hostile.py)
    mode = draw(st.sampled_from(["zeros", "replicate"] if padding == "causal" else MODES))
    batch = draw(st.integers(0 if mode == "zeros" else 1, 3))
    size = tuple(draw(st.integers(1, 9)) for _ in range(3))
    kwargs = dict(stride=stride, dilation=dilation, padding=padding, groups=groups,
                  bias=draw(st.booleans()))
    cfg = Case("fuzz", (batch, cin) + size, cout, kernel, kwargs)
    return (cfg, mode, draw(st.sampled_from(DTYPES)),
            draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
            draw(st.sampled_from(["contiguous", "channels_last"])))


def _torch_raises(cfg, mode):
    """Whether F.pad + F.conv3d (nn.Conv3d's computation) rejects the configuration."""
    kwargs = cfg.kwargs
    x = torch.randn(cfg.input, dtype=torch.float64)
    w = torch.randn(cfg.weight_shape, dtype=torch.float64)
    stride, pads, dilation = resolve_args(x, w, kwargs["stride"], kwargs["padding"],
                                          kwargs["dilation"])
    try:
        reference(x, w, None, stride, pads, dilation, kwargs["groups"], mode)
    except (RuntimeError, ValueError, IndexError, NotImplementedError):
        return True
    return False


@FUZZ
@given(configs())
def test_random_valid_configurations_match(case):
    cfg, mode, dtype, layout, weight_layout = case
    torch.manual_seed(0)  # the same tensors when hypothesis replays an example
    if _torch_raises(cfg, mode):
        event("invalid: both raise")
        # e.g. a kernel wider than the padded input, or reflect padding >= the size
        x = torch.randn(cfg.input)
        w = torch.randn(cfg.weight_shape)
        with pytest.raises((RuntimeError, ValueError)):
            torchconv3d.conv3d(x, w, padding_mode=mode, **cfg.conv_kwargs)
        return
    event("valid: matched")
    run_case(CPU, cfg, dtype, mode=mode, layout=layout, weight_layout=weight_layout)


@st.composite
def invalid_calls(draw):
    """Mostly-valid F.conv3d arguments with one thing broken (or not): sizes, channels,
    groups, strides, dilations, paddings, dims, dtypes."""
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = draw(st.integers(0, 6))  # 0: empty channels
    cout = draw(st.integers(0, 6))
    wcin = draw(st.sampled_from([max(cin // groups, 0), draw(st.integers(0, 4))]))
    kernel = [draw(st.sampled_from([1, 2, 3, 3, 5, 0])) for _ in range(3)]
    xshape = [draw(st.integers(0, 2)), cin] + [draw(st.integers(0, 6)) for _ in range(3)]
    if draw(st.booleans()):
        xshape = xshape[1:]  # unbatched
    if draw(st.integers(0, 9)) == 0:
        xshape = xshape[:-1]  # wrong rank
    stride = [draw(st.sampled_from([1, 1, 1, 2, 3, 0, -1])) for _ in range(3)]
    dilation = [draw(st.sampled_from([1, 1, 1, 2, 3, 0, -1])) for _ in range(3)]
    padding = draw(st.one_of(st.integers(-1, 3), st.sampled_from(["same", "valid"])))
    bias = draw(st.sampled_from([None, cout, cout + 1]))
    wdtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64]))
    return xshape, [cout, wcin] + kernel, bias, stride, padding, dilation, groups, wdtype


@FUZZ
@given(invalid_calls())
def test_random_invalid_calls_raise_exactly_when_torch_does(call):
    xshape, wshape, bias, stride, padding, dilation, groups, wdtype = call
    torch.manual_seed(0)
    x = torch.randn(xshape)
    w = torch.randn(wshape, dtype=wdtype)
    b = None if bias is None else torch.randn(bias)
    try:
        ref = F.conv3d(x, w, b, stride, padding, dilation, groups)
    except (RuntimeError, ValueError, IndexError) as e:  # torch's IndexError is a torch bug
        torch_error = e
    else:
        torch_error = None
    try:
        ours = torchconv3d.conv3d(x, w, b, stride, padding, dilation, groups)
    except (RuntimeError, ValueError) as e:
        assert str(e)  # a message, naming what it saw
        if torch_error is None:
            # Known deviation: for an empty input torch skips its argument checks (e.g.
            # dilation 0 with batch 0 returns a tensor); we check every call the same way.
            assert x.numel() == 0, f"we raised but torch did not: {e}"
            event("we raise, torch skips checks on an empty input")
            return
        event("both raise")
        return
    if torch_error is not None and "same' is not supported for strided" in str(torch_error):
        event("extension: 'same' with stride")  # TensorFlow's rule, see resolve_padding
        return
    assert torch_error is None, f"torch raised but we did not: {torch_error}"
    event("both accept")
    if x.numel() == 0 and ref.shape[-4] != w.shape[0]:
        return  # torch quirk: batch 0 with 0 input channels gives 0 output channels
    assert ours.shape == ref.shape
    if ref.numel():
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)
