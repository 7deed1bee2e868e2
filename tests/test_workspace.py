"""Workspace stays bounded: the kernels never build the im2col matrix of a whole sample."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Peak resident memory of one forward + backward, after two warm-up rounds (the
# allocator's and the thread pool's one-time buffers), using Linux's resettable
# high-water mark.
SCRIPT = textwrap.dedent("""
    import torch, torchconv3d

    def status_mb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024

    torch.manual_seed(0)
    x = torch.randn(1, 8, 64, 64, 64, requires_grad=True)   # 8 MB
    w = torch.randn(8, 8, 3, 3, 3, requires_grad=True)
    for _ in range(3):
        x.grad = w.grad = None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
        base = status_mb("VmRSS")
        y = torchconv3d.conv3d(x, w, padding=1, padding_mode="reflect")
        y.backward(torch.ones_like(y))
        del y
        growth = status_mb("VmHWM") - base
    print(growth)
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux")
def test_peak_memory_is_far_below_im2col():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    growth_mb = float(r.stdout.split()[-1])
    im2col_mb = 8 * 27 * 64 ** 3 * 4 / 2 ** 20  # 216 MB for this single sample
    # output, ones_like(output) and grad_input are 8 MB each; tiles add about 1 MB a thread
    assert growth_mb < 40, (f"one forward + backward grew resident memory by {growth_mb:.0f} MB "
                            f"(the sample's im2col matrix would be {im2col_mb:.0f} MB)")
