"""Training-job conditions: DDP / FSDP, torch.export, many Python threads, long loops."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn as nn

import torchconv3d

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp_cuda"])
def test_distributed_training_matches_nn_conv3d(mode, tmp_path):
    """2 gloo processes, 5 SGD steps, a 3-layer 3D CNN converted with convert()."""
    if mode.endswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ddp_cuda needs a CUDA GPU")
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, os.path.join(HERE, "ddp_worker.py"), "5", mode,
                        str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    print(mode, result)
    assert result["max_update"] > 1e-2  # training really moved the parameters
    assert result["max_diff"] <= 1e-12


def test_torch_export_runs_and_matches():
    model = nn.Sequential(
        torchconv3d.Conv3d(3, 8, 3, padding="same", padding_mode="reflect"), nn.ReLU(),
        torchconv3d.Conv3d(8, 4, 3, stride=2, padding="causal", groups=4),
    ).eval()
    x = torch.randn(2, 3, 6, 7, 8)
    ep = torch.export.export(model, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "torchconv3d.conv3d_forward.default" in ops, ops
    x2 = torch.randn(2, 3, 6, 7, 8)
    assert torch.allclose(ep.module()(x2), model(x2), rtol=1e-6, atol=1e-6)


def _fwd_bwd(seed):
    g = torch.Generator().manual_seed(seed)
    groups = [1, 2, 4][seed % 3]
    mode = ["zeros", "reflect", "circular", "replicate"][seed % 4]
    x = torch.randn(2, 4, 7, 8, 9, generator=g, requires_grad=True)
    w = torch.randn(8, 4 // groups, 3, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    y = torchconv3d.conv3d(x, w, b, stride=(1, 2, 1), padding=1, groups=groups,
                           padding_mode=mode)
    y.backward(torch.randn(y.shape, generator=g))
    return [t.detach() for t in (y, x.grad, w.grad, b.grad)]


def test_many_python_threads_match_serial_calls():
    serial = {s: _fwd_bwd(s) for s in range(24)}
    results, errors = {}, []

    def run(seeds):
        try:
            for _ in range(3):
                for s in seeds:
                    out = _fwd_bwd(s)
                    if s in results:
                        assert all(torch.equal(a, b) for a, b in zip(out, results[s]))
                    results[s] = out
        except Exception as e:  # reported below; an assert in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=run, args=(range(i, 24, 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s, ref in serial.items():
        for a, b in zip(results[s], ref):
            assert torch.equal(a, b)  # bitwise: the kernels' sums do not depend on threads


def _rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux")
def test_2000_iterations_leave_resident_memory_flat():
    m = torchconv3d.Conv3d(4, 8, 3, padding=1, padding_mode="reflect")
    x = torch.randn(2, 4, 8, 9, 10, requires_grad=True)
    rss = []
    for i in range(2000):
        m(x).square().mean().backward()
        if i in (199, 1999):
            rss.append(_rss_mb())
    print(f"resident after 200 iterations {rss[0]:.1f} MB, after 2000 {rss[1]:.1f} MB")
    assert rss[1] - rss[0] < 4.0
