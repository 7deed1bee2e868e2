"""torchconv3d: a drop-in torch.nn.Conv3d on hand-written CPU (and CUDA) kernels."""
from . import ops  # noqa: F401  (loads the compiled operators, registers fake + autograd)
from .functional import conv3d, conv_transpose3d
from .modules import Conv3d, ConvertReport, ConvTranspose3d, convert
from .streaming import conv3d_step

__all__ = ["Conv3d", "ConvTranspose3d", "ConvertReport", "conv3d", "conv3d_step",
           "conv_transpose3d", "convert"]
__version__ = "0.1.0"
