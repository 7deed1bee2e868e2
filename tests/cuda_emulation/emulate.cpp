// The CUDA kernels of csrc/cuda, compiled for the CPU and run by the fiber emulator, behind
// operators with the same schemas as torchconv3d's: torch.ops.torchconv3d_emu.*.
// tests/cases.py (backend cuda_emulated) checks them against F.conv3d.
//
// Grid caps are tiny on purpose so every grid-stride loop wraps, and sm_count = 2 makes
// grad_weight split K on small shapes, so the split-K workspace and its reduction run too.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/library.h>

#include <map>
#include <string>
#include <tuple>

#include "../../csrc/conv3d.h"

#include "emulation.h"

#include "../../csrc/cuda/conv3d_kernels.cuh"

namespace {

using namespace torchconv3d;

// Launches of v2 kernels (tensor-core GEMMs, depthwise stencil) per pass, so tests can
// tell which path a call took.
std::map<std::string, int64_t> v2_launches;

struct EmuEnv {
  // Kernels whose first parameter is a v2 problem (with a kPass name) are counted.
  template <typename T, typename = void>
  struct HasPass : std::false_type {};
  template <typename T>
  struct HasPass<T, std::void_t<decltype(T::kPass)>> : std::true_type {};
  template <typename... Params>
  static void count() {
    if constexpr (sizeof...(Params) > 0) {
      using First = std::tuple_element_t<0, std::tuple<Params...>>;
      if constexpr (HasPass<First>::value) ++v2_launches[First::kPass];
    }
  }

  int64_t sm_count = 2;
  int64_t max_grid_x = 3;
  int64_t max_grid_y = 2;
  int64_t max_blocks = 3;
  bool allow_tf32 = at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, const Args&... args) const {
    count<Params...>();
    emu::run_grid(grid, block, 0, [&] { kernel(args...); });
  }
  template <typename... Params, typename... Args>
  void launch_dynamic(void (*kernel)(Params...), dim3 grid, dim3 block, int shared_bytes,
                      const Args&... args) const {
    count<Params...>();
    emu::run_grid(grid, block, shared_bytes, [&] { kernel(args...); });
  }
};

void forward(const Geometry& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
             at::Tensor& y) {
  gpu::forward_pass(EmuEnv{}, g, x, w, b, y);
}
void grad_input(const Geometry& g, const at::Tensor& gy, const at::Tensor& w, at::Tensor& gx) {
  gpu::grad_input_pass(EmuEnv{}, g, gy, w, gx);
}
void grad_weight(const Geometry& g, const at::Tensor& gy, const at::Tensor& x, at::Tensor& gw) {
  gpu::grad_weight_pass(EmuEnv{}, g, gy, x, gw);
}
void grad_bias(const Geometry& g, const at::Tensor& gy, at::Tensor& gb) {
  gpu::grad_bias_pass(EmuEnv{}, g, gy, gb);
}

const DeviceKernels kEmulated{&forward, &grad_input, &grad_weight, &grad_bias};

at::Tensor conv3d_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view padding_mode) {
  return run_forward(kEmulated, input, weight, bias, stride, padding, dilation, groups,
                     padding_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
    int64_t groups, c10::string_view padding_mode, const c10::List<bool>& output_mask) {
  return run_backward(kEmulated, grad_output, input, weight, stride, padding, dilation, groups,
                      padding_mode, check_output_mask(output_mask));
}

at::Tensor conv3d_stream_forward(const at::Tensor& head, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t groups,
                                 c10::string_view padding_mode) {
  return run_stream_forward(kEmulated, head, input, weight, bias, stride, padding, dilation,
                            groups, padding_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3d_stream_backward(
    const at::Tensor& grad_output, const at::Tensor& head, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode,
    const c10::List<bool>& output_mask) {
  return run_stream_backward(kEmulated, grad_output, head, input, weight, stride, padding,
                             dilation, groups, padding_mode, check_output_mask(output_mask));
}

at::Tensor conv_transpose3d_forward(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef output_padding, c10::IntArrayRef dilation,
                                    int64_t groups) {
  return run_transpose_forward(kEmulated, input, weight, bias, stride, padding, output_padding,
                               dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_padding,
    c10::IntArrayRef dilation, int64_t groups, const c10::List<bool>& output_mask) {
  return run_transpose_backward(kEmulated, grad_output, input, weight, stride, padding,
                                output_padding, dilation, groups,
                                check_output_mask(output_mask));
}

}  // namespace

TORCH_LIBRARY(torchconv3d_emu, m) {
  m.def(
      "conv3d_forward(Tensor input, Tensor weight, Tensor? bias, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode) -> Tensor",
      &conv3d_forward);
  m.def(
      "conv3d_backward(Tensor grad_output, Tensor input, Tensor weight, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode, bool[] output_mask) "
      "-> (Tensor, Tensor, Tensor)",
      &conv3d_backward);
  m.def(
      "conv3d_stream_forward(Tensor head, Tensor input, Tensor weight, Tensor? bias, "
      "int[3] stride, int[6] padding, int[3] dilation, int groups, str padding_mode) -> Tensor",
      &conv3d_stream_forward);
  m.def(
      "conv3d_stream_backward(Tensor grad_output, Tensor head, Tensor input, Tensor weight, "
      "int[3] stride, int[6] padding, int[3] dilation, int groups, str padding_mode, "
      "bool[] output_mask) -> (Tensor, Tensor, Tensor)",
      &conv3d_stream_backward);
  m.def(
      "conv_transpose3d_forward(Tensor input, Tensor weight, Tensor? bias, int[3] stride, "
      "int[3] padding, int[3] output_padding, int[3] dilation, int groups) -> Tensor",
      &conv_transpose3d_forward);
  m.def(
      "conv_transpose3d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "int[3] stride, int[3] padding, int[3] output_padding, int[3] dilation, int groups, "
      "bool[] output_mask) -> (Tensor, Tensor, Tensor)",
      &conv_transpose3d_backward);
  m.def("v2_launches(str pass_name) -> int", [](c10::string_view pass) {
    return v2_launches[std::string(pass)];
  });
}
