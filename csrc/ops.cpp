// The device-independent half of every operator: check the arguments, pick output
// memory formats, allocate, then hand off to a device's kernel table. Schemas and
// registration are in register.cpp; autograd and fake kernels in torchconv3d/ops.py.
#include "conv3d.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <limits>
#include <new>

namespace torchconv3d {
namespace {

// Whether a oneDNN capability op (mkldnn::_is_mkldnn_bf16_supported / _fp16_) says yes;
// false where torch was built without oneDNN.
bool mkldnn_supports(const char* op) {
  const auto handle = c10::Dispatcher::singleton().findSchema({op, ""});
  return handle.has_value() && handle->typed<bool()>().call();
}

// Where nn.Conv3d computes in oneDNN (CPU) or cuDNN (CUDA): ATen's select_conv_backend
// (Convolution.cpp) for these dtypes and sizes.
bool torch_uses_channels_last_backend(const at::Tensor& x, const at::Tensor& weight,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding,
                                      c10::IntArrayRef dilation, int64_t groups,
                                      PadMode mode) {
  if (x.size(0) == 0 || x.size(1) == 0) return false;  // its Empty backend
  const auto dtype = x.scalar_type();
  if (dtype == at::kDouble) return false;
  if (x.is_cuda()) {
    return at::globalContext().userEnabledCuDNN() &&
           at::detail::getCUDAHooks().compiledWithCuDNN();
  }
  if (!x.is_cpu() || !at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn()) return false;
  static const bool bf16 = mkldnn_supports("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = mkldnn_supports("mkldnn::_is_mkldnn_fp16_supported");
  if (dtype == at::kBFloat16) return bf16;
  if (dtype == at::kHalf) return fp16;
  if (dtype != at::kFloat) return false;
  // torch's float32 heuristic (its own slow path is faster on small single-sample layers).
  // Other padding modes reach torch's conv through F.pad: it sees the padded sizes.
  const bool pads = mode != PadMode::Zeros;
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t d = x.size(2) + (pads ? padding[0] + padding[1] : 0);
  const int64_t h = x.size(3) + (pads ? padding[2] + padding[3] : 0);
  const int64_t kh = weight.size(3), kw = weight.size(4);
  const auto not_one = [](c10::IntArrayRef a) {
    return std::any_of(a.begin(), a.end(), [](int64_t v) { return v != 1; });
  };
  return (not_one(stride) || not_one(dilation) || kw != 1 || kh != 1 ||
          at::get_num_threads() > 1 || n >= 16) &&
         (groups > 1 || (kw > 3 && kh > 3) || n > 1 || n * c * d * h > 20480);
}

// nn.Conv3d has one mode; per-dimension modes are compared with F.pad per distinct mode,
// then F.conv3d, whose layouts the strongest mode decides: circular (F.pad's contiguous
// copy), else any other non-zero mode (a padded copy in the input's format), else zeros.
PadMode formats_mode(const PadModes& modes) {
  PadMode m = PadMode::Zeros;
  for (PadMode d : modes) {
    if (d == PadMode::Circular) return d;
    if (d != PadMode::Zeros) m = d;
  }
  return m;
}

}  // namespace

TorchFormats torch_formats(const at::Tensor& x, const at::Tensor& weight,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups, const PadModes& modes) {
  const PadMode mode = formats_mode(modes);
  const auto cl = at::MemoryFormat::ChannelsLast3d, contiguous = at::MemoryFormat::Contiguous;
  // F.pad's copy of a channels_last_3d input is contiguous for circular (a cat) and, on
  // CUDA, for every mode (its pad kernels write contiguous tensors, and so do their
  // backwards); on the CPU reflect and replicate keep the input's format.
  const bool contiguous_copy =
      mode == PadMode::Circular || (mode != PadMode::Zeros && x.is_cuda());
  const bool input_cl = x.suggest_memory_format() == cl && !contiguous_copy;
  const auto conv = torch_uses_channels_last_backend(x, weight, stride, padding, dilation,
                                                     groups, mode) &&
                            (input_cl || weight.suggest_memory_format() == cl)
                        ? cl
                        : contiguous;
  at::MemoryFormat grad_input = conv;  // zeros: the convolution's own
  if (contiguous_copy) {
    grad_input = contiguous;
  } else if (mode != PadMode::Zeros) {
    grad_input = input_cl ? cl : contiguous;  // F.pad's backward: the input's format
  }
  // cuDNN's weight gradient takes the format that its input suggests once made contiguous
  // in the convolution's: an unbatched channels_last_3d input (batch stride C) already is,
  // yet suggests contiguous.
  at::MemoryFormat grad_weight = conv;
  if (x.is_cuda() && conv == cl && mode == PadMode::Zeros && x.is_contiguous(cl) &&
      x.suggest_memory_format() != cl) {
    grad_weight = contiguous;
  }
  return {conv, grad_input, grad_weight};
}

at::MemoryFormat torch_transpose_format(const at::Tensor& x, const at::Tensor& weight,
                                        c10::IntArrayRef stride,
                                        c10::IntArrayRef output_padding,
                                        c10::IntArrayRef dilation, int64_t groups) {
  // ATen decides as for a convolution, on the transposed call's own input and weight, except
  // that its CPU oneDNN path refuses an output_padding of a stride or more (allowed where the
  // dilation is larger), which then runs on its contiguous slow path. The output and both
  // gradients share the backend's format.
  if (x.is_cpu()) {
    for (int i = 0; i < 3; ++i)
      if (output_padding[i] >= stride[i]) return at::MemoryFormat::Contiguous;
  }
  static const std::array<int64_t, 6> no_padding{};
  const bool cl_backend = torch_uses_channels_last_backend(x, weight, stride, no_padding,
                                                           dilation, groups, PadMode::Zeros);
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  return cl_backend && (x.suggest_memory_format() == cl || weight.suggest_memory_format() == cl)
             ? cl
             : at::MemoryFormat::Contiguous;
}

namespace {

at::Tensor batched(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

// Taps that read only zero padding add nothing but zero terms, yet they size every
// kernel's planes and loops: 'same' with a dilation far past the input (k = 3, dilation
// 400 on an 8^3 volume) made the CPU planes grow as dilation^3. With zero padding, each
// dimension keeps the taps whose reads can reach the input and the input rows those can
// reach (views of weight and input), with padding recomputed so that the output size is
// unchanged: the same convolution, with extents bounded by the input and output sizes.
// A dropped tap's terms are weight x padded zero, which is not zero for a NaN/Inf weight
// or grad_output; those terms are added back exactly (nonfinite_dropped_weights,
// nonfinite_grad_output_channels).
struct Trim {
  bool active = false;     // some tap reads only padding
  bool none_live = false;  // every tap does: no term reads the input
  std::array<int64_t, 3> first_tap{}, first_in{};
  Geometry g;  // the convolution of the kept taps over the kept input rows

  at::Tensor input(const at::Tensor& x) const { return crop(x, first_in, g.in); }
  // x's kept rows and columns, all its frames: a stream's head and body (never trimmed in
  // depth: run_stream_forward's depth padding is 0, and then every kernel depth reads input).
  at::Tensor rows(const at::Tensor& x) const {
    TORCH_INTERNAL_ASSERT(first_in[0] == 0 && first_tap[0] == 0);
    return x.narrow(3, first_in[1], g.in[1]).narrow(4, first_in[2], g.in[2]);
  }
  at::Tensor weight(const at::Tensor& w) const { return crop(w, first_tap, g.kernel); }
  // 1 where the weight element belongs to a dropped tap, as a [1, 1, kd, kh, kw] mask.
  at::Tensor dropped(const at::Tensor& w) const {
    at::Tensor kept = at::zeros({1, 1, w.size(2), w.size(3), w.size(4)},
                                w.options().dtype(at::kBool));
    if (!none_live) crop(kept, first_tap, g.kernel).fill_(true);
    return kept.logical_not();
  }

 private:
  static at::Tensor crop(const at::Tensor& t, const std::array<int64_t, 3>& first,
                         const std::array<int64_t, 3>& size) {
    return t.narrow(2, first[0], size[0]).narrow(3, first[1], size[1]).narrow(4, first[2],
                                                                            size[2]);
  }
};

Trim trim_dead_taps(const Geometry& g) {
  Trim t;
  t.g = g;
  for (int i = 0; i < 3; ++i) {
    if (g.mode[i] != PadMode::Zeros) continue;  // the other modes read the input in the padding
    const int64_t n = g.in[i], k = g.kernel[i], d = g.dilation[i], pb = g.pad_before[i];
    // Tap j reads q = o * stride + j * d - pb for o in [0, out): it is kept when that range
    // meets [0, n). (With stride > 1 the reads are a lattice that may still miss the input:
    // such taps are kept, which is correct, only not the smallest.)
    const int64_t last_read = (g.out[i] - 1) * g.stride[i];
    const int64_t before = pb - last_read;  // (no ceil_div: before + d may pass int64)
    const int64_t lo_tap = before <= 0 ? 0 : before / d + (before % d != 0);
    const int64_t hi_tap = std::min<int64_t>(k - 1, (n - 1 + pb) / d);
    if (lo_tap > hi_tap) {
      t.active = t.none_live = true;
      return t;
    }
    if (lo_tap == 0 && hi_tap == k - 1) continue;
    t.active = true;
    const int64_t lo_in = std::max<int64_t>(0, lo_tap * d - pb);
    const int64_t hi_in = std::min<int64_t>(n - 1, last_read + hi_tap * d - pb);
    t.first_tap[i] = lo_tap;
    t.first_in[i] = lo_in;
    t.g.kernel[i] = hi_tap - lo_tap + 1;
    t.g.in[i] = hi_in - lo_in + 1;
    t.g.pad_before[i] = pb - lo_tap * d + lo_in;  // >= 0: lo_in covers lo_tap * d - pb
    t.g.pad_after[i] =  // >= 0: the last read is at or past hi_in
        last_read + (t.g.kernel[i] - 1) * d + 1 - t.g.in[i] - t.g.pad_before[i];
  }
  normalise(t.g);
  return t;
}

// Per output channel, whether a dropped term is non-finite. Forward: every output of
// channel co has a term (dropped weight) x 0 for each dropped tap, NaN when that weight
// is NaN/Inf. grad_weight: a dropped tap's gradient is the sum of grad_output x 0 over
// the channel's outputs, NaN when one of them is NaN/Inf, else 0.
at::Tensor nonfinite_dropped_weights(const Trim& t, const at::Tensor& w) {
  return (at::isfinite(w).logical_not() & t.dropped(w)).flatten(1).any(1);
}
at::Tensor nonfinite_grad_output_channels(const at::Tensor& gy) {
  return at::isfinite(gy).logical_not().transpose(0, 1).flatten(1).any(1);
}
// [C] -> broadcastable over an output [N, C, D, H, W].
at::Tensor per_channel(const at::Tensor& t) { return t.view({1, -1, 1, 1, 1}); }

// A kernel's workspace follows the output's rows, the strides and the dilated kernel; for
// extreme arguments (a huge replicate padding with a huge dilation, an output row of 10^8
// elements with a wide stride) it can exceed memory. std::bad_alloc names nothing, so the
// failure is reported with the sizes that asked for it.
template <typename Run>
void naming_sizes_on_failure(const Geometry& g, const char* pass, Run&& run) {
  try {
    run();
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, "conv3d ", pass, ": out of memory for the kernel workspace of input ",
                "(", g.batch, ", ", g.in_channels, ", ", g.in[0], ", ", g.in[1], ", ", g.in[2],
                "), output (", g.out[0], ", ", g.out[1], ", ", g.out[2], "), kernel (",
                g.kernel[0], ", ", g.kernel[1], ", ", g.kernel[2], "), stride ",
                c10::IntArrayRef(g.stride), ", dilation ", c10::IntArrayRef(g.dilation));
  }
}

// The input a kernel reads, in the kept rows: x, or (a stream) x behind the frames of head.
struct KernelInput {
  Geometry g;
  at::Tensor x;
};
KernelInput kernel_input(const Trim& t, const at::Tensor& x, const at::Tensor& head) {
  if (!head.defined()) return {t.g, t.input(x)};
  KernelInput in{t.g, t.rows(x)};
  const at::Tensor h = t.rows(head);
  in.g.head.data = h.const_data_ptr();
  in.g.head.frames = h.size(2);
  for (int i = 0; i < 5; ++i) in.g.head.stride[i] = h.stride(i);
  return in;
}

// Each pass runs its kernel on the kept taps and input rows (the whole convolution when
// nothing is dropped: t.g == g and the views are the tensors' own shape), then, where taps
// were dropped, sets what they alone decide. `head`: the frames before x (a stream).
void forward_pass(const DeviceKernels& k, const Geometry& g, const at::Tensor& x,
                  const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out,
                  const at::Tensor& head = {}) {
  const Trim t = trim_dead_taps(g);
  if (t.none_live) {
    if (bias.defined()) {
      out.copy_(per_channel(bias).expand_as(out));
    } else {
      out.zero_();
    }
  } else {
    const KernelInput in = kernel_input(t, x, head);
    naming_sizes_on_failure(t.g, "forward", [&] {
      k.forward(in.g, in.x, t.weight(weight), bias, out);
    });
  }
  if (t.active) {
    out.masked_fill_(per_channel(nonfinite_dropped_weights(t, weight)),
                     std::numeric_limits<double>::quiet_NaN());
  }
}

void grad_input_pass(const DeviceKernels& k, const Geometry& g, const at::Tensor& gy,
                     const at::Tensor& weight, at::Tensor& grad_input) {
  const Trim t = trim_dead_taps(g);
  // Input rows no kept tap reads have no term at all: exactly zero.
  if (t.active) grad_input.zero_();
  if (t.none_live) return;
  at::Tensor kept = t.input(grad_input);
  naming_sizes_on_failure(t.g, "grad_input",
                          [&] { k.grad_input(t.g, gy, t.weight(weight), kept); });
}

void grad_weight_pass(const DeviceKernels& k, const Geometry& g, const at::Tensor& gy,
                      const at::Tensor& x, at::Tensor& grad_weight,
                      const at::Tensor& head = {}) {
  const Trim t = trim_dead_taps(g);
  if (t.active) {
    const at::Tensor nan_channels = nonfinite_grad_output_channels(gy).view({-1, 1, 1, 1, 1});
    grad_weight.zero_().masked_fill_(nan_channels & t.dropped(grad_weight),
                                     std::numeric_limits<double>::quiet_NaN());
  }
  if (t.none_live) return;
  at::Tensor kept = t.weight(grad_weight);
  const KernelInput in = kernel_input(t, x, head);
  naming_sizes_on_failure(t.g, "grad_weight",
                          [&] { k.grad_weight(in.g, gy, in.x, kept); });
}

// The forward's output for a checked geometry (x: the batched input tensor, head: the
// frames a stream reads before it, or undefined), in nn.Conv3d's format.
at::Tensor forward_result(const DeviceKernels& k, const Geometry& g, const at::Tensor& x,
                          const at::Tensor& head, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const TorchFormats& formats,
                          bool unbatched) {
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out[0], g.out[1], g.out[2]},
                             x.options().memory_format(formats.output));
  if (out.numel() > 0) {
    forward_pass(k, g, x, weight, bias.value_or(at::Tensor()), out, head);
  }
  return unbatched ? out.squeeze(0) : out;
}

}  // namespace

Geometry kernel_geometry(const at::Tensor& input, const at::Tensor& weight,
                         c10::IntArrayRef stride, c10::IntArrayRef padding,
                         c10::IntArrayRef dilation, int64_t groups,
                         std::string_view padding_mode) {
  return trim_dead_taps(check_conv3d_args(input, weight, std::nullopt, std::nullopt, stride,
                                          padding, dilation, groups, padding_mode))
      .g;
}

at::Tensor run_forward(const DeviceKernels& k, const at::Tensor& input,
                       const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, int64_t groups,
                       std::string_view padding_mode) {
  const Geometry g = check_conv3d_args(input, weight, bias, std::nullopt, stride, padding,
                                       dilation, groups, padding_mode);
  const at::Tensor x = batched(input);
  const TorchFormats formats =
      torch_formats(x, weight, stride, padding, dilation, groups, g.mode);
  return forward_result(k, g, x, at::Tensor(), weight, bias, formats, input.dim() == 4);
}

namespace {

// The backward's passes for a checked geometry: x is the batched input tensor, head the
// frames a stream reads before it (undefined otherwise); grad_input has the shape of the
// volume g describes (x's own without a head), results are in nn.Conv3d's formats.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_passes(
    const DeviceKernels& k, const Geometry& g, const at::Tensor& gy, const at::Tensor& x,
    const at::Tensor& head, const at::Tensor& weight, const TorchFormats& formats,
    std::array<bool, 3> output_mask, bool unbatched) {
  const bool empty = gy.numel() == 0;
  at::Tensor grad_input, grad_weight, grad_bias;
  // Weight and bias first: their workspace is freed before grad_input (the largest
  // result) is allocated, which lowers the peak.
  if (output_mask[1]) {
    grad_weight =
        at::empty(weight.sizes(), weight.options().memory_format(formats.grad_weight));
    if (empty) {
      grad_weight.zero_();
    } else {
      grad_weight_pass(k, g, gy, x, grad_weight, head);
    }
  }
  if (output_mask[2]) {
    grad_bias = at::empty({g.out_channels}, gy.options().memory_format(at::MemoryFormat::Contiguous));
    if (empty) {
      grad_bias.zero_();
    } else {
      k.grad_bias(g, gy, grad_bias);
    }
  }
  if (output_mask[0]) {
    // (grad_input reads no input: a stream's volume gets it like any tensor of its shape)
    grad_input = at::empty({g.batch, g.in_channels, g.in[0], g.in[1], g.in[2]},
                           x.options().memory_format(formats.grad_input));
    if (!empty && grad_input.numel() > 0) {
      grad_input_pass(k, g, gy, weight, grad_input);
    } else {
      grad_input.zero_();  // (at::zeros would drop the memory format)
    }
    if (unbatched) grad_input = grad_input.squeeze(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, std::string_view padding_mode,
    std::array<bool, 3> output_mask) {
  const Geometry g = check_conv3d_args(input, weight, std::nullopt, grad_output, stride,
                                       padding, dilation, groups, padding_mode);
  const at::Tensor x = batched(input);
  const TorchFormats formats =
      torch_formats(x, weight, stride, padding, dilation, groups, g.mode);
  return backward_passes(k, g, batched(grad_output), x, at::Tensor(), weight, formats,
                         output_mask, input.dim() == 4);
}

namespace {

// A stream's two tensors, batched and laid out as the kernels read them (DepthHead), and the
// geometry of the volume they make.
struct Stream {
  at::Tensor head, x;
  Geometry g;
};

// Whether a and b step alike along the dimensions the kernels read both with one stride:
// height, width (dimensions of size 1 are never stepped) and the channel stride 1 that picks
// the channels-innermost kernels.
bool same_steps(const at::Tensor& a, const at::Tensor& b) {
  for (int d = 3; d < 5; ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return a.size(1) <= 1 || (a.stride(1) == 1) == (b.stride(1) == 1);
}

Stream stream_volume(const at::Tensor& head, const at::Tensor& input, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& grad_output, c10::IntArrayRef stride,
                     c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                     std::string_view padding_mode) {
  check_stream_head(head, input, padding);
  Stream s{batched(head), batched(input), {}};
  // The volume's shape for the checker, without its memory.
  std::vector<int64_t> whole = s.x.sizes().vec();
  whole[2] += s.head.size(2);
  const at::Tensor volume = at::empty({1}, s.x.options()).expand(whole);
  s.g = check_conv3d_args(input.dim() == 4 ? volume.squeeze(0) : volume, weight, bias,
                          grad_output, stride, padding, dilation, groups, padding_mode);
  // A head laid out unlike the input is copied (a few frames); an input whose rows are not
  // where the head's can be is copied too, as a kernel needing dense rows would.
  if (!same_steps(s.head, s.x)) s.head = s.head.contiguous(s.x.suggest_memory_format());
  if (!same_steps(s.head, s.x)) {
    s.x = s.x.contiguous(s.x.suggest_memory_format());
    s.head = s.head.contiguous(s.x.suggest_memory_format());
  }
  return s;
}

}  // namespace

at::Tensor run_stream_forward(const DeviceKernels& k, const at::Tensor& head,
                              const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation,
                              int64_t groups, std::string_view padding_mode) {
  const Stream s = stream_volume(head, input, weight, bias, std::nullopt, stride, padding,
                                 dilation, groups, padding_mode);
  const TorchFormats formats =
      torch_formats(s.x, weight, stride, padding, dilation, groups, s.g.mode);
  return forward_result(k, s.g, s.x, s.head, weight, bias, formats, input.dim() == 4);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_stream_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& head,
    const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::string_view padding_mode, std::array<bool, 3> output_mask) {
  const Stream s = stream_volume(head, input, weight, std::nullopt, grad_output, stride,
                                 padding, dilation, groups, padding_mode);
  const TorchFormats formats =
      torch_formats(s.x, weight, stride, padding, dilation, groups, s.g.mode);
  return backward_passes(k, s.g, batched(grad_output), s.x, s.head, weight, formats,
                         output_mask, input.dim() == 4);
}

namespace {

// The part of a transposed output (or its gradient) that conv's taps reach, as a view.
at::Tensor reached(const TransposeGeometry& t, const at::Tensor& y) {
  return y.narrow(2, 0, t.conv.in[0]).narrow(3, 0, t.conv.in[1]).narrow(4, 0, t.conv.in[2]);
}

bool reaches_all(const TransposeGeometry& t) {
  return t.conv.in[0] == t.out[0] && t.conv.in[1] == t.out[1] && t.conv.in[2] == t.out[2];
}

}  // namespace

at::Tensor run_transpose_forward(const DeviceKernels& k, const at::Tensor& input,
                                 const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef output_padding,
                                 c10::IntArrayRef dilation, int64_t groups) {
  const TransposeGeometry t = check_conv_transpose3d_args(
      input, weight, bias, std::nullopt, stride, padding, output_padding, dilation, groups);
  const Geometry& g = t.conv;
  const at::Tensor x = batched(input);
  const auto format =
      torch_transpose_format(x, weight, stride, output_padding, dilation, groups);
  at::Tensor out = at::empty({g.batch, g.in_channels, t.out[0], t.out[1], t.out[2]},
                             x.options().memory_format(format));
  if (out.numel() > 0) {
    if (x.numel() == 0 || t.unreached()) {
      out.zero_();
    } else {
      // grad_input writes every element it is given; the rows past the taps get zeros.
      if (!reaches_all(t)) out.zero_();
      at::Tensor kept = reached(t, out);
      grad_input_pass(k, g, x, weight, kept);
    }
    if (bias.has_value() && bias->defined()) out.add_(per_channel(*bias));
  }
  return input.dim() == 4 ? out.squeeze(0) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_transpose_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef output_padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const TransposeGeometry t =
      check_conv_transpose3d_args(input, weight, std::nullopt, grad_output, stride, padding,
                                  output_padding, dilation, groups);
  const Geometry& g = t.conv;
  const at::Tensor x = batched(input);
  const at::Tensor gy = batched(grad_output);
  // Every term pairs an input element with a grad_output element the taps reach.
  const bool empty = x.numel() == 0 || gy.numel() == 0 || t.unreached();
  const auto format =
      torch_transpose_format(x, weight, stride, output_padding, dilation, groups);
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[1]) {  // (before grad_input, as in run_backward: a lower peak)
    grad_weight = at::empty(weight.sizes(), weight.options().memory_format(format));
    if (empty) {
      grad_weight.zero_();
    } else {
      grad_weight_pass(k, g, x, reached(t, gy), grad_weight);
    }
  }
  if (output_mask[2]) {
    grad_bias = at::empty({g.in_channels}, gy.options());
    if (gy.numel() == 0) {
      grad_bias.zero_();
    } else {
      // grad_bias sums a convolution's output over batch and space: here, grad_output.
      Geometry sum = g;
      sum.out_channels = g.in_channels;
      sum.out = t.out;
      k.grad_bias(sum, gy, grad_bias);
    }
  }
  if (output_mask[0]) {
    grad_input = at::empty(x.sizes(), x.options().memory_format(format));
    if (empty) {
      grad_input.zero_();
    } else {
      forward_pass(k, g, reached(t, gy), weight, at::Tensor(), grad_input);
    }
    if (input.dim() == 4) grad_input = grad_input.squeeze(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace torchconv3d
