"""The seeds' other layouts: TensorFlow's NDHWC input and MegEngine's grouped weight,
5-D bias and conv_mode."""
import pytest
import torch
import torch.nn.functional as F

import torchconv3d
from conftest import TOL, rel_err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("unbatched", [False, True])
def test_ndhwc_functional_matches_and_reads_in_place(unbatched, dtype):
    x = torch.randn(2, 5, 6, 7, 4, dtype=dtype, requires_grad=True)  # N D H W C
    w = torch.randn(6, 2, 3, 2, 3, dtype=dtype, requires_grad=True)
    xi = x[0] if unbatched else x
    with torch.profiler.profile() as prof:
        y = torchconv3d.conv3d(xi, w, padding=1, groups=2, padding_mode="reflect",
                               data_format="NDHWC")
    copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
    # The kernels read the NDHWC tensor where it is. The output is NDHWC as allocated
    # where nn.Conv3d's rule makes it channels_last_3d (float32 here), copied once to it
    # where the rule makes it contiguous (float64).
    assert sorted(copies) == (["aten::clone", "aten::copy_"] if dtype == torch.float64
                              else []), copies
    xr = x.detach().clone().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    xp = F.pad(xr.permute(0, 4, 1, 2, 3), (1, 1, 1, 1, 1, 1), mode="reflect")
    ref = F.conv3d(xp, wr, groups=2).permute(0, 2, 3, 4, 1)
    ref = ref[0] if unbatched else ref
    assert y.shape == ref.shape and y.is_contiguous()
    assert rel_err(y, ref) <= TOL[dtype]
    gy = torch.randn_like(ref)
    y.backward(gy)
    ref.backward(gy)
    assert rel_err(x.grad, xr.grad) <= TOL[dtype]
    assert rel_err(w.grad, wr.grad) <= TOL[dtype]


def test_ndhwc_module():
    m = torchconv3d.Conv3d(4, 8, 3, padding="same", data_format="NDHWC", dtype=torch.float64)
    assert "data_format='NDHWC'" in repr(m)
    x = torch.randn(2, 5, 6, 7, 4, dtype=torch.float64)
    ref = F.conv3d(x.permute(0, 4, 1, 2, 3), m.weight, m.bias, padding=1)
    assert rel_err(m(x), ref.permute(0, 2, 3, 4, 1)) <= 1e-10


def test_megengine_grouped_weight_and_bias_load_into_module():
    groups, cin, cout = 3, 6, 9
    mge_w = torch.randn(groups, cout // groups, cin // groups, 3, 3, 3, dtype=torch.float64)
    mge_b = torch.randn(1, cout, 1, 1, 1, dtype=torch.float64)
    m = torchconv3d.Conv3d(cin, cout, 3, padding=1, groups=groups, dtype=torch.float64)
    m.load_state_dict({"weight": mge_w, "bias": mge_b})
    x = torch.randn(2, cin, 5, 6, 7, dtype=torch.float64)
    # MegEngine: group g uses weight[g] on input channels g*cin/groups... and writes output
    # channels g*cout/groups...: exactly torch's (cout, cin/groups, ...) after merging dims.
    ref = torch.cat([
        F.conv3d(x[:, g * 2:(g + 1) * 2], mge_w[g], mge_b.flatten()[g * 3:(g + 1) * 3],
                 padding=1)
        for g in range(groups)], dim=1)
    assert rel_err(m(x), ref) <= 1e-10
    # and the functional takes them directly
    y = torchconv3d.conv3d(x, mge_w, mge_b, padding=1, groups=groups)
    assert rel_err(y, ref) <= 1e-10


def test_megengine_layout_errors_name_sizes():
    x = torch.randn(1, 6, 4, 4, 4)
    with pytest.raises(ValueError, match=r"size \[2, 3, 3, 1, 1, 1\] has 2 groups, but groups=3"):
        torchconv3d.conv3d(x, torch.randn(2, 3, 3, 1, 1, 1), groups=3)
    with pytest.raises(ValueError, match=r"\(1, C_out, 1, 1, 1\), but got \[1, 3, 2, 1, 1\]"):
        torchconv3d.conv3d(x, torch.randn(3, 6, 1, 1, 1), torch.randn(1, 3, 2, 1, 1))
    with pytest.raises(ValueError, match="data_format must be one of"):
        torchconv3d.conv3d(x, torch.randn(3, 6, 1, 1, 1), data_format="NHWC")
    with pytest.raises(ValueError, match="conv_mode must be one of"):
        torchconv3d.Conv3d(6, 3, 1, conv_mode="corr")


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_mode_convolution_flips_the_kernel(groups):
    x = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    m = torchconv3d.Conv3d(4, 6, (3, 2, 3), padding=(1, 1, 0), groups=groups,
                           conv_mode="convolution", dtype=torch.float64)
    assert "conv_mode='convolution'" in repr(m)
    y = m(x)
    ref = F.conv3d(x, m.weight.flip(2, 3, 4), m.bias, padding=(1, 1, 0), groups=groups)
    assert rel_err(y, ref) <= 1e-10
    # A true convolution: a unit impulse returns the kernel itself, not its mirror.
    delta = torch.zeros(1, 1, 5, 5, 5, dtype=torch.float64)
    delta[0, 0, 2, 2, 2] = 1
    k = torch.randn(1, 1, 3, 3, 3, dtype=torch.float64)
    out = torchconv3d.conv3d(delta, k, padding=1, conv_mode="convolution")
    assert torch.equal(out[0, 0, 1:4, 1:4, 1:4], k[0, 0])
    gw, = torch.autograd.grad(y.sum(), m.weight)
    assert gw.shape == m.weight.shape
