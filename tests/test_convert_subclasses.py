"""convert() on nn.Conv3d subclasses, as video VAEs build them, and its report.

WanCausalConv3d and CogVideoXSafeConv3d below follow diffusers' classes (diffusers is not
a dependency): Wan pads time causally with F.pad and calls super().forward;
CogVideoX splits a large input along time into overlapping chunks and calls
super().forward per chunk (its threshold is 2 GiB; here a parameter, so that small inputs
take the chunked path).
"""
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import torchconv3d
from conftest import rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


class WanCausalConv3d(nn.Conv3d):
    """diffusers.models.autoencoders.autoencoder_kl_wan.WanCausalConv3d, in spirit."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        # time: all of it before (causal); height and width: both sides
        self._padding = (self.padding[2], self.padding[2], self.padding[1], self.padding[1],
                         2 * self.padding[0], 0)
        self.padding = (0, 0, 0)

    def forward(self, x, cache_x=None):
        padding = list(self._padding)
        if cache_x is not None and self._padding[4] > 0:
            x = torch.cat([cache_x, x], dim=2)
            padding[4] -= cache_x.shape[2]
        x = F.pad(x, padding)
        return super().forward(x)


class CogVideoXSafeConv3d(nn.Conv3d):
    """diffusers' CogVideoXSafeConv3d, in spirit: above a memory limit, the input is cut
    into time chunks that overlap by kernel_size - 1 frames."""

    limit_bytes = 2 * 1024**3

    def forward(self, input):
        memory = input.numel() * input.element_size()
        if memory > self.limit_bytes:
            kernel_size = self.kernel_size[0]
            part_num = int(memory / self.limit_bytes) + 1
            chunks = list(torch.chunk(input, part_num, dim=2))
            if kernel_size > 1:
                chunks = [chunks[0]] + [
                    torch.cat((chunks[i - 1][:, :, -kernel_size + 1:], chunks[i]), dim=2)
                    for i in range(1, len(chunks))]
            outputs = []
            for chunk in chunks:
                outputs.append(super().forward(chunk))
            return torch.cat(outputs, dim=2)
        return super().forward(input)


class OwnConvForward(nn.Conv3d):
    """Overrides _conv_forward itself: our kernels would never be reached."""

    def _conv_forward(self, input, weight, bias):
        return F.conv3d(input, weight * 0.5, bias, self.stride, self.padding, self.dilation,
                        self.groups)


class UpsampleTranspose(nn.ConvTranspose3d):
    """A subclass adding a method only: its forward is nn.ConvTranspose3d's."""

    def upsampling_factor(self):
        return self.stride


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = WanCausalConv3d(3, 4, 3, padding=1)
        self.mid = CogVideoXSafeConv3d(4, 4, 3, padding=1)
        self.mid.limit_bytes = 3000  # the test inputs take the chunked path
        self.plain = nn.Conv3d(4, 4, 1)
        self.odd = OwnConvForward(4, 4, 1)
        self.up = UpsampleTranspose(4, 2, 2, stride=2)

    def forward(self, x):
        return self.up(self.odd(self.plain(self.mid(self.conv_in(x)))))


class CountOps(TorchDispatchMode):
    """Counts the operators that reach the dispatcher's Python mode level."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _outputs_and_grads(model, x):
    x = x.detach().requires_grad_()
    y = model(x)
    gy = torch.randn_like(y, generator=torch.Generator().manual_seed(3))
    params = list(model.parameters())
    grads = torch.autograd.grad(y, [x] + params, gy)
    return [y, *grads]


@pytest.mark.parametrize("device", DEVICES)
def test_subclasses_keep_their_forward_and_run_our_kernels(device):
    torch.manual_seed(0)
    model = Decoder().double().to(device)
    x = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64, device=device)
    expected = _outputs_and_grads(model, x)
    params = list(model.parameters())
    model, report = torchconv3d.convert(model, return_report=True)

    # isinstance and repr of the originals hold; Parameters are the same objects
    assert isinstance(model.conv_in, WanCausalConv3d)
    assert isinstance(model.conv_in, torchconv3d.Conv3d)
    assert isinstance(model.mid, CogVideoXSafeConv3d)
    assert isinstance(model.up, UpsampleTranspose)
    assert isinstance(model.up, torchconv3d.ConvTranspose3d)
    assert type(model.odd) is OwnConvForward
    assert repr(model.conv_in).startswith("WanCausalConv3d(3, 4")
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model.up.upsampling_factor() == (2, 2, 2)

    actual = _outputs_and_grads(model, x)
    for a, e in zip(actual, expected):
        assert rel_err(a, e) <= 1e-12

    # Our operators ran where torch's convolution did: Wan 1, CogVideoX once per chunk
    # (its rule on a (2, 4, 5, 4, 4) float64 input), the plain one 1; the transposed layer
    # 1; torch's convolution only for the subclass that overrides _conv_forward.
    with CountOps() as ops:
        _outputs_and_grads(model, x)
    mid_chunks = len(torch.chunk(torch.empty(5), int(2 * 4 * 5 * 4 * 4 * 8 / 3000) + 1))
    assert mid_chunks >= 2
    assert ops.counts.get("torchconv3d.conv3d_forward") == 1 + mid_chunks + 1
    assert ops.counts.get("torchconv3d.conv_transpose3d_forward") == 1
    assert ops.counts.get("torchconv3d.conv_transpose3d_backward") == 1
    assert ops.counts.get("aten.convolution") == 1  # OwnConvForward's

    assert [name for name, _ in report.swapped] == ["conv_in", "mid", "plain", "up"]
    assert [(name, cls) for name, cls, _ in report.left] == [("odd", "OwnConvForward")]
    assert "overrides _conv_forward" in report.left[0][2]


def test_convert_returns_the_model_and_reports_when_asked(capsys, caplog):
    model = Decoder()
    with caplog.at_level(logging.INFO, logger="torchconv3d"):
        assert torchconv3d.convert(model) is model
    assert "swapped 4, left 1" in caplog.text
    assert capsys.readouterr().out == ""
    torchconv3d.convert(Decoder(), verbose=True)
    out = capsys.readouterr().out
    assert "swapped conv_in: WanCausalConv3d" in out
    assert "left    odd: OwnConvForward: OwnConvForward overrides _conv_forward" in out


def test_what_is_left_and_why():
    lazy = nn.LazyConv3d(4, 3)
    parametrized = nn.Conv3d(2, 2, 1)
    torch.nn.utils.parametrizations.weight_norm(parametrized)

    class OwnForwardTranspose(nn.ConvTranspose3d):
        def forward(self, x, output_size=None):
            return super().forward(x, output_size) * 2

    model = nn.ModuleDict(dict(lazy=lazy, parametrized=parametrized,
                               transposed=OwnForwardTranspose(2, 2, 2)))
    _, report = torchconv3d.convert(model, return_report=True)
    left = {name: why for name, _, why in report.left}
    assert report.swapped == []
    assert "lazy" in left["lazy"]
    assert "parametrized" in left["parametrized"]
    assert "overrides forward" in left["transposed"]
    assert model["lazy"] is lazy and model["parametrized"] is parametrized


def test_a_module_shared_by_two_parents_stays_shared():
    conv = WanCausalConv3d(2, 2, 3, padding=1)
    model = nn.ModuleList([nn.Sequential(conv), nn.Sequential(conv)])
    _, report = torchconv3d.convert(model, return_report=True)
    assert model[0][0] is model[1][0] and isinstance(model[0][0], torchconv3d.Conv3d)
    assert len(report.swapped) == 1
