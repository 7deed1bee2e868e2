"""Hostile sweep: random extreme arguments against torchconv3d and F.conv3d, in subprocesses.

Every case draws stride, dilation and padding from values that overflow 32 bits, 62 bits,
64 bits or are negative, next to ordinary ones, with tiny or empty inputs, every padding
form and mode, four dtypes, and both the functional and the raw operators. A worker
process runs a batch of cases; a batch whose worker dies is re-run one case per process,
so a crash is pinned to its case. Each case ends as one of:

  both refuse        we and torch raise (ValueError/RuntimeError/TypeError)
  match              both compute; output and gradients agree (float64 reference)
  we refuse          torch computes, we raise (a loud difference; listed)
  we accept          torch raises, we compute (listed: our extensions, or its limits)
  no reference       we compute, the float64 reference cannot be formed (memory)
  DIFFERENT          both compute and disagree: a silent wrong answer
  CRASH / TIMEOUT    our call killed the process or hung
  torch crash        F.pad / F.conv3d killed the process (our call had returned)

    python tools/hostile_sweep.py --cases 2000 --seed 0
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUGE = [2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**61, 2**62 - 1, 2**62, 2**63 - 1, 2**63,
        2**64, -1, -(2**31), -(2**63), -(2**63) - 1]
SMALL = [0, 1, 1, 1, 2, 3, 7, 400]
MODES = ["zeros", "reflect", "replicate", "circular", "bogus"]
DTYPES = ["float64", "float32", "bfloat16", "float16"]


def _value(rng, p_huge):
    return rng.choice(HUGE) if rng.random() < p_huge else rng.choice(SMALL)


def _triple(rng, p_huge, lo=None):
    form = rng.random()
    vals = [_value(rng, p_huge) for _ in range(3)]
    if lo is not None:
        vals = [v if v >= lo or rng.random() < 0.3 else lo for v in vals]
    if form < 0.2:
        return vals[0]
    if form < 0.25:
        return vals[:rng.choice([1, 2, 4])]  # wrong length
    return vals


def make_case(rng):
    p_huge = rng.choice([0.05, 0.2, 0.5])
    groups = rng.choice([1, 1, 2])
    cin = groups * rng.choice([1, 2])
    cout = groups * rng.choice([1, 2])
    size = [rng.choice([0, 1, 1, 2, 3, 5, 8]) if rng.random() < 0.3 else rng.choice([3, 5, 8])
            for _ in range(3)]
    kernel = [rng.choice([1, 1, 2, 3, 5]) for _ in range(3)]
    pad_form = rng.random()
    if pad_form < 0.25:
        padding = rng.choice(["same", "valid", "causal"])
    elif pad_form < 0.5:
        padding = _value(rng, p_huge)
    elif pad_form < 0.75:
        padding = [_value(rng, p_huge) for _ in range(3)]
    else:
        padding = [[_value(rng, p_huge), _value(rng, p_huge)] for _ in range(3)]
    return dict(
        api=rng.choice(["functional", "functional", "raw"]),
        x=[rng.choice([0, 1, 2]) if rng.random() < 0.2 else 2, cin] + size,
        w=[cout, cin // groups] + kernel,
        bias=rng.random() < 0.5,
        stride=_triple(rng, p_huge, lo=1),
        dilation=_triple(rng, p_huge, lo=1),
        padding=padding,
        groups=groups,
        mode=rng.choice(MODES) if rng.random() < 0.6 else "zeros",
        dtype=rng.choice(DTYPES),
        mask=rng.choice([[True, True, True]] * 6 + [[True], [True, False], []]),
    )


# --- worker ---------------------------------------------------------------------------

def _run_case(case, stage):
    import torch
    import torch.nn.functional as F

    import torchconv3d
    from torchconv3d.functional import resolve_args

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import reference

    torch.manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    x = torch.randn(case["x"], dtype=torch.float64)
    w = torch.randn(case["w"], dtype=torch.float64)
    b = torch.randn(case["w"][0], dtype=torch.float64) if case["bias"] else None
    ERRORS = (ValueError, RuntimeError, TypeError, OverflowError, IndexError, NotImplementedError)

    def ours():
        xs, ws = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        bs = None if b is None else b.to(dtype).requires_grad_()
        if case["api"] == "raw":
            stride, pads, dil = resolve_args(xs, ws, case["stride"], case["padding"],
                                             case["dilation"])
            y = torch.ops.torchconv3d.conv3d_forward(xs, ws, bs, stride, pads, dil,
                                                     case["groups"], case["mode"])
            gy = torch.randn_like(y)
            grads = torch.ops.torchconv3d.conv3d_backward(
                gy, xs, ws, stride, pads, dil, case["groups"], case["mode"], case["mask"])
            grads = grads[:2]
        else:
            y = torchconv3d.conv3d(xs, ws, bs, case["stride"], case["padding"],
                                   case["dilation"], case["groups"], case["mode"])
            gy = torch.randn_like(y)
            grads = torch.autograd.grad(y, (xs, ws), gy, allow_unused=True)
        return y, gy, grads

    def torch_ref(gy):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        stride, pads, dil = resolve_args(xs, ws, case["stride"], case["padding"],
                                         case["dilation"])
        if case["padding"] == "causal" and case["mode"] in ("reflect", "circular"):
            raise ValueError("causal reads the future in this mode")  # our definition
        # torch's float64 path computes garbage for a stride past 2^62 even where it cannot
        # matter (oneMKL "Parameter 7 was incorrect"), so the reference gets equal arguments:
        # a stride no larger than the padded extent past the kernel's (the same output
        # size), dilation 1 for a kernel extent of 1.
        if len(stride) == 3 and len(pads) == 6 and len(dil) == 3 and ws.dim() == 5:
            for i in range(3):
                if ws.shape[2 + i] == 1 and dil[i] > 0:
                    dil[i] = 1
                room = (xs.shape[2 + i] + pads[2 * i] + pads[2 * i + 1]
                        - dil[i] * (ws.shape[2 + i] - 1) - 1)
                if stride[i] > 0 and room >= 0:
                    stride[i] = min(stride[i], room + 1)
        y = reference(xs, ws, b, stride, pads, dil, case["groups"], case["mode"])
        if gy is None:
            return y, None
        return y, torch.autograd.grad(y, (xs, ws), gy.double())

    stage("ours")
    try:
        y, gy, grads = ours()
    except (*ERRORS, MemoryError) as e:
        ours_error = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        stage("torch")
        try:
            torch_ref(None)
        except (*ERRORS, MemoryError):
            return "both refuse", ours_error
        return "we refuse", ours_error
    stage("torch")
    try:
        ref, ref_grads = torch_ref(gy)
    except (*ERRORS, MemoryError) as e:
        text = str(e)
        if "allocate" in text or isinstance(e, MemoryError):
            return "no reference", text.splitlines()[0][:120]
        return "we accept", f"{type(e).__name__}: {text.splitlines()[0][:160]}"
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2,
           torch.float16: 1e-2}[dtype]
    for name, a, e in [("output", y, ref)] + list(zip(("grad_input", "grad_weight"), grads,
                                                      ref_grads)):
        if a is None:
            continue
        if a.shape != e.shape:
            return "DIFFERENT", f"{name} shape {list(a.shape)} vs {list(e.shape)}"
        err = (a.double() - e).abs().max().item() if e.numel() else 0.0
        scale = e.abs().max().item() if e.numel() else 0.0
        if not err <= tol * max(scale, 1.0):
            return "DIFFERENT", f"{name} error {err:.3g} (scale {scale:.3g})"
    return "match", ""


def worker(path):
    import resource
    # Keep a runaway allocation from taking the machine with it: it fails as an error.
    limit = int(os.environ.get("SWEEP_MEMORY_GB", "12")) << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cases = json.load(open(path))
    for i, case in enumerate(cases):
        t0 = time.time()
        status, detail = _run_case(
            case, lambda name: print(json.dumps(["stage", i, name]), flush=True))
        print(json.dumps([i, status, detail, round(time.time() - t0, 3)]), flush=True)


# --- driver ---------------------------------------------------------------------------

def run_batch(cases, timeout):
    """Runs cases in one worker; returns {index: (status, detail, seconds)} for those that
    finished and whether the worker died."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=ROOT)
        out, died, rc = r.stdout, r.returncode != 0, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        died, rc = True, "timeout"
    finally:
        os.unlink(f.name)
    done, stage = {}, None
    for line in out.splitlines():
        if line.startswith("["):
            entry = json.loads(line)
            if entry[0] == "stage":
                stage = entry[2]
            else:
                i, status, detail, secs = entry
                done[i] = (status, detail, secs)
    return done, died, rc, stage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--case-timeout", type=float, default=60)
    ap.add_argument("--show", type=int, default=8, help="cases listed per status")
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)

    rng = random.Random(args.seed)
    cases = [make_case(rng) for _ in range(args.cases)]
    results = {}
    t0 = time.time()
    for start in range(0, len(cases), args.batch):
        batch = cases[start:start + args.batch]
        done, died, _, _ = run_batch(batch, args.case_timeout * len(batch))
        for i, r in done.items():
            results[start + i] = r
        if died:  # one process per remaining case pins the crash on its case
            for i in range(len(batch)):
                if i in done:
                    continue
                one, one_died, rc, stage = run_batch([batch[i]], args.case_timeout)
                if one:
                    results[start + i] = one[0]
                else:
                    status = "TIMEOUT" if rc == "timeout" else "CRASH"
                    if stage == "torch":
                        status = "torch " + status.lower()
                    results[start + i] = (status, f"exit {rc}", None)
    counts = {}
    for status, _, _ in results.values():
        counts[status] = counts.get(status, 0) + 1
    slowest = max((r[2] or 0 for r in results.values()), default=0)
    print(f"hostile sweep: {len(cases)} cases, seed {args.seed}, {time.time() - t0:.0f} s, "
          f"slowest case {slowest:.2f} s")
    for status in ("both refuse", "match", "we refuse", "we accept", "no reference",
                   "torch crash", "torch timeout", "DIFFERENT", "CRASH", "TIMEOUT"):
        print(f"  {status:13s} {counts.get(status, 0)}")
    for status in ("DIFFERENT", "CRASH", "TIMEOUT", "torch crash", "torch timeout",
                   "we refuse", "we accept"):
        shown = [(i, r) for i, r in sorted(results.items()) if r[0] == status]
        for i, r in shown[:args.show]:
            print(f"{status}: {json.dumps(cases[i])}\n    {r[1]}")
    timed = sorted(((r[2] or 0, i) for i, r in results.items()), reverse=True)[:3]
    for secs, i in timed:
        print(f"slow ({secs:.2f} s, {results[i][0]}): {json.dumps(cases[i])}")
    bad = counts.get("DIFFERENT", 0) + counts.get("CRASH", 0) + counts.get("TIMEOUT", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
