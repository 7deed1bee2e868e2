"""python -m torchconv3d: build if needed, check against nn.Conv3d, time a few real layers."""
import contextlib
import platform
import sys

import torch
import torch.nn as nn

import torchconv3d
from torchconv3d import _loader
from torchconv3d.benchmark import QUICK, SUITE, make_inputs, ours, time_impls, torch_conv

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def accuracy(layer, dtype):
    """Largest relative error (max |diff| / max |ref|) over output and the three gradients,
    against nn.Conv3d run in float64 on the same values."""
    ref = nn.Conv3d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                    layer.padding, layer.dilation, layer.groups, dtype=torch.float64)
    mine = torchconv3d.Conv3d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                              layer.padding, layer.dilation, layer.groups, dtype=dtype)
    mine.load_state_dict(ref.state_dict())  # copies (and rounds) the weights into dtype
    ref.load_state_dict(mine.state_dict())  # so both see exactly the same values
    x, _, _ = make_inputs(layer, dtype)
    results = []
    for m, dt in ((ref, torch.float64), (mine, dtype)):
        xi = x.to(dt).requires_grad_()
        y = m(xi)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=dt)).view_as(y))
        results.append((y, xi.grad, m.weight.grad, m.bias.grad))
    return max(((b.double() - a).abs().max() / a.abs().max()).item()
               for a, b in zip(*results))


def main():
    print(f"torchconv3d {torchconv3d.__version__} ({_loader.BACKEND} build: {_loader.LIBRARY})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, our CPU kernels: {_loader.cpu_isa()}")
    print()
    print("Each layer: forward + backward (input, weight, bias grads), float32, median of 5 or more runs.")
    print("err = max|ours - nn.Conv3d in float64| / max|nn.Conv3d in float64|, output and all gradients.")
    print("vol2col = torch with oneDNN disabled (its own im2col + GEMM path).")
    print()
    head = (f"{'layer':<20} {'GFLOP':>6} {'err f64':>8} {'err f32':>8} {'ours ms':>8} "
            f"{'oneDNN ms':>9} {'vol2col ms':>10} {'vs oneDNN':>9} {'vs vol2col':>10}")
    print(head)
    print("-" * len(head))
    ok = True
    layers = [l for l in SUITE if l.name in QUICK]
    for layer in layers:
        errs = {dt: accuracy(layer, dt) for dt in TOL}
        ok &= all(errs[dt] <= TOL[dt] for dt in TOL)
        no_mkldnn = lambda: torch.backends.mkldnn.flags(enabled=False)  # noqa: E731
        t = time_impls({"ours": (ours(layer), contextlib.nullcontext),
                        "onednn": (torch_conv(layer), contextlib.nullcontext),
                        "vol2col": (torch_conv(layer), no_mkldnn)},
                       layer, backward=True, reps=5)
        gflop = 3 * layer.flops() / 1e9
        print(f"{layer.name:<20} {gflop:6.2f} {errs[torch.float64]:8.1e} "
              f"{errs[torch.float32]:8.1e} {t['ours'] * 1e3:8.1f} {t['onednn'] * 1e3:9.1f} "
              f"{t['vol2col'] * 1e3:10.1f} {t['onednn'] / t['ours']:8.2f}x "
              f"{t['vol2col'] / t['ours']:9.2f}x")
    print()
    print("accuracy: " + ("OK (float64 <= 1e-10, float32 <= 1e-5)" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
