// Operator schemas and the device-independent half of every operator: check the
// arguments, pick output memory formats, allocate, then hand off to the device's kernels.
// Autograd and fake (meta) kernels live in Python (torchconv3d/ops.py).
#include "conv3d.h"
#include "cpu/microkernel.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <Python.h>
#include <torch/library.h>

namespace torchconv3d {
namespace {

const DeviceKernels& kernels_for(const at::Device& device) {
#ifdef WITH_CUDA
  if (device.is_cuda()) return cuda_kernels();
#endif
  TORCH_CHECK(device.is_cpu(), "torchconv3d was built without kernels for device ", device);
  return cpu_kernels();
}

// nn.Conv3d's rule: the output is channels_last_3d when the input or the weight is.
at::MemoryFormat output_format(const at::Tensor& input5d, const at::Tensor& weight) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  return (input5d.suggest_memory_format() == cl || weight.suggest_memory_format() == cl)
             ? cl
             : at::MemoryFormat::Contiguous;
}

at::Tensor batched(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

at::Tensor conv3d_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view padding_mode) {
  const Geometry g = check_conv3d_args(input, weight, bias, std::nullopt, stride, padding,
                                       dilation, groups, padding_mode);
  const at::Tensor x = batched(input);
  at::Tensor out =
      at::empty({g.batch, g.out_channels, g.out[0], g.out[1], g.out[2]},
                x.options().memory_format(output_format(x, weight)));
  if (out.numel() > 0) {
    kernels_for(input.device()).forward(g, x, weight, bias.value_or(at::Tensor()), out);
  }
  return input.dim() == 4 ? out.squeeze(0) : out;
}

// Gradients not asked for in output_mask come back undefined (None in Python).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
    int64_t groups, c10::string_view padding_mode, std::array<bool, 3> output_mask) {
  const Geometry g = check_conv3d_args(input, weight, std::nullopt, grad_output, stride,
                                       padding, dilation, groups, padding_mode);
  const DeviceKernels& k = kernels_for(input.device());
  const at::Tensor x = batched(input);
  const at::Tensor gy = batched(grad_output);
  const bool empty = gy.numel() == 0;
  at::Tensor grad_input, grad_weight, grad_bias;
  // Weight and bias first: their workspace is freed before grad_input (the largest
  // result) is allocated, which lowers the peak.
  if (output_mask[1]) {
    const auto opts = weight.options().memory_format(weight.suggest_memory_format());
    grad_weight = at::empty(weight.sizes(), opts);
    if (empty) {
      grad_weight.zero_();
    } else {
      k.grad_weight(g, gy, x, grad_weight);
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
    const auto opts = x.options().memory_format(x.suggest_memory_format());
    grad_input = at::empty(x.sizes(), opts);
    if (!empty && x.numel() > 0) {
      k.grad_input(g, gy, weight, grad_input);
    } else {
      grad_input.zero_();  // (at::zeros would drop the memory format)
    }
    if (input.dim() == 4) grad_input = grad_input.squeeze(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

// Under autocast the forward runs in the autocast dtype, as torch's conv3d does; the
// backward needs no rule because it sees the tensors the forward saved.
at::Tensor conv3d_forward_autocast(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias,
                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation, int64_t groups,
                                   c10::string_view padding_mode) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto device_type = input.device().type();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchconv3d::conv3d_forward", "")
                       .typed<decltype(conv3d_forward)>();
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding,
                 dilation, groups, padding_mode);
}

}  // namespace

TORCH_LIBRARY(torchconv3d, m) {
  m.def(
      "conv3d_forward(Tensor input, Tensor weight, Tensor? bias, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode) -> Tensor");
  m.def(
      "conv3d_backward(Tensor grad_output, Tensor input, Tensor weight, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // Which build of the CPU micro-kernels this process runs ("avx512" or "generic").
  m.def("cpu_isa() -> str", [] { return std::string(cpu::cpu_isa()); });
}

TORCH_LIBRARY_IMPL(torchconv3d, CPU, m) {
  m.impl("conv3d_forward", &conv3d_forward);
  m.impl("conv3d_backward", &conv3d_backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(torchconv3d, CUDA, m) {
  m.impl("conv3d_forward", &conv3d_forward);
  m.impl("conv3d_backward", &conv3d_backward);
}
#endif

TORCH_LIBRARY_IMPL(torchconv3d, AutocastCPU, m) {
  m.impl("conv3d_forward", &conv3d_forward_autocast);
}

TORCH_LIBRARY_IMPL(torchconv3d, AutocastCUDA, m) {
  m.impl("conv3d_forward", &conv3d_forward_autocast);
}

}  // namespace torchconv3d

// Lets `import torchconv3d._C` load the library (and with it the registrations above)
// when it is built by setup.py. The JIT build loads it with torch.ops.load_library.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
