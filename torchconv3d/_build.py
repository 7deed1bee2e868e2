"""Build recipe shared by setup.py and the JIT loader, so both compile the same thing.

Kept free of package imports: setup.py loads this file by path before the package exists.
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
STD = "-std=c++17"


def want_cuda():
    """CUDA sources are built when there are any, torch has CUDA and a toolkit is found.

    TORCHCONV3D_NO_CUDA=1 forces a CPU-only build. Without csrc/cuda/*.cu there is no
    cuda_kernels() to link, so the build stays CPU-only and CUDA tensors get a clear error.
    """
    if os.environ.get("TORCHCONV3D_NO_CUDA") == "1":
        return False
    if not glob.glob(os.path.join(CSRC, "cuda", "*.cu")):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(with_cuda, root=CSRC):
    files = sorted(glob.glob(os.path.join(root, "*.cpp")))
    files += sorted(glob.glob(os.path.join(root, "cpu", "*.cpp")))
    if with_cuda:
        files += sorted(glob.glob(os.path.join(root, "cuda", "*.cpp")))
        files += sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))
    return files


def cxx_flags(with_cuda):
    # -fopenmp: at::parallel_for is an inline template whose `omp parallel` compiles to a
    # serial loop in code built without it. C++17 whatever torch's default (torch 2.11,
    # seen on the lent GPU machines, builds extensions as C++17; 2.13 as C++20).
    flags = [STD, "-O3", "-fno-math-errno", "-fopenmp"]
    if with_cuda:
        flags.append("-DWITH_CUDA")
    return flags


def link_flags():
    # Records libgomp.so.1 as needed; at load time it resolves to the copy torch loaded.
    return ["-fopenmp"]


def nvcc_flags():
    return [STD, "-O3", "-DWITH_CUDA", "--expt-relaxed-constexpr"]
