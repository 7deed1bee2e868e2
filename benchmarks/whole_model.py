"""Whole models on our kernels: convert() a model, count what runs on torchconv3d, check the
outputs and gradients against the original in float64, and time the model against torch in
the same process (interleaved, median of --reps, after a warm-up).

    python benchmarks/whole_model.py            # MONAI 3D U-Net (if monai is installed)
                                                # and a causal video-VAE block

Models: MONAI's UNet (pip install monai; 19 Conv3d + 4 ConvTranspose3d with
num_res_units=2), and a Wan-style causal residual block built as diffusers builds it: a
Conv3d subclass whose forward pads time causally with F.pad and calls super().forward()
(a look-alike of diffusers' WanCausalConv3d; diffusers itself is not needed).
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchconv3d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import machine_name  # noqa: E402


class WanStyleCausalConv3d(nn.Conv3d):
    """diffusers' WanCausalConv3d in outline: time padded (2 * p, 0) with F.pad, height and
    width symmetrically, then nn.Conv3d.forward with no padding of its own."""

    def __init__(self, *args, padding=0, **kwargs):
        super().__init__(*args, padding=padding, **kwargs)
        p = self.padding
        self._causal = (p[2], p[2], p[1], p[1], 2 * p[0], 0)
        self.padding = (0, 0, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self._causal))


class CausalResBlock(nn.Module):
    """norm -> SiLU -> causal 3x3x3 -> norm -> SiLU -> causal 3x3x3, plus a 1x1x1 shortcut
    where the channels change (the shape of Wan's / CogVideoX's VAE residual blocks)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = WanStyleCausalConv3d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = WanStyleCausalConv3d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.shortcut(x)


def models():
    out = []
    try:
        from monai.networks.nets import UNet
        unet = UNet(spatial_dims=3, in_channels=1, out_channels=2,
                    channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
        out.append(("MONAI UNet 3D (16-256 ch, 4 levels)", unet, (1, 1, 64, 64, 64)))
    except ImportError:
        print("# monai not installed: its UNet is skipped (pip install monai)")
    vae = nn.Sequential(CausalResBlock(128, 128), CausalResBlock(128, 256))
    out.append(("causal VAE blocks (Wan-style, 128->256 ch)", vae, (1, 128, 9, 32, 32)))
    return out


def convs(m):
    return sum(isinstance(x, (nn.Conv3d, nn.ConvTranspose3d)) for x in m.modules())


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check_float64(model, ours, shape):
    x = torch.randn(shape, dtype=torch.float64)
    ref, got = copy.deepcopy(model).double(), copy.deepcopy(ours).double()
    xr, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yg = ref(xr), got(xg)
    gy = torch.randn_like(yr)
    yr.backward(gy)
    yg.backward(gy)
    # Relative to the largest parameter gradient: a bias followed by a normalisation has a
    # gradient that is zero but for rounding, where a per-tensor ratio means nothing.
    pairs = list(zip(ref.parameters(), got.parameters()))
    scale = max(pr.grad.abs().max().item() for pr, _ in pairs)
    grads = max((pg.grad - pr.grad).abs().max().item() for pr, pg in pairs) / scale
    return max_rel(yg, yr), max(grads, max_rel(xg.grad, xr.grad))


def timed(model, x, backward):
    def run():
        if backward:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return run


def median_ms(fns, reps):
    for f in fns:
        f()  # one-time costs (oneDNN primitives, thread pools)
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"# torchconv3d ({torch.ops.torchconv3d.cpu_isa()} kernels) vs torch "
          f"{torch.__version__} on {machine_name(cpu=True)}, float32")
    print("| model | input | convs | on our kernels | float64 output / grads max rel | "
          "inference ms torch / ours | training step ms torch / ours |")
    print("|---|---|---|---|---|---|---|")
    for name, model, shape in models():
        ours, report = torchconv3d.convert(copy.deepcopy(model), return_report=True)
        out_err, grad_err = check_float64(model, ours, shape)
        x = torch.randn(shape)
        fwd = median_ms([timed(model, x, False), timed(ours, x, False)], args.reps)
        step = median_ms([timed(model, x, True), timed(ours, x, True)], args.reps)
        print(f"| {name} | {tuple(shape)} | {convs(model)} | {len(report.swapped)} "
              f"({len(report.left)} left) | {out_err:.1e} / {grad_err:.1e} | "
              f"{fwd[0]:.1f} / {fwd[1]:.1f} ({fwd[0] / fwd[1]:.2f}x) | "
              f"{step[0]:.1f} / {step[1]:.1f} ({step[0] / step[1]:.2f}x) |")


if __name__ == "__main__":
    main()
