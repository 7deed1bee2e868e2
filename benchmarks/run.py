"""Benchmark torchconv3d against torch on layer shapes from real 3D networks.

    python benchmarks/run.py                                  # float32, fwd and fwd+bwd
    python benchmarks/run.py --dtype float32 float64 --layout contiguous channels_last \\
        --markdown benchmarks/results/cpu.md --chart benchmarks/results/cpu.png
    python benchmarks/run.py --padding-mode reflect --pass fwdbwd
    python benchmarks/run.py --transposed     # decoders' nn.ConvTranspose3d layers
    python benchmarks/run.py --device cuda --dtype float32 float16 bfloat16 --tf32 on off

On a GPU: batch x --batch-scale (default 16), CUDA-event timing, float32 with TF32 on
(torch's default, and ours follows it: tensor cores) and off (both exact), depthwise layers
also against torch's own kernel (cuDNN disabled), and each layer as % of the roofline
(max of FLOPs at the dtype's tensor-core or SIMT peak, minimum bytes at HBM bandwidth;
datasheet peaks by GPU name, --peak-tflops / --peak-tbs to override).

Torch and ours run in the same process, interleaved, median of --reps runs (or more, for
fast layers) after a warm-up. On the CPU torch is timed twice: as it runs by default
(oneDNN) and with oneDNN disabled (its own vol2col + GEMM path). Peak memory is what one
call adds (see torchconv3d.benchmark.peak_memory). Speedup = t_torch / t_ours.
The chart needs matplotlib (pip install matplotlib).
"""
import argparse
import contextlib
import dataclasses
import math
import os
import platform
import subprocess
import sys
import textwrap
from datetime import date

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchconv3d import _loader  # noqa: E402
from torchconv3d.benchmark import (SUITE, TRANSPOSED, ours, peak_memory, time_impls,  # noqa: E402
                                   torch_conv)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
LAYOUTS = {"contiguous": False, "channels_last": True}


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def machine_name(cpu):
    if not cpu:
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True).stdout.split()[0]
        except (OSError, IndexError):
            driver = "unknown"
        return (f"{torch.cuda.get_device_name()}, driver {driver}, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}")
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads, CPU capability " \
           f"{torch.backends.cpu.get_cpu_capability()}"


# Dense datasheet peaks (TFLOP/s by precision, TB/s): H100 SXM / H200 share the compute.
PEAKS = {"H100": ({"float16": 989, "bfloat16": 989, "tf32": 495, "float32": 67,
                   "float64": 67}, 3.35),
         "H200": ({"float16": 989, "bfloat16": 989, "tf32": 495, "float32": 67,
                   "float64": 67}, 4.8)}


def peaks(args):
    name = torch.cuda.get_device_name()
    table, tbs = next((v for k, v in PEAKS.items() if k in name), ({}, None))
    return (lambda prec: args.peak_tflops or table.get(prec)), args.peak_tbs or tbs


def write_chart(path, rows, torch_label, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['layer']} {r['pass']} {r['dtype']} {r['layout'][:2]}"
              + ("" if r["mode"] == "zeros" else f" {r['mode']}") for r in rows]
    speed = [r["vs_torch"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.2))
    colors = ["#2a7" if s >= 1 else "#c44" for s in speed]
    ax.barh(range(len(rows)), speed, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup over torch ({torch_label}) = t_torch / t_ours, log scale")
    ax.set_title(textwrap.fill(title, 95), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rows_from_markdown(paths):
    """The rows of tables that --markdown wrote (title, header, rows), to redraw a chart
    without re-running: (rows, torch label, title of the first file)."""
    rows, label, title = [], None, None
    for path in paths:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        title = title or lines[0]
        header = [c.strip() for c in lines[1].strip("|").split("|")]
        label = label or header[7].removesuffix(" ms")
        for ln in lines[3:]:
            if not ln.startswith("|"):
                continue
            cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|"))))
            rows.append({"layer": cells["layer"], "pass": cells["pass"], "dtype": cells["dtype"],
                         "layout": cells["layout"], "mode": cells["mode"],
                         "vs_torch": float(cells[f"vs {label}"].rstrip("x"))})
    return rows, label, title


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=DTYPES)
    ap.add_argument("--pass", dest="passes", default="both", choices=["fwd", "fwdbwd", "both"])
    ap.add_argument("--layout", nargs="+", default=["contiguous"], choices=LAYOUTS)
    ap.add_argument("--padding-mode", nargs="+", default=["zeros"],
                    choices=["zeros", "reflect", "replicate", "circular"])
    ap.add_argument("--tf32", nargs="+", choices=["on", "off"],
                    help="CUDA, float32: torch.backends.cudnn.allow_tf32 (default on, as torch)")
    ap.add_argument("--batch-scale", type=int,
                    help="multiply every layer's batch (default 1 on the CPU, 16 on a GPU)")
    ap.add_argument("--peak-tflops", type=float, help="CUDA: the roofline's compute peak")
    ap.add_argument("--peak-tbs", type=float, help="CUDA: the roofline's memory bandwidth")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="layer names to run")
    ap.add_argument("--transposed", action="store_true",
                    help="run the decoders' transposed layers (vs nn.ConvTranspose3d) "
                         "instead of the convolution suite")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    ap.add_argument("--no-vol2col", action="store_true",
                    help="CPU: skip torch's oneDNN-disabled path (most of the run time)")
    ap.add_argument("--markdown", help="also write the table to this markdown file")
    ap.add_argument("--chart", help="also draw the speedups into this PNG (needs matplotlib)")
    ap.add_argument("--redraw", nargs="+", metavar="MD",
                    help="run nothing: draw --chart from tables that --markdown wrote")
    args = ap.parse_args(argv)
    if args.redraw:
        if not args.chart:
            ap.error("--redraw needs --chart")
        rows, label, title = rows_from_markdown(args.redraw)
        write_chart(args.chart, rows, label, title)
        return 0

    cpu = torch.device(args.device).type == "cpu"
    passes = ["fwd", "fwdbwd"] if args.passes == "both" else [args.passes]
    scale = args.batch_scale or (1 if cpu else 16)
    if args.transposed and args.padding_mode != ["zeros"]:
        ap.error("nn.ConvTranspose3d has no padding modes: --transposed takes only zeros")
    layers = [dataclasses.replace(l, batch=l.batch * scale)
              for l in (TRANSPOSED if args.transposed else SUITE)
              if not args.only or l.name in args.only]
    tl = "oneDNN" if cpu else "cuDNN"
    # float32 on a GPU runs once per TF32 setting; other dtypes once.
    tf32s = [None] if cpu else (args.tf32 or ["on"])
    precisions = [(d, t) for d in args.dtype for t in (tf32s if d == "float32" else [None])]
    if not cpu:
        peak_tflops, peak_tbs = peaks(args)
    memory = not args.no_memory and (not cpu or os.access("/proc/self/clear_refs", os.W_OK))

    header = ["layer", "pass", "dtype", "layout", "mode", "GFLOP", "ours ms", f"{tl} ms"]
    header += ["vol2col ms"] if cpu else ["native ms"]
    header += ["ours GFLOP/s", f"{tl} GFLOP/s", f"vs {tl}"]
    header += ["vs vol2col"] if cpu else ["vs native", "% roofline"]
    header += ["ours MB", f"{tl} MB"] if memory else []
    title = (f"torchconv3d ({_loader.BACKEND}, {_loader.cpu_isa()} kernels) vs torch "
             f"{torch.__version__} on {machine_name(cpu)}, {date.today()}")
    print("# " + title)
    widths = [20, 7, 9, 14, 10] + [12] * (len(header) - 5)
    fmt = lambda cells: "  ".join(f"{c:<{w}}" if i < 5 else f"{c:>{w}}"  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(header))
    rows = []
    for dname, tf32 in precisions:
        dtype = DTYPES[dname]
        if tf32:
            torch.backends.cudnn.allow_tf32 = tf32 == "on"
            dname = "tf32" if tf32 == "on" else "float32"
        for lname, cl in ((n, LAYOUTS[n]) for n in args.layout):
            for mode in args.padding_mode:
                for p in passes:
                    back = p == "fwdbwd"
                    mem = {}
                    if memory:
                        mem = {impl: peak_memory(layers, impl, back, dtype, args.device, cl, mode)
                               for impl in ("ours", "torch")}
                    for layer in layers:
                        impls = {"ours": (ours(layer, mode), contextlib.nullcontext),
                                 "torch": (torch_conv(layer, mode), contextlib.nullcontext)}
                        if cpu and not args.no_vol2col:
                            impls["vol2col"] = (torch_conv(layer, mode),
                                                lambda: torch.backends.mkldnn.flags(enabled=False))
                        elif "depthwise" in layer.tags:  # torch's DepthwiseConv3d.cu
                            impls["native"] = (torch_conv(layer, mode),
                                               lambda: torch.backends.cudnn.flags(enabled=False))
                        t = time_impls(impls, layer, backward=back, dtype=dtype,
                                       device=args.device, channels_last=cl, reps=args.reps)
                        flop = layer.flops() * (3 if back else 1)
                        r = {"layer": layer.name, "tags": layer.tags, "pass": p, "dtype": dname,
                             "layout": lname, "mode": mode, "vs_torch": t["torch"] / t["ours"],
                             "vs_vol2col": t["vol2col"] / t["ours"] if "vol2col" in t else None}
                        cells = [layer.name, p, dname, lname, mode, f"{flop / 1e9:.2f}",
                                 f"{t['ours'] * 1e3:.2f}", f"{t['torch'] * 1e3:.2f}"]
                        side = "vol2col" if cpu else "native"
                        cells += [f"{t[side] * 1e3:.2f}" if side in t else "-"]
                        cells += [f"{flop / t['ours'] / 1e9:.1f}", f"{flop / t['torch'] / 1e9:.1f}",
                                  f"{r['vs_torch']:.2f}x"]
                        cells += [f"{t[side] / t['ours']:.2f}x" if side in t else "-"]
                        r["vs_native"] = t["native"] / t["ours"] if "native" in t else None
                        if not cpu:
                            tflops = peak_tflops("float32" if dname == "float32" else dname)
                            floor = max(flop / (tflops * 1e12) if tflops else 0,
                                        layer.bytes(dtype.itemsize, back) / (peak_tbs * 1e12)
                                        if peak_tbs else 0)
                            cells += [f"{100 * floor / t['ours']:.0f}%" if floor else "-"]
                        if memory:
                            r["mem"] = (mem["ours"][layer.name], mem["torch"][layer.name])
                            cells += [f"{r['mem'][0]:.1f}", f"{r['mem'][1]:.1f}"]
                        r["cells"] = cells
                        rows.append(r)
                        print(fmt(cells), flush=True)

    summary = []
    names = list(dict.fromkeys(r["dtype"] for r in rows))
    for p, dname, lname, mode in ((p, d, l, m) for p in passes for d in names
                                  for l in args.layout for m in args.padding_mode):
        sel = [r for r in rows if r["pass"] == p and r["dtype"] == dname
               and r["layout"] == lname and r["mode"] == mode]
        parts = [f"all {geomean([r['vs_torch'] for r in sel]):.2f}x"]
        for tag in ("dense", "depthwise", "dilated", "transposed"):
            tagged = [r["vs_torch"] for r in sel if tag in r["tags"]]
            if tagged:
                parts.append(f"{tag} {geomean(tagged):.2f}x")
        if cpu and not args.no_vol2col:
            parts.append(f"(all vs vol2col {geomean([r['vs_vol2col'] for r in sel]):.2f}x)")
        elif not cpu and any(r["vs_native"] for r in sel):
            parts.append("(depthwise vs torch's native kernel "
                         f"{geomean([r['vs_native'] for r in sel if r['vs_native']]):.2f}x)")
        summary.append(f"geometric mean speedup vs {tl}, {p}, {dname}, {lname}, {mode}: "
                       + ", ".join(parts))
    if memory:
        over = [f"{r['layer']} {r['pass']} {r['dtype']} {r['layout']} {r['mode']}"
                for r in rows if r["mem"][0] > r["mem"][1]]
        summary.append("peak memory above torch's: " + (", ".join(over) if over else "none"))
    print("\n".join(summary))

    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(title + "\n\n")
            f.write("| " + " | ".join(header) + " |\n")
            f.write("|" + "---|" * len(header) + "\n")
            for r in rows:
                f.write("| " + " | ".join(r["cells"]) + " |\n")
            f.write("\n" + "\n".join(f"- {s}" for s in summary) + "\n")
    if args.chart:
        os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
        write_chart(args.chart, rows, tl, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
