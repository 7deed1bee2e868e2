// torchconv3d: shared definitions for every device.
//
// The operators take fully resolved arguments: stride[3], padding[6] given as
// (d_before, d_after, h_before, h_after, w_before, w_after), dilation[3], groups and a
// padding mode. Python turns the user's padding spec ('same', 'causal', pairs...) into
// those six numbers; this header turns tensors + numbers into a checked Geometry that
// every kernel reads. check_conv3d_args is the one place arguments are validated.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace torchconv3d {

// How the input is extended beyond its border. Kernels never build a padded copy:
// the mode only changes which input index a tap outside the volume reads. Each spatial
// dimension has its own (a causal video conv replicates the first frame in time and pads
// height and width with zeros).
enum class PadMode : int { Zeros = 0, Reflect = 1, Replicate = 2, Circular = 3 };
using PadModes = std::array<PadMode, 3>;  // D, H, W

// Input depth frames that stand before the input tensor's own: a streaming cache read with
// its chunk as one volume, never concatenated (run_stream_forward). Kernels read input depth
// id < frames here and id >= frames from the input tensor at id - frames (Geometry::in[0]
// counts both). The head has the input's dtype, batch, channels, height and width, and the
// input's height and width strides (and channel stride 1 where the input's is).
struct DepthHead {
  const void* data = nullptr;  // element (0, 0, 0, 0, 0)
  int64_t frames = 0;
  std::array<int64_t, 5> stride{};  // in elements, (N, C, D, H, W)
};

// One convolution, resolved and validated. Spatial arrays are ordered (D, H, W).
struct Geometry {
  int64_t batch = 0;         // N (1 for unbatched input)
  int64_t in_channels = 0;   // C_in
  int64_t out_channels = 0;  // C_out
  int64_t groups = 1;
  std::array<int64_t, 3> in{};      // input D, H, W
  std::array<int64_t, 3> kernel{};  // kd, kh, kw
  std::array<int64_t, 3> out{};     // output D, H, W
  std::array<int64_t, 3> stride{};
  std::array<int64_t, 3> dilation{};
  std::array<int64_t, 3> pad_before{};
  std::array<int64_t, 3> pad_after{};
  PadModes mode{};  // per dimension, all Zeros by default
  DepthHead head;   // none (0 frames) but in the streaming passes

  bool zero_padding() const {
    return mode[0] == PadMode::Zeros && mode[1] == PadMode::Zeros && mode[2] == PadMode::Zeros;
  }
  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t kernel_volume() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// The only place a padding mode acts, on every device: the input index read at padded
// coordinate q (q = o * stride + tap * dilation - pad_before) along a dimension of size n,
// or -1 for a padding zero. Coordinates past the padded extent [-pad_before, n + pad_after)
// are never read by a real output position; they give -1 too.
// I = int serves the CUDA tensor-core kernels, whose per-dimension coordinates fit 32 bits.
// I is never deduced from the arguments (NoDeduce: C++17's std::type_identity_t; torch
// before 2.12 builds extensions as C++17).
template <typename T>
struct NoDeduce {
  using type = T;
};
template <typename I = int64_t>
C10_HOST_DEVICE inline I source_index(typename NoDeduce<I>::type q, typename NoDeduce<I>::type n,
                                      typename NoDeduce<I>::type pad_before,
                                      typename NoDeduce<I>::type pad_after, PadMode mode) {
  if (q >= 0 && q < n) return q;
  if (q < -pad_before || q >= n + pad_after) return -1;
  switch (mode) {
    case PadMode::Reflect:  // the checker guarantees pad < n: one reflection suffices
      return q < 0 ? -q : 2 * (n - 1) - q;
    case PadMode::Replicate:
      return q < 0 ? 0 : n - 1;
    case PadMode::Circular:  // pad <= n: one wrap suffices
      return q < 0 ? q + n : q - n;
    default:
      return -1;
  }
}

C10_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The operators' padding_mode string: one mode for every dimension ("zeros") or one per
// dimension, comma-separated in (D, H, W) order ("replicate,zeros,zeros").
PadModes parse_padding_mode(std::string_view mode);

// Validates every argument of a forward or backward call and returns the geometry.
// `input` may be 4-D (unbatched) or 5-D; `grad_output`, when given, must have the
// output's shape. Raises ValueError/RuntimeError naming the sizes it saw.
Geometry check_conv3d_args(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& grad_output,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups,
                           std::string_view padding_mode);

// A transposed convolution (nn.ConvTranspose3d) is the adjoint of a convolution in its
// input: conv_transpose(x, w) = grad_input of the convolution `conv` (weight w, zero
// padding) at grad_output x. conv.in is the part of the transposed output that conv's taps
// can reach; `out` is the whole transposed output, which extends past conv.in by the
// output_padding rows no tap reaches (they hold zero, plus the bias).
struct TransposeGeometry {
  Geometry conv;  // conv.out = the input's D, H, W; conv.in_channels = output channels
  std::array<int64_t, 3> out{};  // transposed output D, H, W
  // Whether conv.in is empty along some dimension (every output row is past the taps).
  bool unreached() const { return conv.in[0] == 0 || conv.in[1] == 0 || conv.in[2] == 0; }
};

// Validates a transposed-convolution call (F.conv_transpose3d's arguments: input
// (N, C_in, D, H, W) or unbatched, weight (C_in, C_out / groups, kD, kH, kW), symmetric
// padding[3], output_padding[3]) and returns its geometry. Messages follow
// F.conv_transpose3d's wording.
TransposeGeometry check_conv_transpose3d_args(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& grad_output, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef output_padding, c10::IntArrayRef dilation,
    int64_t groups);

// Arguments that cannot change the result, normalised so that their size never reaches a
// kernel's tile or workspace arithmetic: an output extent of 1 reads only o = 0 (any
// stride), a kernel extent of 1 only tap 0 (any dilation).
void normalise(Geometry& g);

// The head of a stream call (run_stream_forward) against its input: 4-D or 5-D input, a
// head differing from it only in depth, of its dtype and device, and depth padding (0, 0)
// (the head stands for it). Raises ValueError/RuntimeError naming what it saw.
void check_stream_head(const at::Tensor& head, const at::Tensor& input,
                       c10::IntArrayRef padding);

// output_mask (grad_input, grad_weight, grad_bias) of a backward call, checked for length
// here rather than by the dispatcher, whose message names no argument.
std::array<bool, 3> check_output_mask(const c10::List<bool>& output_mask);

// Kernels of one device. All tensors are 5-D (batched) and already checked; outputs
// are preallocated in their final memory format and may have any strides.
struct DeviceKernels {
  // output = conv(input, weight) + bias (bias may be undefined).
  void (*forward)(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output);
  // grad_input = adjoint of the forward map in `input`. grad_input arrives uninitialised
  // and the kernel writes every element (zeroing in the threads that later add into it
  // spreads the first-touch page faults and keeps the memory in their caches).
  void (*grad_input)(const Geometry& g, const at::Tensor& grad_output,
                     const at::Tensor& weight, at::Tensor& grad_input);
  // grad_weight = sum over batch and output positions of grad_output x input taps.
  void (*grad_weight)(const Geometry& g, const at::Tensor& grad_output,
                      const at::Tensor& input, at::Tensor& grad_weight);
  // grad_bias[c] = sum of grad_output over batch and space.
  void (*grad_bias)(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_bias);
};

const DeviceKernels& cpu_kernels();
#ifdef WITH_CUDA
const DeviceKernels& cuda_kernels();
#endif

// The memory formats nn.Conv3d gives its output and gradients for these arguments (x is the
// batched 5-D input): ATen's rule, which follows its backend choice and, for the padding modes,
// F.pad's layouts. Results are allocated so; torchconv3d/ops.py's fake kernels mirror it.
struct TorchFormats {
  at::MemoryFormat output, grad_input, grad_weight;
};
TorchFormats torch_formats(const at::Tensor& x, const at::Tensor& weight,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups, const PadModes& mode);
// The same for nn.ConvTranspose3d (x: its batched input): one format for all three.
at::MemoryFormat torch_transpose_format(const at::Tensor& x, const at::Tensor& weight,
                                        c10::IntArrayRef stride,
                                        c10::IntArrayRef output_padding,
                                        c10::IntArrayRef dilation, int64_t groups);

// The operators with a given kernel table (ops.cpp): check, allocate outputs in nn.Conv3d's
// memory format, run the kernels. Gradients not asked for in output_mask come back undefined.
at::Tensor run_forward(const DeviceKernels& k, const at::Tensor& input,
                       const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, int64_t groups,
                       std::string_view padding_mode);
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, std::string_view padding_mode,
    std::array<bool, 3> output_mask);
// The transposed operators, on the same kernels: forward = grad_input pass, backward =
// forward pass (grad_input) + grad_weight pass (grad_weight) + grad_bias.
at::Tensor run_transpose_forward(const DeviceKernels& k, const at::Tensor& input,
                                 const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef output_padding,
                                 c10::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_transpose_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef output_padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);

// The operators over a volume of two tensors along depth, head's frames then input's
// (conv3d_stream_forward/backward: a streaming cache and its chunk): the same as run_forward /
// run_backward on torch.cat([head, input], 2), which is never built; the kernels read both
// in place (DepthHead). The backward's first result is the gradient of that whole volume
// (head's frames first), allocated as one tensor; the caller splits it into views.
at::Tensor run_stream_forward(const DeviceKernels& k, const at::Tensor& head,
                              const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation,
                              int64_t groups, std::string_view padding_mode);
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_stream_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& head,
    const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::string_view padding_mode, std::array<bool, 3> output_mask);

// The geometry the kernels receive for these arguments: checked, with the taps that read
// only zero padding dropped (ops.cpp). For tools that describe what a kernel will do.
Geometry kernel_geometry(const at::Tensor& input, const at::Tensor& weight,
                         c10::IntArrayRef stride, c10::IntArrayRef padding,
                         c10::IntArrayRef dilation, int64_t groups,
                         std::string_view padding_mode);

}  // namespace torchconv3d
