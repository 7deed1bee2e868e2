// Chooses the CPU kernel for each call and holds the small grad_bias reduction.
#include "common.h"
#include "kernels.h"

#include <ATen/Parallel.h>

namespace torchconv3d {
namespace cpu {
namespace {

// One input channel per group gives a GEMM with a single-row operand: direct loops win.
bool use_depthwise(const Geometry& g) { return g.in_per_group() == 1 && g.groups > 1; }

void forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
             const at::Tensor& bias, at::Tensor& output) {
  if (use_depthwise(g)) return depthwise_forward(g, input, weight, bias, output);
  gemm_forward(g, input, weight, bias, output);
}

void grad_input(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                at::Tensor& grad_in) {
  if (use_depthwise(g)) return depthwise_grad_input(g, grad_output, weight, grad_in);
  gemm_grad_input(g, grad_output, weight, grad_in);
}

void grad_weight(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                 at::Tensor& grad_w) {
  if (use_depthwise(g)) return depthwise_grad_weight(g, grad_output, input, grad_w);
  gemm_grad_weight(g, grad_output, input, grad_w);
}

template <typename T>
void grad_bias_kernel(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_b) {
  // Summed in double: a float sum over N*D*H*W terms would lose digits.
  const T* gyp = grad_output.const_data_ptr<T>();
  T* gbp = grad_b.mutable_data_ptr<T>();
  const auto s = spatial_strides(grad_output);
  const int64_t sn = grad_output.stride(0), sc = grad_output.stride(1);
  at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const T* y = gyp + n * sn + c * sc;
        for (int64_t d = 0; d < g.out[0]; ++d)
          for (int64_t h = 0; h < g.out[1]; ++h) {
            const T* row = y + d * s[0] + h * s[1];
            for (int64_t w = 0; w < g.out[2]; ++w) sum += static_cast<double>(row[w * s[2]]);
          }
      }
      gbp[c] = static_cast<T>(sum);
    }
  });
}

}  // namespace

void grad_bias(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_b) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_bias",
                [&] { grad_bias_kernel<scalar_t>(g, grad_output, grad_b); });
}

}  // namespace cpu

const DeviceKernels& cpu_kernels() {
  static const DeviceKernels k{&cpu::forward, &cpu::grad_input, &cpu::grad_weight,
                               &cpu::grad_bias};
  return k;
}

}  // namespace torchconv3d
