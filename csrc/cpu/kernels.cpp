// The CPU kernel table and the small grad_bias reduction.
#include "common.h"
#include "kernels.h"
#include "microkernel.h"

#include <ATen/Parallel.h>

namespace torchconv3d {
namespace cpu {
namespace {

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

// With 16+ channels per group on each side and 32+ on one, the channels-innermost bfloat16
// passes (vdpbf16ps on channel pairs and on position pairs) beat the planar ones by more
// than a transposing copy of their operands costs (transpose_matrices, common.h); with 16
// on both sides (V-Net 5x5x5) they do not. Measured, 2 threads, bfloat16, planar / through
// copies (ms): fwd, grad_input, grad_weight of nnU-Net 32 -> 64 stride 2 0.98 / 0.82, 1.58 /
// 1.09, 1.47 / 0.94; VoxelMorph 16 -> 32 stride 2 0.95 / 0.72, 1.64 / 1.28, 1.17 / 1.12; 3D
// U-Net 2x2x2 stride 2 0.46 / 0.38, 0.89 / 0.55, 0.77 / 0.47; V-Net 16 -> 16 5x5x5 grad_input
// 2.80 / 3.07, grad_weight 3.44 / 3.95. (64+ channels a side took this route before the
// copies were SIMD: C3D conv3a fwd + bwd 34.3 / 30.8, R(2+1)D 1x3x3 4.84 / 3.50.) The
// copies are bfloat16 copies of input and grad_output: a temporary the size of each. (Each
// pass copies grad_output for itself: the passes are separate kernel-table entries.) Not
// 1x1x1 forward (forward_planar.cpp): 128 -> 128 channels, 0.46-0.48 ms planar, 0.51-0.56
// through the copies.
bool through_channels_last(const Geometry& g, const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 && bf16_kernels() != nullptr && t.stride(1) != 1 &&
         std::min(g.in_per_group(), g.out_per_group()) >= 16 &&
         std::max(g.in_per_group(), g.out_per_group()) >= 32;
}

void grad_bias(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_b) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_bias",
                [&] { grad_bias_kernel<scalar_t>(g, grad_output, grad_b); });
}

}  // namespace cpu

const DeviceKernels& cpu_kernels() {
  static const DeviceKernels k{&cpu::tiled_forward, &cpu::tiled_grad_input,
                               &cpu::tiled_grad_weight, &cpu::grad_bias};
  return k;
}

}  // namespace torchconv3d
