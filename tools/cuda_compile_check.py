"""Compiles csrc/ as a CUDA build would, without a CUDA torch: every csrc/cuda/*.cu with nvcc
and torch's own nvcc flags (COMMON_NVCC_FLAGS), every .cpp with -DWITH_CUDA, objects only
(nothing to link against here).

The CPU torch wheel ships the c10/cuda headers but not the generated
c10/cuda/impl/cuda_cmake_macros.h; a shim directory supplies it. Arches come from
TORCH_CUDA_ARCH_LIST like a real build ("9.0" -> sm_90, "9.0a" -> sm_90a), default 9.0.

It also writes DIR/resources.json: per kernel, what ptxas reported (registers, stack frame,
spill bytes) and how many HMMA instructions its SASS holds (cuobjdump, from PATH or the
nvidia-cuda-cuobjdump PyPI package), and prints the tensor-core kernels' lines.

    python tools/cuda_compile_check.py [--out DIR]
"""
import argparse
import concurrent.futures
import glob
import json
import os
import re
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


def torch_nvcc_flags():
    """The flags torch's BuildExtension adds to every nvcc call (no half operators, ...)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    return list(COMMON_NVCC_FLAGS)


def cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for path in glob.glob(os.path.join(root, "*", "bin", "cuobjdump")):
            return path
    return None


def demangle(names):
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return r.stdout.splitlines() if r.returncode == 0 else list(names)


def resources(ptxas_log, obj):
    """{kernel: {registers, stack, spill_stores, spill_loads, hmma}} from ptxas -v and SASS."""
    kernels, name = {}, None
    for line in ptxas_log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            kernels[name] = {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and name:
            kernels[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                 spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            kernels[name]["registers"] = int(m.group(1))
    tool = cuobjdump()
    if tool:
        # cuobjdump runs nvdisasm (PATH or NVDISASM_PATH); the PyPI packages put both in one
        # bin folder.
        env = dict(os.environ, PATH=os.path.dirname(tool) + os.pathsep + os.environ.get("PATH", ""))
        sass = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, env=env).stdout
        name = None
        for line in sass.splitlines():
            m = re.search(r"Function : (\S+)", line)
            if m:
                name = m.group(1)
                kernels.setdefault(name, {})["hmma"] = 0
            elif name and re.search(r"\bHMMA\b", line):
                kernels[name]["hmma"] += 1
    names = list(kernels)
    return {pretty: kernels[n] for n, pretty in zip(names, demangle(names))}


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
        cmds.append(["nvcc", "-Xcompiler", "-fPIC", *torch_nvcc_flags(),
                     *_build.nvcc_flags(), *arch_flags(), "-Xptxas", "-v", *inc, "-c", src,
                     "-o", obj])
    for src in _build.sources(with_cuda=True):
        if src.endswith(".cpp"):
            obj = os.path.join(out, os.path.relpath(src, _build.CSRC).replace(os.sep, "_") + ".o")
            cmds.append(["c++", "-fPIC", *_build.cxx_flags(with_cuda=True), *inc,
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
    report = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for cmd, r, secs in pool.map(run, cmds):
            name = os.path.relpath(cmd[cmd.index("-c") + 1], ROOT)
            print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} {name} ({secs:.0f} s)")
            if r.returncode != 0:
                failed = True
                print(" ".join(cmd), r.stdout, r.stderr, sep="\n")
            elif cmd[0] == "nvcc":
                report.update(resources(r.stdout + r.stderr, cmd[cmd.index("-o") + 1]))
    with open(os.path.join(out, "resources.json"), "w") as f:
        json.dump(report, f, indent=1)
    for kernel, res in sorted(report.items()):
        if "::tc::" in kernel or "::dw::" in kernel:
            short = re.sub(r"torchconv3d::gpu::(tc::|dw::)?", "", kernel.split("(")[0])
            print(f"  {short}: {res}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
