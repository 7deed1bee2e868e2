"""Layer shapes from real 3D networks and a side-by-side timer against torch.

Used by `python -m torchconv3d` (a few layers) and benchmarks/run.py (the whole suite).
Shapes are the papers' layers, scaled (batch, frames or volume) to run in seconds on a
2-core CPU; `scale` notes what was cut.
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .functional import conv3d, conv_transpose3d, resolve_padding
from .ops import output_size


@dataclass(frozen=True)
class Layer:
    name: str
    source: str
    batch: int
    in_channels: int
    out_channels: int
    size: tuple  # input (D, H, W)
    kernel: tuple
    stride: tuple = (1, 1, 1)
    padding: object = 0
    dilation: tuple = (1, 1, 1)
    groups: int = 1
    scale: str = ""
    tags: tuple = field(default=())
    # A transposed layer (nn.ConvTranspose3d): in/out channels are its own, weight
    # (in, out / groups, k...), padding an int or 3, output size
    # (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.
    transposed: bool = False
    output_padding: tuple = (0, 0, 0)

    def pads(self):
        return resolve_padding(self.padding, list(self.kernel), list(self.stride),
                               list(self.dilation), list(self.size))

    def out_size(self):
        if self.transposed:
            p = self.pads()[0::2]
            return tuple((self.size[i] - 1) * self.stride[i] - 2 * p[i]
                         + self.dilation[i] * (self.kernel[i] - 1) + self.output_padding[i] + 1
                         for i in range(3))
        return tuple(output_size(self.size, self.kernel, self.stride, self.pads(), self.dilation))

    def weight_shape(self):
        channels = ((self.in_channels, self.out_channels // self.groups) if self.transposed
                    else (self.out_channels, self.in_channels // self.groups))
        return channels + tuple(self.kernel)

    def bytes(self, element_size, backward=False):
        """Fewest bytes a pass moves: input, weight and output once each (forward); backward
        reads grad_output, input and weight twice over and writes both gradients."""
        out = self.out_size()
        x = self.batch * self.in_channels * self.size[0] * self.size[1] * self.size[2]
        w = self.out_channels * (self.in_channels // self.groups) * (
            self.kernel[0] * self.kernel[1] * self.kernel[2])
        y = self.batch * self.out_channels * out[0] * out[1] * out[2]
        return element_size * (x + w + y) * (3 if backward else 1)

    def flops(self):
        """Multiply-adds x 2 of one forward pass; backward (input + weight) is twice this.
        (A transposed layer: each input element meets every tap of its group's weights.)"""
        kvol = self.kernel[0] * self.kernel[1] * self.kernel[2]
        if self.transposed:
            return (2 * self.batch * self.in_channels * self.size[0] * self.size[1]
                    * self.size[2] * (self.out_channels // self.groups) * kvol)
        out = self.out_size()
        return (2 * self.batch * self.out_channels * out[0] * out[1] * out[2]
                * (self.in_channels // self.groups) * kvol)


SUITE = [
    Layer("c3d_conv3a", "C3D conv3a (Tran et al. 2015)", 1, 128, 256, (8, 28, 28), (3, 3, 3),
          padding=1, scale="batch 1", tags=("dense",)),
    Layer("r3d18_layer2", "R3D-18 layer2 (Tran et al. 2018)", 1, 128, 128, (4, 28, 28),
          (3, 3, 3), padding=1, scale="batch 1", tags=("dense",)),
    Layer("r2plus1d_spatial", "R(2+1)D-18 layer1 1x3x3 (Tran et al. 2018)", 1, 64, 144,
          (8, 28, 28), (1, 3, 3), padding=(0, 1, 1), scale="56x56 -> 28x28", tags=("dense",)),
    Layer("r2plus1d_temporal", "R(2+1)D-18 layer1 3x1x1 (Tran et al. 2018)", 1, 144, 64,
          (8, 28, 28), (3, 1, 1), padding=(1, 0, 0), scale="56x56 -> 28x28", tags=("dense",)),
    Layer("i3d_stem", "I3D Conv3d_1a_7x7 (Carreira & Zisserman 2017)", 1, 3, 64, (16, 112, 112),
          (7, 7, 7), stride=(2, 2, 2), padding=3, scale="64x224x224 -> 16x112x112",
          tags=("dense",)),
    Layer("x3d_depthwise", "X3D-M res3 depthwise 3x3x3 (Feichtenhofer 2020)", 1, 96, 96,
          (8, 28, 28), (3, 3, 3), padding=1, groups=96, scale="16 -> 8 frames",
          tags=("depthwise",)),
    Layer("x3d_depthwise_s2", "X3D-M depthwise, stride (1,2,2) (Feichtenhofer 2020)", 1, 96, 96,
          (8, 56, 56), (3, 3, 3), stride=(1, 2, 2), padding=1, groups=96,
          scale="16 -> 8 frames", tags=("depthwise",)),
    Layer("unet3d_conv", "3D U-Net encoder 3x3x3 (Cicek et al. 2016)", 1, 32, 32, (32, 32, 32),
          (3, 3, 3), padding=1, scale="volume 64^3 -> 32^3", tags=("dense",)),
    Layer("nnunet_down", "nnU-Net stride-2 downsampling conv (Isensee et al. 2021)", 1, 32, 64,
          (32, 32, 32), (3, 3, 3), stride=(2, 2, 2), padding=1, scale="volume 128^3 -> 32^3",
          tags=("dense",)),
    Layer("unet3d_k2s2", "3D U-Net 2x2x2 stride-2 (Cicek et al. 2016)", 1, 32, 64,
          (32, 32, 32), (2, 2, 2), stride=(2, 2, 2), scale="volume 64^3 -> 32^3",
          tags=("dense",)),
    Layer("vnet_5x5x5", "V-Net stage-2 5x5x5 (Milletari et al. 2016)", 1, 16, 16, (32, 32, 32),
          (5, 5, 5), padding=2, scale="volume 64^3 -> 32^3, 32 -> 16 channels",
          tags=("dense",)),
    Layer("medicalnet_dilated", "MedicalNet layer3, dilation 2 (Chen et al. 2019)", 1, 64, 64,
          (16, 28, 28), (3, 3, 3), padding=2, dilation=(2, 2, 2),
          scale="256 -> 64 channels", tags=("dense", "dilated")),
    Layer("voxelmorph_enc", "VoxelMorph encoder stride-2 (Balakrishnan et al. 2019)", 1, 16, 32,
          (40, 48, 56), (3, 3, 3), stride=(2, 2, 2), padding=1, scale="160x192x224 / 4",
          tags=("dense",)),
]

# Decoder upsampling layers (nn.ConvTranspose3d), for benchmarks/run.py --transposed.
TRANSPOSED = [
    Layer("unet3d_up_k2s2", "3D U-Net synthesis up-convolution 2x2x2 stride 2 (Cicek et al. "
          "2016)", 1, 64, 64, (16, 16, 16), (2, 2, 2), stride=(2, 2, 2),
          scale="256 -> 64 channels, output 32^3", tags=("transposed",), transposed=True),
    Layer("monai_unet_up_k3s2", "MONAI UNet / DynUNet-style up-sampling 3x3x3 stride 2, "
          "padding 1, output_padding 1 (Kerfoot et al. 2018)", 1, 64, 32, (16, 16, 16),
          (3, 3, 3), stride=(2, 2, 2), padding=1, output_padding=(1, 1, 1),
          scale="output 32^3", tags=("transposed",), transposed=True),
    Layer("vae3d_up_k3s2", "3D (video) VAE decoder up-sampling 3x3x3 stride 2, padding 1, "
          "output_padding 1", 1, 128, 64, (4, 16, 16), (3, 3, 3), stride=(2, 2, 2),
          padding=1, output_padding=(1, 1, 1), scale="8 frames of 32x32 out, 128 channels",
          tags=("transposed",), transposed=True),
]

QUICK = ["r3d18_layer2", "r2plus1d_spatial", "x3d_depthwise", "nnunet_down",
         "medicalnet_dilated"]


def make_inputs(layer, dtype=torch.float32, device="cpu", channels_last=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((layer.batch, layer.in_channels) + tuple(layer.size), generator=g,
                    dtype=torch.float64)
    w = torch.randn(layer.weight_shape(), generator=g, dtype=torch.float64) * 0.1
    b = torch.randn(layer.out_channels, generator=g, dtype=torch.float64)
    x, w, b = (t.to(device=device, dtype=dtype) for t in (x, w, b))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, w, b


def ours(layer, padding_mode="zeros"):
    if layer.transposed:
        return lambda x, w, b: conv_transpose3d(x, w, b, layer.stride, layer.padding,
                                                layer.output_padding, layer.groups,
                                                layer.dilation)
    return lambda x, w, b: conv3d(x, w, b, layer.stride, layer.padding, layer.dilation,
                                  layer.groups, padding_mode)


def torch_conv(layer, padding_mode="zeros"):
    """What nn.Conv3d does: F.pad for the non-zero modes (and asymmetric zeros), F.conv3d
    (F.conv_transpose3d for a transposed layer)."""
    if layer.transposed:
        return lambda x, w, b: F.conv_transpose3d(x, w, b, layer.stride, layer.padding,
                                                  layer.output_padding, layer.groups,
                                                  layer.dilation)
    pads = layer.pads()
    before, after = pads[0::2], pads[1::2]
    torch_pads = (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1])

    def run(x, w, b):
        if padding_mode == "zeros" and before == after:
            return F.conv3d(x, w, b, layer.stride, before, layer.dilation, layer.groups)
        mode = "constant" if padding_mode == "zeros" else padding_mode
        return F.conv3d(F.pad(x, torch_pads, mode=mode), w, b, layer.stride, 0, layer.dilation,
                        layer.groups)

    return run


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_impls(impls, layer, backward, dtype=torch.float32, device="cpu", channels_last=False,
               reps=5, warmup=1):
    """Median seconds per call of each impl, runs interleaved so drift hits all equally.

    impls: {label: (fn, context_factory)}; fn(x, w, b) -> output.
    """
    x, w, b = make_inputs(layer, dtype, device, channels_last)
    if backward:
        x.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
    times = {k: [] for k in impls}

    cuda = torch.device(device).type == "cuda"

    def once(fn, ctx):
        with ctx():
            _sync(device)
            if cuda:  # device time between two events on the stream
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
            t0 = time.perf_counter()
            y = fn(x, w, b)
            if backward:
                y.backward(torch.ones_like(y))
            if cuda:
                end.record()
            _sync(device)
            elapsed = start.elapsed_time(end) / 1e3 if cuda else time.perf_counter() - t0
        x.grad = w.grad = b.grad = None
        return elapsed

    # Fast layers get more runs, so that each impl is timed for about half a second.
    first = {label: once(fn, ctx) for label, (fn, ctx) in impls.items()}
    for _ in range(warmup - 1):
        for fn, ctx in impls.values():
            once(fn, ctx)
    reps = min(50, max(reps, int(0.5 / max(max(first.values()), 1e-6))))
    # The order rotates: in a fixed one, the impl after torch's vol2col path (gigabytes of
    # columns) would always start with cold caches and freshly mapped pages.
    labels = list(impls)
    for r in range(reps):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fn, ctx = impls[label]
            times[label].append(once(fn, ctx))
    return {k: statistics.median(v) for k, v in times.items()}


def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _one_call(layer, impl, backward, dtype, device, channels_last, padding_mode):
    """A function running one call of `impl` ("ours" or "torch") on fresh inputs."""
    fn = (ours if impl == "ours" else torch_conv)(layer, padding_mode)
    x, w, b = make_inputs(layer, dtype, device, channels_last)
    for t in (x, w, b):
        t.requires_grad_(backward)

    def once():
        y = fn(x, w, b)
        if backward:
            y.backward(torch.ones_like(y))
        x.grad = w.grad = b.grad = None

    return once


def _peak_memory_here(spec):
    """Run in a child process: peak resident-memory growth (MB) of one call per layer."""
    dtype = getattr(torch, spec["dtype"])
    out = {}
    for layer in (l for l in SUITE + TRANSPOSED if l.name in spec["layers"]):
        once = _one_call(layer, spec["impl"], spec["backward"], dtype, "cpu",
                         spec["channels_last"], spec["padding_mode"])
        once()  # one-time costs (oneDNN's primitive and weight caches, thread pools)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        base = _status_mb("VmRSS")
        once()
        out[layer.name] = _status_mb("VmHWM") - base
    print(json.dumps(out))


def peak_memory(layers, impl, backward, dtype=torch.float32, device="cpu",
                channels_last=False, padding_mode="zeros"):
    """Peak memory (MB) one call of `impl` ("ours" or "torch") adds, per layer name.

    CUDA: torch's allocator statistics. CPU: growth of the resident high-water mark in a
    child process whose malloc hands every block of 64 KB or more straight back to the
    OS on free (MALLOC_MMAP_THRESHOLD_), so resident memory follows live memory. Linux only.
    """
    if torch.device(device).type == "cuda":
        out = {}
        for layer in layers:
            once = _one_call(layer, impl, backward, dtype, device, channels_last, padding_mode)
            once()  # one-time costs (cuDNN workspaces, autotuning)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            once()
            torch.cuda.synchronize()
            out[layer.name] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        return out
    spec = {"layers": [l.name for l in layers], "impl": impl, "backward": backward,
            "dtype": str(dtype).replace("torch.", ""), "channels_last": channels_last,
            "padding_mode": padding_mode}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys, json; from torchconv3d.benchmark import _peak_memory_here; "
            "_peak_memory_here(json.loads(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])
