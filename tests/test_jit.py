"""The JIT path: with no built extension, `import torchconv3d` compiles csrc/ with
torch.utils.cpp_extension.load and uses it; with one, it never compiles."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F, torchconv3d
    from torchconv3d import _loader
    print(_loader.BACKEND, _loader.LIBRARY)
    x = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)
    y = torchconv3d.conv3d(x, w, padding=1)
    ref = F.conv3d(x, w, padding=1)
    assert (y - ref).abs().max() < 1e-10
    y.sum().backward()
    print("ok")
""")


def _run(env_extra, tmp_path):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def jit_build(tmp_path_factory):
    """One JIT build for the module: (the check's result, its extensions dir)."""
    tmp_path = tmp_path_factory.mktemp("jit")
    ext_dir = tmp_path / "extensions"
    r = _run({"TORCHCONV3D_FORCE_JIT": "1", "TORCH_EXTENSIONS_DIR": str(ext_dir)}, tmp_path)
    return r, ext_dir


def test_jit_build_in_fresh_process(jit_build):
    r, ext_dir = jit_build
    assert r.returncode == 0, r.stdout + r.stderr
    backend, library = r.stdout.split()[:2]
    assert backend == "jit"
    assert library.startswith(str(ext_dir))  # compiled here, into its own cache
    assert r.stdout.strip().endswith("ok")


SECOND_COPY = textwrap.dedent("""
    import os, sys, torch, torch.nn.functional as F
    import torchconv3d
    from torchconv3d import _loader
    if _loader.BACKEND == "jit":
        try:
            import torchconv3d._C
        except ImportError as e:
            print("refused:", e)
    else:
        torch.ops.load_library(sys.argv[1])  # the JIT build: registers nothing, no abort
        print("refused: loaded without registering")
    x = torch.randn(1, 2, 4, 5, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64)
    assert (torchconv3d.conv3d(x, w) - F.conv3d(x, w)).abs().max() < 1e-10
    print("ok")
""")


@pytest.mark.parametrize("first", ["jit", "prebuilt"])
def test_second_copy_of_the_library_is_refused(jit_build, first, tmp_path):
    """Loading the JIT build and the installed extension in one process keeps the first
    one's operators; the second raises ImportError (import) or registers nothing
    (torch.ops.load_library) instead of aborting the process."""
    r, ext_dir = jit_build
    assert r.returncode == 0, r.stdout + r.stderr
    library = r.stdout.split()[1]
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext_dir))
    if first == "jit":
        env["TORCHCONV3D_FORCE_JIT"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SECOND_COPY, library], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "refused:" in out.stdout and out.stdout.strip().endswith("ok"), out.stdout


def test_prebuilt_is_used_without_compiling(tmp_path):
    ext_dir = tmp_path / "extensions"
    r = _run({"TORCH_EXTENSIONS_DIR": str(ext_dir)}, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[0] == "prebuilt"
    assert not ext_dir.exists()  # nothing was compiled
