"""torchconv3d: a drop-in torch.nn.Conv3d on hand-written CPU (and CUDA) kernels."""
from . import ops  # noqa: F401  (loads the compiled operators, registers fake + autograd)
from .functional import conv3d
from .modules import Conv3d, convert
from .streaming import conv3d_step

__all__ = ["Conv3d", "conv3d", "conv3d_step", "convert"]
__version__ = "0.1.0"
