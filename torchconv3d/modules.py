"""Conv3d and ConvTranspose3d, drop-in nn.Conv3d / nn.ConvTranspose3d running
torchconv3d's kernels, and convert()."""
import dataclasses
import logging
import operator

import torch.nn as nn
from torch.nn.utils import parametrize

from ._check import padding_modes
from .functional import (CONV_MODES, DATA_FORMATS, PADDING_STRINGS, check_causal, conv3d,
                         conv_transpose3d, megengine_to_torch, resolve_padding_mode)
from .streaming import ConvStream, _causal_geometry, conv3d_step

logger = logging.getLogger("torchconv3d")


def _torch_accepts(padding, stride):
    """Whether nn.Conv3d itself would take this padding (then it may validate it). Values
    of the wrong type are left to it as well: like nn.Conv3d, the forward then raises."""
    if isinstance(padding, str):
        return padding == "valid" or (padding == "same" and all(s == 1 for s in _as3(stride)))
    if isinstance(padding, (tuple, list)):
        return not any(isinstance(p, (tuple, list, str)) for p in padding)
    return True


def _as3(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3


def _check_sizes(in_channels, out_channels, kernel_size):
    """What nn.Conv3d leaves to torch.empty, whose message names no argument."""
    def fits(v, least):
        try:
            return least <= operator.index(v) < 2**63
        except TypeError:
            return True  # not an integer: nn.Conv3d's own error says so

    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not fits(value, 0):
            raise ValueError(f"{name} must be a non-negative integer below 2^63, but got "
                             f"{name}={value!r}")
    if not all(fits(k, 1) for k in _as3(kernel_size)):
        raise ValueError("kernel_size must be positive integers below 2^63, but got "
                         f"kernel_size={kernel_size!r}")


class Conv3d(nn.Conv3d):
    """nn.Conv3d with the same arguments, parameters, initialisation and state_dict keys.

    Beyond nn.Conv3d, padding also takes per-dimension (before, after) pairs,
    'same' with any stride (TensorFlow rule), 'causal' and ('causal', h, w) (causal time,
    explicit height and width); padding_mode may be one mode per dimension,
    e.g. ('replicate', 'zeros', 'zeros'); every padding_mode is applied inside the kernels
    without a padded copy of the input. Causal layers also run on a video in chunks:
    step() and stream() (torchconv3d/streaming.py). data_format='NDHWC' takes and
    returns TensorFlow-layout tensors (read in place); conv_mode='convolution' flips the
    kernel (MegEngine). load_state_dict also accepts MegEngine's grouped weight
    (groups, C_out / groups, C_in / groups, kD, kH, kW) and bias (1, C_out, 1, 1, 1).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, data_format="NCDHW", conv_mode="cross_correlation"):
        if isinstance(padding, str) and padding not in PADDING_STRINGS:
            raise ValueError(
                f"Invalid padding string {padding!r}, should be one of {PADDING_STRINGS}"
            )
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, but got {data_format!r}")
        if conv_mode not in CONV_MODES:
            raise ValueError(f"conv_mode must be one of {CONV_MODES}, but got {conv_mode!r}")
        check_causal(padding, padding_mode)
        resolve_padding_mode(padding_mode)  # (its TypeError here, not at the first forward)
        _check_sizes(in_channels, out_channels, kernel_size)
        # nn.Conv3d rejects our extensions; it gets a stand-in and the real spec is kept.
        one_mode = isinstance(padding_mode, str) and "," not in padding_mode
        super().__init__(
            in_channels, out_channels, kernel_size, stride,
            padding if _torch_accepts(padding, stride) else 0,
            dilation, groups, bias, padding_mode if one_mode else "zeros", device, dtype,
        )
        if not one_mode:  # per dimension: kept as a tuple (repr, pickling, copy.deepcopy)
            self.padding_mode = tuple(padding_modes(resolve_padding_mode(padding_mode)))
        if not _torch_accepts(padding, stride):
            self.padding = padding if isinstance(padding, str) else tuple(
                p if isinstance(p, (int, str)) else tuple(p) for p in padding
            )
        self.data_format = data_format
        self.conv_mode = conv_mode

    def _conv_forward(self, input, weight, bias):
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation,
                      self.groups, self.padding_mode,
                      data_format=self.data_format,
                      conv_mode=self.conv_mode)

    def check_streamable(self):
        """Raises ValueError unless step() can run this layer: depth padding causal,
        temporal stride at most (k_d - 1) * dilation_d + 1, time padding mode 'zeros' or
        'replicate', data_format 'NCDHW'."""
        if self.data_format != "NCDHW":
            raise ValueError("streaming (step, stream) takes NCDHW chunks, but this layer has "
                             f"data_format={self.data_format!r}")
        weight = self.weight.detach()
        sizes = [1, self.in_channels] + [max(1, k) for k in self.kernel_size]
        _causal_geometry(weight.new_empty(sizes, device="meta"), weight, self.stride,
                         self.padding, self.dilation, self.padding_mode)

    def step(self, input, cache=None):
        """One chunk of the video: (output, cache). cache is None for the first chunk, then
        what the previous call returned; the outputs of all chunks, concatenated in time,
        equal the layer's output on the whole video (torchconv3d/streaming.py)."""
        if self.data_format != "NCDHW":
            self.check_streamable()
        weight = self.weight.flip(-3, -2, -1) if self.conv_mode == "convolution" else self.weight
        return conv3d_step(input, weight, self.bias, self.stride, self.padding, self.dilation,
                           self.groups, self.padding_mode, cache=cache)

    def stream(self):
        """A ConvStream: call it on each chunk in turn; it keeps the cache."""
        return ConvStream(self)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling a module. It cannot compile conv3d's
        # Python (keyword-only arguments, padding forms of any type) and is deprecated
        # itself; the error names what does run this layer.
        raise RuntimeError(
            "torchconv3d.Conv3d cannot be compiled by torch.jit.script (deprecated, and its "
            "forward is Python that TorchScript cannot compile). Use torch.compile or "
            "torch.export, or torch.jit.trace for TorchScript: each records the "
            "torch.ops.torchconv3d operators."
        )

    def extra_repr(self):
        s = super().extra_repr()
        if self.data_format != "NCDHW":
            s += f", data_format={self.data_format!r}"
        if self.conv_mode != "cross_correlation":
            s += f", conv_mode={self.conv_mode!r}"
        return s

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MegEngine's grouped weight and 5-D bias hold the same numbers in the same order.
        w, b = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if w is not None:
            w, b = megengine_to_torch(w, b, self.groups)
            state_dict[prefix + "weight"] = w
            if b is not None:
                state_dict[prefix + "bias"] = b
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d with the same arguments, parameters, initialisation, state_dict
    keys and repr, forward(input, output_size=None) included; it runs on torchconv3d's
    kernels (the transposed convolution is our convolution's grad_input pass)."""

    def forward(self, input, output_size=None):
        # nn.ConvTranspose3d.forward, with our functional: the same checks and errors.
        if self.padding_mode != "zeros":
            raise ValueError(
                f"Only `zeros` padding mode is supported for {self.__class__.__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 3, self.dilation)
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "torchconv3d.ConvTranspose3d cannot be compiled by torch.jit.script (its forward "
            "is Python that TorchScript cannot compile). Use torch.compile or torch.export, "
            "or torch.jit.trace for TorchScript.")


@dataclasses.dataclass
class ConvertReport:
    """What convert() did: each module it met that nn.Conv3d / nn.ConvTranspose3d (or a
    subclass) is, by its qualified name in the model ('' for the model itself).

    swapped: (name, class name) of the modules that now run on our kernels.
    left: (name, class name, reason) of those left on torch's path.
    """
    swapped: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"torchconv3d.convert: swapped {len(self.swapped)}, left "
                 f"{len(self.left)} on torch's path"]
        lines += [f"  swapped {name or '(model)'}: {cls}" for name, cls in self.swapped]
        lines += [f"  left    {name or '(model)'}: {cls}: {why}" for name, cls, why in self.left]
        return "\n".join(lines)


# Where each torch class runs its convolution: the method a subclass must leave to torch's
# class for ours to run beneath it. nn.Conv3d.forward calls _conv_forward, which a subclass's
# own forward reaches through super().forward() (diffusers' WanCausalConv3d pads and calls
# it; CogVideoXSafeConv3d calls it per time chunk). nn.ConvTranspose3d.forward computes
# directly, so there the entry point is forward itself.
_ENTRY_POINTS = {nn.Conv3d: "_conv_forward", nn.ConvTranspose3d: "forward"}
_OURS = {nn.Conv3d: Conv3d, nn.ConvTranspose3d: ConvTranspose3d}
_accelerated_classes = {}


def _accelerated(cls, ours):
    """cls with our class inserted between it and torch's in the method order
    (cls -> ours -> torch's), so that cls's own methods run unchanged and reach ours where
    they call torch's. Same name (its repr is unchanged); isinstance holds for cls, ours and
    torch's class. One class per original class."""
    if cls not in _accelerated_classes:
        _accelerated_classes[cls] = type(cls.__name__, (cls, ours), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "_torchconv3d_original_class": cls})
    return _accelerated_classes[cls]


def _why_left(module, base):
    """Why a subclass of base cannot run on our kernels, or None if it can."""
    cls = type(module)
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return "lazy module, not yet initialised (convert after its first forward)"
    if parametrize.is_parametrized(module):
        return "parametrized (torch.nn.utils.parametrize)"
    entry = _ENTRY_POINTS[base]
    owner = next(c for c in cls.__mro__ if entry in c.__dict__)
    if owner is not base:
        return (f"{owner.__qualname__} overrides {entry}, which is where our kernels would "
                f"run")
    return None


def _swap(module, base, ours):
    """A module of our class (or of cls accelerated) sharing module's attributes."""
    cls = type(module)
    new_cls = ours if cls is base else _accelerated(cls, ours)
    new = new_cls.__new__(new_cls)
    # The same attribute objects: the module is replaced, not copied, so a hook handle
    # taken before convert still removes its hook (handles hold the hook dicts).
    new.__dict__.update(module.__dict__)
    if base is nn.Conv3d:
        new.data_format, new.conv_mode = "NCDHW", "cross_correlation"
    return new


def _convert(module, name, report, done):
    if id(module) in done:  # a module shared by several parents is swapped once
        return done[id(module)]
    new = module
    base = next((b for b in _ENTRY_POINTS if isinstance(module, b)), None)
    if base is not None and not isinstance(module, _OURS[base]):
        why = _why_left(module, base)
        if why is None:
            new = _swap(module, base, _OURS[base])
            report.swapped.append((name, type(module).__qualname__))
        else:
            report.left.append((name, type(module).__qualname__, why))
    done[id(module)] = new
    for child_name, child in new.named_children():
        converted = _convert(child, f"{name}.{child_name}" if name else child_name, report,
                             done)
        if converted is not child:
            setattr(new, child_name, converted)
    return new


def convert(module, *, verbose=False, return_report=False):
    """Replaces every nn.Conv3d and nn.ConvTranspose3d in `module` (or `module` itself) by
    one running torchconv3d's kernels.

    Exact nn.Conv3d / nn.ConvTranspose3d become torchconv3d.Conv3d / ConvTranspose3d.
    A subclass keeps its own class and methods, with ours inserted beneath it (a class
    of the same name deriving from both): its forward runs unchanged and reaches our
    kernels where it calls torch's convolution (nn.Conv3d._conv_forward, e.g. through
    super().forward(); nn.ConvTranspose3d.forward). Left on torch's path, with the reason:
    a subclass that overrides that method itself, a lazy module not yet initialised, a
    parametrized one. New modules share the original Parameter objects (optimizer state
    stays valid), buffers, hooks and training mode; the original modules are not changed.

    Returns the converted module (children are swapped in place), or (module, report)
    with return_report=True, report a ConvertReport of what was swapped and what was left
    and why. verbose=True prints the report; it is always logged at INFO (logger
    "torchconv3d").
    """
    report = ConvertReport()
    new = _convert(module, "", report, {})
    logger.info("%s", report)
    if verbose:
        print(report)
    return (new, report) if return_report else new
