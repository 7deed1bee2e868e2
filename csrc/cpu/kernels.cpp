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

// With 64+ channels per group on both sides, the channels-innermost bfloat16 passes
// (vdpbf16ps on channel pairs and on position pairs) beat the planar ones by more than a
// transposing copy of their operands costs; below that (16-32 channels) they do not.
// Measured, 2 threads, forward + backward planar / through copies (ms): C3D conv3a 34.3 /
// 30.8, R(2+1)D 1x3x3 4.84 / 3.50, MedicalNet dilated 9.40 / 8.16 (copies made in Python
// first: R3D-18 8.71 / 8.08, R(2+1)D 3x1x1 2.10 / 1.87; V-Net 16 channels 6.58 / 7.32,
// nnU-Net 32 -> 64 3.33 / 3.58). The copies are bfloat16 copies of input and grad_output:
// a temporary the size of each. (Each pass copies grad_output for itself: the passes are
// separate kernel-table entries; 0.4 ms of C3D's 31.) The forward of such layers that
// Winograd does not take goes the same way but for 1x1x1 (forward_planar.cpp): R(2+1)D
// 3x1x1 forward 0.78 ms planar, 0.64 through the copies.
bool through_channels_last(const Geometry& g, const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 && bf16_kernels() != nullptr && t.stride(1) != 1 &&
         std::min(g.in_per_group(), g.out_per_group()) >= 64;
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
