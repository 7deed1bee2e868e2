import importlib.util
import os
import sys

from setuptools import setup

try:
    import torch  # noqa: F401
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "torchconv3d builds against the installed torch. Install torch first, then "
        "`pip install --no-build-isolation -e .` (build isolation would hide torch)."
    )

_spec = importlib.util.spec_from_file_location(
    "_build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchconv3d", "_build.py")
)
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

with_cuda = _build.want_cuda()
Extension = CUDAExtension if with_cuda else CppExtension
compile_args = {"cxx": _build.cxx_flags(with_cuda)}
if with_cuda:
    compile_args["nvcc"] = _build.nvcc_flags()

setup(
    name="torchconv3d",
    version="0.1.0",
    description="Drop-in torch.nn.Conv3d on hand-written CPU and CUDA kernels",
    packages=["torchconv3d"],
    ext_modules=[
        Extension(
            "torchconv3d._C",
            # setuptools wants paths relative to setup.py
            [os.path.relpath(s) for s in _build.sources(with_cuda)],
            extra_compile_args=compile_args,
            extra_link_args=_build.link_flags(),
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    extras_require={"bench": ["matplotlib"]},  # benchmarks/run.py --chart
)
