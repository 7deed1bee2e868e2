"""Loads the compiled operators exactly once.

The extension built by setup.py (torchconv3d._C) is preferred. Without one, csrc/ is
compiled with torch.utils.cpp_extension.load (ninja) into TORCH_EXTENSIONS_DIR and cached
there. Both register the same operator names, so loading both would fail: whichever
loads first wins and the other is never tried. TORCHCONV3D_FORCE_JIT=1 skips the
prebuilt extension (used by the tests of the JIT path).
"""
import os

BACKEND = None  # "prebuilt" or "jit", set by load()
LIBRARY = None  # path of the loaded shared library


def _load_jit():
    from torch.utils.cpp_extension import load

    from . import _build

    with_cuda = _build.want_cuda()
    srcs = _build.sources(with_cuda)
    if not srcs:
        raise ImportError(
            f"torchconv3d: no built extension (torchconv3d._C) and no sources under {_build.CSRC} "
            "to compile; reinstall with `pip install --no-build-isolation -e .`"
        )
    return load(
        name="torchconv3d_jit",
        sources=srcs,
        extra_cflags=_build.cxx_flags(with_cuda),
        extra_ldflags=_build.link_flags(),
        extra_cuda_cflags=_build.nvcc_flags() if with_cuda else None,
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=os.environ.get("TORCHCONV3D_VERBOSE_BUILD") == "1",
    )


def load():
    global BACKEND, LIBRARY
    if BACKEND is not None:
        return
    if os.environ.get("TORCHCONV3D_FORCE_JIT") != "1":
        try:
            from . import _C
        except ImportError:
            pass
        else:
            BACKEND, LIBRARY = "prebuilt", _C.__file__
            return
    LIBRARY = _load_jit()
    BACKEND = "jit"


def cpu_isa():
    """The instruction set the CPU kernels were dispatched to: "avx512_bf16", "avx512",
    "avx2" or "generic"."""
    import torch

    load()
    return torch.ops.torchconv3d.cpu_isa()
