"""Benchmark torchconv3d against torch on layer shapes from real 3D networks.

    python benchmarks/run.py                      # float32, forward and forward+backward
    python benchmarks/run.py --dtype float64 --layout channels_last --only unet3d_conv
    python benchmarks/run.py --device cuda        # torch side is cuDNN

Torch and ours run in the same process, interleaved, median of --reps runs after a warm-up.
On the CPU torch is timed twice: as it runs by default (oneDNN) and with oneDNN disabled
(its own vol2col + GEMM path). --markdown FILE also writes the table as markdown.
"""
import argparse
import contextlib
import math
import os
import platform
import sys
from datetime import date

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchconv3d import _loader  # noqa: E402
from torchconv3d.benchmark import SUITE, ours, time_impls, torch_conv  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=DTYPES)
    ap.add_argument("--pass", dest="passes", default="both", choices=["fwd", "fwdbwd", "both"])
    ap.add_argument("--layout", default="contiguous",
                    choices=["contiguous", "channels_last", "both"])
    ap.add_argument("--padding-mode", default="zeros",
                    choices=["zeros", "reflect", "replicate", "circular"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="layer names to run")
    ap.add_argument("--markdown", help="also write the table to this markdown file")
    args = ap.parse_args(argv)

    dtype = DTYPES[args.dtype]
    cpu = torch.device(args.device).type == "cpu"
    passes = ["fwd", "fwdbwd"] if args.passes == "both" else [args.passes]
    layouts = ["contiguous", "channels_last"] if args.layout == "both" else [args.layout]
    layers = [l for l in SUITE if not args.only or l.name in args.only]
    torch_label = "oneDNN" if cpu else "cuDNN"

    header = ["layer", "pass", "layout", "GFLOP", "ours ms", f"{torch_label} ms"]
    if cpu:
        header.append("vol2col ms")
    header += ["ours GFLOP/s", f"vs {torch_label}"]
    if cpu:
        header.append("vs vol2col")
    rows = []
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
               if cpu else torch.cuda.get_device_name())
    print(f"# torchconv3d ({_loader.BACKEND}) vs torch {torch.__version__} on {machine}, "
          f"{args.dtype}, padding_mode={args.padding_mode}, {date.today()}")
    print("  ".join(f"{h:>12}" if i else f"{h:<20}" for i, h in enumerate(header)))
    speedups = {k: [] for k in ("torch", "vol2col")}
    for layer in layers:
        for layout in layouts:
            for p in passes:
                impls = {"ours": (ours(layer, args.padding_mode), contextlib.nullcontext),
                         "torch": (torch_conv(layer, args.padding_mode), contextlib.nullcontext)}
                if cpu:
                    impls["vol2col"] = (torch_conv(layer, args.padding_mode),
                                        lambda: torch.backends.mkldnn.flags(enabled=False))
                t = time_impls(impls, layer, backward=p == "fwdbwd", dtype=dtype,
                               device=args.device, channels_last=layout == "channels_last",
                               reps=args.reps)
                flop = layer.flops() * (3 if p == "fwdbwd" else 1)
                row = [layer.name, p, layout, f"{flop / 1e9:.2f}", f"{t['ours'] * 1e3:.2f}",
                       f"{t['torch'] * 1e3:.2f}"]
                if cpu:
                    row.append(f"{t['vol2col'] * 1e3:.2f}")
                row += [f"{flop / t['ours'] / 1e9:.1f}", f"{t['torch'] / t['ours']:.2f}x"]
                speedups["torch"].append(t["torch"] / t["ours"])
                if cpu:
                    row.append(f"{t['vol2col'] / t['ours']:.2f}x")
                    speedups["vol2col"].append(t["vol2col"] / t["ours"])
                rows.append(row)
                print("  ".join(f"{c:>12}" if i else f"{c:<20}" for i, c in enumerate(row)),
                      flush=True)
    for k, v in speedups.items():
        if v:
            gm = math.exp(sum(math.log(s) for s in v) / len(v))
            print(f"geometric mean speedup vs {torch_label if k == 'torch' else k}: {gm:.2f}x")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"torchconv3d vs torch {torch.__version__}, {machine}, {args.dtype}, "
                    f"{date.today()}\n\n")
            f.write("| " + " | ".join(header) + " |\n")
            f.write("|" + "---|" * len(header) + "\n")
            for row in rows:
                f.write("| " + " | ".join(row) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
