import pytest
import torch

import torchconv3d  # noqa: F401  (builds/loads the operators once per session)
# The helpers live in cases.py; re-exported so `from conftest import rel_err` keeps working.
from cases import (BACKENDS, CL, CPU, CUDA, TOL, cuda_emulated, make_layout,  # noqa: F401
                   reference, rel_err, round_tf32)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption("--backend", action="append", choices=BACKENDS,
                     help="run the backend-parametrised tests on this backend only "
                          "(repeatable; default: all of them, skipping what the machine lacks)")


def pytest_collection_modifyitems(config, items):
    backends = config.getoption("--backend")
    if backends:
        kept, dropped = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            name = callspec.params.get("backend") if callspec else None
            (dropped if name is not None and name not in backends else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 runs exactly in every test (torch's default lets cuDNN, and so our CUDA
    kernels, use TF32); a test that wants TF32 turns it on itself (run_case(tf32=True))."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Where the test's convolutions run (a cases.Backend): 'cpu', 'cuda' (skipped without a
    GPU) or 'cuda_emulated' (the CUDA kernels on the CPU emulator, built on first use).
    Parametrise "backend" indirectly (cases.each_backend does) to run on fewer of them.
    TF32 is off (_no_tf32)."""
    name = request.param
    if name == "cpu":
        chosen = CPU
    elif name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("backend 'cuda' needs a CUDA GPU: torch.cuda.is_available() is False")
        chosen = CUDA
    else:
        chosen = cuda_emulated()
    return chosen
