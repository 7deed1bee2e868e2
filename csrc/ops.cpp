// The device-independent half of every operator: check the arguments, pick output
// memory formats, allocate, then hand off to a device's kernel table. Schemas and
// registration are in register.cpp; autograd and fake kernels in torchconv3d/ops.py.
#include "conv3d.h"

#include <ATen/ATen.h>

namespace torchconv3d {
namespace {

// nn.Conv3d's rule: the output is channels_last_3d when the input or the weight is.
at::MemoryFormat output_format(const at::Tensor& input5d, const at::Tensor& weight) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  return (input5d.suggest_memory_format() == cl || weight.suggest_memory_format() == cl)
             ? cl
             : at::MemoryFormat::Contiguous;
}

at::Tensor batched(const at::Tensor& t) { return t.dim() == 4 ? t.unsqueeze(0) : t; }

}  // namespace

at::Tensor run_forward(const DeviceKernels& k, const at::Tensor& input,
                       const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, int64_t groups,
                       std::string_view padding_mode) {
  const Geometry g = check_conv3d_args(input, weight, bias, std::nullopt, stride, padding,
                                       dilation, groups, padding_mode);
  const at::Tensor x = batched(input);
  at::Tensor out =
      at::empty({g.batch, g.out_channels, g.out[0], g.out[1], g.out[2]},
                x.options().memory_format(output_format(x, weight)));
  if (out.numel() > 0) {
    k.forward(g, x, weight, bias.value_or(at::Tensor()), out);
  }
  return input.dim() == 4 ? out.squeeze(0) : out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const DeviceKernels& k, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, std::string_view padding_mode,
    std::array<bool, 3> output_mask) {
  const Geometry g = check_conv3d_args(input, weight, std::nullopt, grad_output, stride,
                                       padding, dilation, groups, padding_mode);
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

}  // namespace torchconv3d
