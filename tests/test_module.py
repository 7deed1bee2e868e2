"""The nn.Module surface: a drop-in for nn.Conv3d, and convert()."""
import pytest
import torch
import torch.nn as nn

import torchconv3d
from conftest import rel_err

ARGS = [
    dict(in_channels=4, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 1, 2), stride=(1, 2, 1), padding=(1, 0, 1),
         dilation=(2, 1, 1), groups=2, bias=False, padding_mode="reflect"),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", groups=6,
         padding_mode="circular"),
    dict(in_channels=3, out_channels=5, kernel_size=2, padding="valid", padding_mode="replicate"),
]


@pytest.mark.parametrize("kwargs", ARGS)
def test_same_parameters_keys_and_repr(kwargs):
    torch.manual_seed(7)
    ref = nn.Conv3d(**kwargs)
    torch.manual_seed(7)
    ours = torchconv3d.Conv3d(**kwargs)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (ka, a), (kb, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    assert isinstance(ours, nn.Conv3d)


@pytest.mark.parametrize("kwargs", ARGS)
def test_forward_backward_match_module(kwargs):
    ref = nn.Conv3d(**kwargs, dtype=torch.float64)
    ours = torchconv3d.Conv3d(**kwargs, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, kwargs["in_channels"], 6, 7, 8, dtype=torch.float64)
    ya, yb = ref(x), ours(x)
    assert rel_err(yb, ya) <= 1e-10
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    assert rel_err(ours.weight.grad, ref.weight.grad) <= 1e-10


def test_device_and_dtype_arguments():
    m = torchconv3d.Conv3d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.weight.device.type == "cpu"


def test_extension_paddings_in_module():
    m = torchconv3d.Conv3d(3, 4, 3, stride=2, padding="same")
    assert "padding=same" in repr(m)
    assert m(torch.randn(1, 3, 9, 8, 7)).shape == (1, 4, 5, 4, 4)  # ceil(in / 2)
    m = torchconv3d.Conv3d(3, 4, (3, 3, 3), padding="causal")
    assert m(torch.randn(1, 3, 6, 5, 5)).shape == (1, 4, 6, 5, 5)
    m = torchconv3d.Conv3d(3, 4, 3, padding=((2, 0), (1, 1), (0, 2)), padding_mode="reflect")
    assert m.padding == ((2, 0), (1, 1), (0, 2))
    assert m(torch.randn(1, 3, 6, 5, 5)).shape == (1, 4, 6, 5, 5)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])  # the others are refused
def test_causal_output_ignores_future_frames(mode):
    m = torchconv3d.Conv3d(2, 2, 3, padding="causal", padding_mode=mode, dilation=(2, 1, 1))
    x = torch.randn(1, 2, 7, 5, 5)
    y = m(x)
    for t in range(x.shape[2] - 1):
        x2 = x.clone()
        x2[:, :, t + 1:] = torch.randn_like(x2[:, :, t + 1:])  # every frame after t
        y2 = m(x2)
        assert torch.equal(y[:, :, :t + 1], y2[:, :, :t + 1]), f"frame <= {t} saw the future"
        assert not torch.equal(y[:, :, t + 1:], y2[:, :, t + 1:])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.BatchNorm3d(8), nn.ReLU(),
            nn.Conv3d(8, 8, 3, padding=1, groups=8, padding_mode="replicate"),
            nn.Conv3d(8, 4, 1),
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3, 4)))


def test_convert_keeps_parameters_and_outputs():
    torch.manual_seed(3)
    net = Net().double()
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    ref = net(x)
    params = {name: p for name, p in net.named_parameters()}
    out = torchconv3d.convert(net)
    assert out is net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 3 and all(type(m) is torchconv3d.Conv3d for m in convs)
    for name, p in net.named_parameters():
        assert p is params[name], name  # the very same Parameter objects
    assert rel_err(net(x), ref) <= 1e-10
    # A bare nn.Conv3d converts to a new module.
    single = nn.Conv3d(2, 3, 3)
    conv = torchconv3d.convert(single)
    assert type(conv) is torchconv3d.Conv3d and conv.weight is single.weight
    assert torchconv3d.convert(conv) is conv  # already ours: untouched


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.bfloat16), ("cuda", torch.bfloat16), ("cuda", torch.float16)])
def test_autocast_like_nn_conv3d(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("autocast('cuda') needs a CUDA GPU")
    ref = nn.Conv3d(4, 6, 3, padding=1).to(device)
    ours = torchconv3d.Conv3d(4, 6, 3, padding=1).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 5, 6, 7, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        ya = ref(x)
        yb = ours(x)
    assert ya.dtype == yb.dtype == dtype
    assert rel_err(yb, ya) <= 2e-2
    yb.float().sum().backward()
    assert x.grad.dtype == torch.float32 and ours.weight.grad.dtype == torch.float32


def test_same_matches_nn_conv3d_for_even_kernels():
    ref = nn.Conv3d(3, 4, (2, 3, 4), padding="same", dilation=(1, 2, 1), dtype=torch.float64)
    ours = torchconv3d.Conv3d(3, 4, (2, 3, 4), padding="same", dilation=(1, 2, 1),
                              dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    assert rel_err(ours(x), ref(x)) <= 1e-10


def test_padding_rules_by_hand():
    from torchconv3d.functional import resolve_padding
    # TF 'same', stride 2: in 9 -> out 5, total (5-1)*2 + 3 - 9 = 2 -> (1, 1);
    # in 8 -> out 4, total 1 -> (0, 1); in 7, k 1 -> out 4, total 0.
    assert resolve_padding("same", [3, 3, 1], [2, 2, 2], [1, 1, 1], [9, 8, 7]) == [1, 1, 0, 1, 0, 0]
    # causal: depth (k-1)*d before and nothing after; H, W as 'same' (k 3, d 1 -> (1, 1))
    assert resolve_padding("causal", [3, 3, 3], [1, 1, 1], [2, 1, 1], [6, 5, 5]) == [4, 0, 1, 1, 1, 1]
    assert resolve_padding(((2, 0), 1, (0, 3)), [3] * 3, [1] * 3, [1] * 3, [5] * 3) == [2, 0, 1, 1, 0, 3]
    assert resolve_padding("valid", [3] * 3, [1] * 3, [1] * 3, [5] * 3) == [0] * 6
