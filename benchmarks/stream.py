"""One streaming step of a causal layer (torchconv3d.conv3d_step's operator, reading cache and
chunk as one volume in place) against the two calls + add it replaced (the chunk with zero
time padding, the cache alone, its seam frames added) and against what torch offers (cat the
cache and the chunk, then F.conv3d), and a whole video against the same video in chunks, in
one process, median of --reps after a warm-up.

    python benchmarks/stream.py [--reps 9] [--dtype float32 bfloat16] [--device cuda]
        [--batch 1]
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import torchconv3d
from torchconv3d.ops import forward, stream_forward_op

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import machine_name  # noqa: E402

C, T, HW, P = 64, 4, 32, 2  # 64 -> 64 channels, 3x3x3 causal, chunks of 4 frames of 32x32


def median_ms(f, reps, sync):
    f()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    cpu = args.device == "cpu"
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    print(f"# {machine_name(cpu)}; {C} -> {C} channels, 3x3x3 causal, chunks of {T} frames of "
          f"{HW}x{HW}, batch {args.batch}")
    print(f"{'dtype':9s} {'layout':13s} {'two calls+add':>14s} {'one call':>9s} "
          f"{'cat+F.conv3d':>13s} {'whole 16':>9s} {'4 chunks':>9s}  (ms)")
    stride, dilation, hw = [1, 1, 1], [1, 1, 1], [1, 1, 1, 1]
    for name in args.dtype:
        dtype = getattr(torch, name)
        for layout, fmt in (("contiguous", torch.contiguous_format),
                            ("channels_last", torch.channels_last_3d)):
            torch.manual_seed(0)
            layer = torchconv3d.Conv3d(C, C, 3, padding=("causal", 1, 1), dtype=dtype,
                                       device=args.device)
            w, b = layer.weight.detach(), layer.bias.detach()
            video = torch.randn(args.batch, C, 4 * T, HW, HW, dtype=dtype,
                                device=args.device).to(memory_format=fmt)
            cache, chunk = video[:, :, T - P:T], video[:, :, T:2 * T]

            def two_calls():
                out = forward(chunk, w, b, stride, [P, 0, *hw], dilation, 1, "zeros")
                seam = forward(cache, w, None, stride, [0, P, *hw], dilation, 1, "zeros")
                out.narrow(2, 0, P).add_(seam.narrow(2, 0, P))

            def one_call():
                stream_forward_op(cache, chunk, w, b, stride, [0, 0, *hw], dilation, 1, "zeros")

            def torch_cat():
                F.conv3d(torch.cat([cache, chunk], 2), w, b, padding=(0, 1, 1))

            def chunked():
                state = None
                for part in video.split(T, dim=2):
                    _, state = layer.step(part, state)

            with torch.no_grad():
                times = [median_ms(f, args.reps, sync) for f in
                         (two_calls, one_call, torch_cat, lambda: layer(video), chunked)]
            print(f"{name:9s} {layout:13s} {times[0]:14.2f} {times[1]:9.2f} {times[2]:13.2f} "
                  + " ".join(f"{t:9.2f}" for t in times[3:]))


if __name__ == "__main__":
    main()
