"""Bad input: a clear error naming the sizes seen, raised before any kernel runs,
wherever nn.Conv3d / F.conv3d rejects the same call."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d
from torchconv3d import conv3d

X = torch.randn(2, 4, 5, 6, 7)
W = torch.randn(8, 4, 3, 3, 3)

CASES = [
    # (id, call, exception, pattern, the torch call that must fail too)
    ("rank3", lambda f: f(torch.randn(4, 5, 6), W), RuntimeError,
     r"Expected 4D \(unbatched\) or 5D \(batched\) input.*size: \[4, 5, 6\]"),
    ("rank6", lambda f: f(torch.randn(1, 2, 4, 5, 6, 7), W), RuntimeError,
     r"5D \(batched\) input.*\[1, 2, 4, 5, 6, 7\]"),
    ("channels", lambda f: f(X, torch.randn(8, 3, 3, 3, 3)), RuntimeError,
     r"weight of size \[8, 3, 3, 3, 3\], expected input\[2, 4, 5, 6, 7\] to have 3 channels, "
     r"but got 4"),
    ("groups_divide", lambda f: f(X, torch.randn(7, 2, 3, 3, 3), groups=2), RuntimeError,
     r"groups=2, expected weight to be divisible by 2 .*\[7, 2, 3, 3, 3\]"),
    ("groups_zero", lambda f: f(X, W, groups=0), RuntimeError, r"non-positive groups"),
    ("kernel_too_big", lambda f: f(X, torch.randn(8, 4, 6, 3, 3)), RuntimeError,
     r"padded input size per channel: \(5 x 6 x 7\)\. Kernel size: \(6 x 3 x 3\)"),
    ("kernel_too_big_dilated", lambda f: f(X, W, dilation=(3, 1, 1)), RuntimeError,
     r"Kernel size: \(7 x 3 x 3\)"),
    ("empty_depth_padded", lambda f: f(torch.randn(1, 4, 0, 6, 7), W, padding=2), RuntimeError,
     r"Only zero batch or zero channel inputs.*\[1, 4, 0, 6, 7\]"),
    ("negative_padding", lambda f: f(X, W, padding=-1), RuntimeError,
     r"negative padding is not supported"),
    ("zero_stride", lambda f: f(X, W, stride=(1, 0, 1)), RuntimeError,
     r"non-positive stride is not supported, got stride=\[1, 0, 1\]"),
    ("zero_dilation", lambda f: f(X, W, dilation=0), RuntimeError,
     r"dilation should be greater than zero"),
    ("stride_length", lambda f: f(X, W, stride=(1, 1)), RuntimeError,
     r"expected stride to be a single integer value or a list of 3 values.*\[1, 1\]"),
    ("padding_length", lambda f: f(X, W, padding=(1, 1)), RuntimeError,
     r"expected padding to be a single integer value or a list of 3 values.*\[1, 1\]"),
    ("groups_above_out_channels", lambda f: f(X, torch.randn(2, 1, 3, 3, 3), groups=4),
     RuntimeError, r"groups=4, expected weight to be at least 4 at dimension 0"),
    ("integer_input_float_bias", lambda f: f(X.long(), W.long(), torch.randn(8)),
     RuntimeError, r"(?i)Input type \(long\) and bias type \(float\) should be the same"),
    ("padding_string", lambda f: f(X, W, padding="full"), (ValueError, RuntimeError),
     r"[Ii]nvalid padding string"),
    ("dtype_mismatch", lambda f: f(X.double(), W), RuntimeError,
     r"(?i)Input type \(double\) and weight type \(float\) should be the same"),
    ("bias_dtype", lambda f: f(X, W, torch.randn(8).double()), RuntimeError,
     r"(?i)Input type \(float\) and bias type \(double\)"),
    ("bias_shape", lambda f: f(X, W, torch.randn(7)), RuntimeError,
     r"expected bias to be 1-dimensional with 8 elements, but got bias of size \[7\]"),
    ("bias_2d", lambda f: f(X, W, torch.randn(8, 1)), RuntimeError,
     r"bias of size \[8, 1\]"),
    ("weight_rank", lambda f: f(X, torch.randn(8, 4, 3, 3)), RuntimeError,
     r"(5D weight.*\[8, 4, 3, 3\]|expected stride)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_functional_rejects_like_torch(case):
    _, call, exc, pattern = case
    with pytest.raises(Exception):
        call(F.conv3d)  # torch rejects it too
    with pytest.raises(exc, match=pattern):
        call(conv3d)


@pytest.mark.parametrize("dtype,name", [(torch.int64, "Long"), (torch.int32, "Int"),
                                        (torch.complex64, "ComplexFloat"),
                                        (torch.complex128, "ComplexDouble")])
def test_integer_and_complex_dtypes_are_refused(dtype, name):
    """torch's CPU conv3d takes both; README's limits say we do not."""
    F.conv3d(X.to(dtype), W.to(dtype))
    with pytest.raises(RuntimeError, match=r"float32, float64, bfloat16 and float16 tensors "
                       rf"\(not integer or complex ones\), but got input of dtype {name}"):
        conv3d(X.to(dtype), W.to(dtype))


def test_unknown_padding_mode():
    with pytest.raises(ValueError, match=r"padding_mode must be one of .*got padding_mode='foo'"):
        conv3d(X, W, padding=1, padding_mode="foo")
    with pytest.raises(ValueError, match=r"padding_mode"):
        torchconv3d.Conv3d(4, 8, 3, padding_mode="foo")


def test_module_constructor_checks():
    with pytest.raises(ValueError, match=r"divisible by groups"):
        torchconv3d.Conv3d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match=r"Invalid padding string 'full'"):
        torchconv3d.Conv3d(4, 6, 3, padding="full")


@pytest.mark.parametrize("pad", [5, (0, 0, 7)])
def test_reflect_padding_not_smaller_than_input(pad):
    for cls in (nn.Conv3d, torchconv3d.Conv3d):
        m = cls(4, 8, 3, padding=pad, padding_mode="reflect")
        with pytest.raises(RuntimeError, match=r"(reflect padding must be smaller|Padding size should be less)"):
            m(X)
    with pytest.raises(RuntimeError, match=r"reflect padding must be smaller than the input, "
                       r"but got padding \(5, 5\) for the depth of input \[2, 4, 5, 6, 7\]"):
        conv3d(X, W, padding=5, padding_mode="reflect")


def test_circular_padding_wrapping_twice():
    with pytest.raises(RuntimeError):
        nn.Conv3d(4, 8, 3, padding=6, padding_mode="circular")(X)
    with pytest.raises(RuntimeError, match=r"circular padding wraps around more than once: "
                       r"padding \(6, 6\) for the depth"):
        conv3d(X, W, padding=6, padding_mode="circular")


def test_bad_padding_spec():
    with pytest.raises(RuntimeError, match=r"or 3 \(before, after\) pairs"):
        conv3d(X, W, padding=(1, 1))
    with pytest.raises(ValueError, match=r"\(before, after\) pair of ints, but got \(1, 2, 3\)"):
        conv3d(X, W, padding=((1, 2, 3), 1, 1))


def test_backward_op_checks_grad_output():
    gy = torch.randn(2, 8, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"Expected grad_output of size \[2, 8, 3, 4, 5\].*"
                       r"but got \[2, 8, 3, 4, 4\]"):
        torch.ops.torchconv3d.conv3d_backward(gy, X, W, [1] * 3, [0] * 6, [1] * 3, 1, "zeros",
                                              [True, True, True])


def test_operator_checks_argument_lengths():
    with pytest.raises(RuntimeError, match=r"padding to have 6 values"):
        torch.ops.torchconv3d.conv3d_forward(X, W, None, [1] * 3, [0] * 3, [1] * 3, 1, "zeros")


def _raw_backward(gy=None, x=X, w=W, stride=(1, 1, 1), mask=(True, True, True), **kw):
    gy = torch.randn(2, 8, 3, 4, 5) if gy is None else gy
    return torch.ops.torchconv3d.conv3d_backward(
        gy, x, w, list(stride), kw.get("padding", [0] * 6), [1] * 3, kw.get("groups", 1),
        kw.get("mode", "zeros"), list(mask))


# Calls the operators reject, beyond CASES: raw-operator forms a user of torch.ops reaches.
RAW_CASES = [
    ("mode", lambda: torch.ops.torchconv3d.conv3d_forward(X, W, None, [1] * 3, [0] * 6, [1] * 3,
                                                          1, "bogus")),
    ("integer_dtype", lambda: conv3d(X.long(), W.long())),
    ("complex_dtype", lambda: conv3d(X.to(torch.complex64), W.to(torch.complex64))),
    ("stride_one_value", lambda: torch.ops.torchconv3d.conv3d_forward(X, W, None, [2], [0] * 6,
                                                                      [1] * 3, 1, "zeros")),
    ("dilation_overflow", lambda: conv3d(X, W, dilation=(1, 1, 2**62))),
    ("padded_size_overflow", lambda: conv3d(X, W, padding=(0, 0, (2**62 - 1, 2**62 - 1)))),
    ("backward_channels", lambda: _raw_backward(w=torch.randn(8, 3, 3, 3, 3))),
    ("backward_stride_zero", lambda: _raw_backward(stride=(1, 0, 1))),
    ("backward_mode", lambda: _raw_backward(mode="bogus")),
    ("backward_grad_output_dtype", lambda: _raw_backward(gy=torch.randn(2, 8, 3, 4, 5).double())),
    ("backward_mask_length", lambda: _raw_backward(mask=(True,))),
    ("backward_grad_output_on_meta", lambda: _raw_backward(gy=torch.randn(2, 8, 3, 4, 5,
                                                                          device="meta"))),
]
ALL_CASES = [(c[0], (lambda call=c[1]: call(conv3d))) for c in CASES] + RAW_CASES


def _raised(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_fake_kernels_reject_like_the_checker(case):
    """What torch.compile and torch.export trace (the fake kernels, on FakeTensors) rejects
    every call the C++ checker rejects, with its exception type and message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    eager = _raised(case[1])
    assert eager is not None, "the call was accepted"
    with FakeTensorMode(allow_non_fake_inputs=True):
        assert _raised(case[1]) == eager


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_compile_and_export_reject_like_eager(case):
    """Each rejected call, traced: torch.export raises the eager exception, type and text;
    torch.compile(fullgraph=True) raises dynamo's wrapper of it (a RuntimeError, as it does
    for F.conv3d) with the eager text."""
    eager = _raised(case[1])
    assert eager is not None, "the call was accepted"
    torch.compiler.reset()  # (the CASES lambdas share one code object)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException) as compiled:
        torch.compile(case[1], fullgraph=True)()
    assert eager[1] in str(compiled.value)

    class Call(torch.nn.Module):
        def forward(self, x):
            return case[1]()

    with pytest.raises(eager[0]) as exported:
        torch.export.export(Call(), (torch.randn(1),))
    assert str(exported.value) == eager[1]


def test_errors_leave_the_process_usable():
    for case in CASES:
        with pytest.raises(Exception):
            case[1](conv3d)
    assert conv3d(X, W).shape == (2, 8, 3, 4, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match=r"same device.*input on cpu and weight on cuda"):
        conv3d(X, W.cuda())
