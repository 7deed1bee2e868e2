"""Conv3d, a drop-in nn.Conv3d running torchconv3d's kernels, and convert()."""
import operator

import torch.nn as nn

from ._check import padding_modes
from .functional import (CONV_MODES, DATA_FORMATS, PADDING_STRINGS, check_causal, conv3d,
                         megengine_to_torch, resolve_padding_mode)
from .streaming import ConvStream, _causal_geometry, conv3d_step


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


def convert(module):
    """Replaces every nn.Conv3d in `module` (or `module` itself) by torchconv3d.Conv3d.

    Only modules whose type is exactly nn.Conv3d are replaced: subclasses may override
    forward, and lazy or parametrized modules are left as they are. The new modules share
    the original Parameter objects (optimizer state stays valid), hooks and training mode. Returns the converted module; children are swapped in place.
    """
    if type(module) is nn.Conv3d:
        new = Conv3d.__new__(Conv3d)
        # The same attribute objects: the module is replaced, not copied, so a hook handle
        # taken before convert still removes its hook (handles hold the hook dicts).
        new.__dict__.update(module.__dict__)
        new.data_format, new.conv_mode = "NCDHW", "cross_correlation"
        return new
    for name, child in module.named_children():
        new = convert(child)
        if new is not child:
            setattr(module, name, new)
    return module
