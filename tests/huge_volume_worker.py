"""Forward and backward of one convolution over an input of more than 2^31 elements, in a
process of its own so that its peak resident memory is its own. Run by
tests/test_huge_volume.py; prints one JSON line.

    python tests/huge_volume_worker.py ours|torch [--check]

--check (ours) then compares output, grad_input and grad_weight with F.conv3d run slab by
slab in float32 (each slab well under 2^31 elements).
"""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

import torchconv3d

SHAPE = (1, 1, 1025, 1024, 2048)  # 2^31 + 2^21 elements, 4 GiB in bfloat16
DTYPE = torch.bfloat16
KERNEL, STRIDE, PAD = 3, 2, 1  # the output has 2^28 + ... elements
CHUNK = 32  # output depths per reference slab


def max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rel(actual, expected):
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


def check(x, w, gy, y, gx, gw):
    """Worst relative error (to the slab's largest value) of y, gx and gw."""
    depth, out_depth = x.shape[2], y.shape[2]
    worst = {"output": 0.0, "grad_input": 0.0}
    gw_ref = torch.zeros(w.shape, dtype=torch.float64)
    carry = None  # grad_input of depths the next slab also reaches
    for o0 in range(0, out_depth, CHUNK):
        o1 = min(out_depth, o0 + CHUNK)
        lo, hi = o0 * STRIDE - PAD, (o1 - 1) * STRIDE - PAD + KERNEL  # padded depths read
        lo_c, hi_c = max(lo, 0), min(hi, depth)
        slab = F.pad(x.detach()[:, :, lo_c:hi_c].float(),
                     (0, 0, 0, 0, lo_c - lo, hi - hi_c)).requires_grad_()
        wf = w.detach().float().requires_grad_()
        yr = F.conv3d(slab, wf, stride=STRIDE, padding=(0, PAD, PAD))
        gs, gws = torch.autograd.grad(yr, (slab, wf), gy[:, :, o0:o1].float())
        worst["output"] = max(worst["output"], rel(y[:, :, o0:o1], yr))
        gw_ref += gws.double()
        gs = gs[:, :, lo_c - lo:gs.shape[2] - (hi - hi_c)]
        if carry is not None:
            gs[:, :, :carry.shape[2]] += carry
        done = min(o1 * STRIDE - PAD, hi_c) if o1 < out_depth else hi_c
        worst["grad_input"] = max(worst["grad_input"],
                                  rel(gx[:, :, lo_c:done], gs[:, :, :done - lo_c]))
        carry = gs[:, :, done - lo_c:].clone()
    worst["grad_weight"] = rel(gw, gw_ref.float())
    return worst


def main():
    impl, do_check = sys.argv[1], "--check" in sys.argv
    torch.manual_seed(0)
    x = torch.empty(SHAPE, dtype=DTYPE).normal_()
    w = torch.randn((1, 1) + (KERNEL,) * 3, dtype=DTYPE)
    out = [(s + 2 * PAD - KERNEL) // STRIDE + 1 for s in SHAPE[2:]]
    gy = torch.empty(SHAPE[:2] + tuple(out), dtype=DTYPE).normal_()
    base = max_rss()  # the process with x and grad_output in memory
    x.requires_grad_()
    w.requires_grad_()
    conv = torchconv3d.conv3d if impl == "ours" else F.conv3d
    t0 = time.perf_counter()
    try:
        y = conv(x, w, stride=STRIDE, padding=PAD)
        t1 = time.perf_counter()
        gx, gw = torch.autograd.grad(y, (x, w), gy)
        t2 = time.perf_counter()
    except (MemoryError, RuntimeError) as e:
        # torch without oneDNN's bfloat16 (a CPU without AVX-512) runs slow_conv3d, whose
        # column buffers outgrow a 24 GB machine: torch's run ends here, ours must not.
        if impl == "ours" or not ("bad_alloc" in str(e) or "memory" in str(e)):
            raise
        print(json.dumps({"impl": impl, "out_of_memory": True, "error": str(e)[:200],
                          "peak_rss": max_rss()}))
        return
    peak = max_rss()
    result = {
        "impl": impl, "input_elements": x.numel(), "output_elements": y.numel(),
        "base_rss": base, "peak_rss": peak,
        "results_bytes": sum(t.numel() * t.element_size() for t in (y, gx, gw)),
        "forward_s": t1 - t0, "backward_s": t2 - t1,
    }
    if do_check:
        result["errors"] = check(x, w, gy, y, gx, gw)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
