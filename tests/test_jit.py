"""The JIT path: with no built extension, `import torchconv3d` compiles csrc/ with
torch.utils.cpp_extension.load and uses it; with one, it never compiles."""
import os
import subprocess
import sys
import textwrap

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


def test_jit_build_in_fresh_process(tmp_path):
    ext_dir = tmp_path / "extensions"
    r = _run({"TORCHCONV3D_FORCE_JIT": "1", "TORCH_EXTENSIONS_DIR": str(ext_dir)}, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    backend, library = r.stdout.split()[:2]
    assert backend == "jit"
    assert library.startswith(str(ext_dir))  # compiled here, into its own cache
    assert r.stdout.strip().endswith("ok")


def test_prebuilt_is_used_without_compiling(tmp_path):
    ext_dir = tmp_path / "extensions"
    r = _run({"TORCH_EXTENSIONS_DIR": str(ext_dir)}, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[0] == "prebuilt"
    assert not ext_dir.exists()  # nothing was compiled
