"""A volume past 2^31 elements on the CPU (slow: python -m pytest --runslow).

Our forward + backward over a bfloat16 input of 2^31 + 2^21 elements (4 GiB) is checked
slab by slab against F.conv3d, and its peak resident memory is compared with the same
forward + backward through torch's F.conv3d, each in a fresh process
(tests/huge_volume_worker.py). Needs about 14 GiB of free memory (torch's run).
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30


def _available_memory():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _run(*args):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "huge_volume_worker.py"), *args],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/meminfo") or _available_memory() < 15 * GIB,
                    reason="needs Linux and about 15 GiB of free memory")
def test_volume_past_2_31_elements():
    ours = _run("ours", "--check")
    ref = _run("torch")
    assert ours["input_elements"] > 2**31
    errors = ours["errors"]
    # bfloat16 results (8 significant bits) against float32 sums.
    assert errors["output"] <= 1e-2 and errors["grad_input"] <= 1e-2, errors
    assert errors["grad_weight"] <= 1e-2, errors

    def extra(r):  # memory beyond the inputs and the results themselves
        return r["peak_rss"] - r["base_rss"] - r["results_bytes"]

    # Bounded workspace: per-thread tiles and grad_weight partials, not a copy of anything
    # volume-sized (the input alone is 4 GiB).
    assert extra(ours) <= 256 * 2**20
    if ref.get("out_of_memory"):
        # CPUs without AVX-512: torch's bfloat16 slow_conv3d asked for more memory than the
        # machine has (its failed allocation is not in its peak); nothing to compare with.
        print(f"\ntorch ran out of memory ({ref['error']}); ours peaked at "
              f"{ours['peak_rss'] / GIB:.2f} GiB; errors {errors}")
        return
    print(
        f"\ninput {ours['input_elements']} elements; peak RSS ours "
        f"{ours['peak_rss'] / GIB:.2f} GiB, torch {ref['peak_rss'] / GIB:.2f} GiB; beyond "
        f"inputs and results: ours {extra(ours) / 2**20:.0f} MiB, torch "
        f"{extra(ref) / 2**20:.0f} MiB; forward+backward ours "
        f"{ours['forward_s'] + ours['backward_s']:.1f} s, torch "
        f"{ref['forward_s'] + ref['backward_s']:.1f} s; errors {errors}"
    )
    assert ours["peak_rss"] < ref["peak_rss"]
