"""Compiles csrc/ as a CUDA build would, without a CUDA torch: every csrc/cuda/*.cu with nvcc
and every .cpp with -DWITH_CUDA, objects only (nothing to link against here).

The CPU torch wheel ships the c10/cuda headers but not the generated
c10/cuda/impl/cuda_cmake_macros.h; a shim directory supplies it. Arches come from
TORCH_CUDA_ARCH_LIST like a real build ("9.0" -> sm_90, "9.0a" -> sm_90a), default 9.0.

    python tools/cuda_compile_check.py [--out DIR]
"""
import argparse
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "torchconv3d"))
import _build  # noqa: E402  (by path: the package itself needs a built extension)


def arch_flags():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").replace(",", " ").replace(";", " ")
    flags = []
    for a in archs.split():
        a = a.replace("+PTX", "")
        num = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def include_flags(shim):
    from torch.utils.cpp_extension import include_paths

    dirs = [shim] + include_paths() + [sysconfig.get_paths()["include"]]
    return [f"-I{d}" for d in dirs]


def write_shim(root):
    path = os.path.join(root, "c10", "cuda", "impl")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "cuda_cmake_macros.h"), "w") as f:
        f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")


def commands(out, shim):
    inc = include_flags(shim)
    cmds = []
    for src in sorted(glob.glob(os.path.join(_build.CSRC, "cuda", "*.cu"))):
        obj = os.path.join(out, os.path.basename(src) + ".o")
        cmds.append(["nvcc", "-std=c++20", "-Xcompiler", "-fPIC", *_build.nvcc_flags(),
                     *arch_flags(), *inc, "-c", src, "-o", obj])
    for src in _build.sources(with_cuda=True):
        if src.endswith(".cpp"):
            obj = os.path.join(out, os.path.relpath(src, _build.CSRC).replace(os.sep, "_") + ".o")
            cmds.append(["c++", "-std=c++20", "-fPIC", *_build.cxx_flags(with_cuda=True), *inc,
                         "-c", src, "-o", obj])
    return cmds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where the objects go (default: a temporary directory)")
    args = parser.parse_args()
    if shutil.which("nvcc") is None:
        sys.exit("nvcc not found on PATH")
    out = args.out or tempfile.mkdtemp(prefix="torchconv3d-cuda-check-")
    os.makedirs(out, exist_ok=True)
    shim = os.path.join(out, "shim")
    write_shim(shim)
    cmds = commands(out, shim)
    if not any(c[0] == "nvcc" for c in cmds):
        sys.exit(f"no CUDA sources under {os.path.join(_build.CSRC, 'cuda')}")

    def run(cmd):
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        return cmd, r, time.time() - t0

    failed = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for cmd, r, secs in pool.map(run, cmds):
            name = os.path.relpath(cmd[cmd.index("-c") + 1], ROOT)
            print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} {name} ({secs:.0f} s)")
            if r.returncode != 0:
                failed = True
                print(" ".join(cmd), r.stdout, r.stderr, sep="\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
