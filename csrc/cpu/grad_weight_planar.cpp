// grad_weight on phase planes: a task owns a block of output channels x a block of input
// channels of one group (plan.h) and walks every tile of every sample in order, adding dot
// products of grad_output rows with shifted planes. Sums run in an order fixed by the
// shape, so results are bitwise stable across thread counts; no floating-point atomics.
// An input with channel stride 1 goes to grad_weight_channels_last.cpp first.
#include "common.h"
#include "kernels.h"
#include "microkernel.h"
#include "nonfinite.h"
#include "packing.h"
#include "plan.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
namespace {

// grad_weight's dot products in A, on tiles of E: A itself, or bfloat16 pairs of positions
// on vdpbf16ps (Bf16Kernels::dot).
template <typename T, typename E>
void grad_weight_kernel(const Geometry& g, const at::Tensor& grad_output,
                        const at::Tensor& input, at::Tensor& grad_weight) {
  using A = at::opmath_type<T>;
  auto dot = [](int64_t rows, const E* gy, int64_t ldg, const E* b, const int64_t* offs,
                int64_t cols, int64_t n, A* out, int64_t ldo) {
    if constexpr (std::is_same_v<E, A>) {
      micro_kernels(A{}).dot(rows, gy, ldg, b, offs, cols, n, out, ldo);
    } else {
      bf16_kernels()->dot(rows, reinterpret_cast<const uint16_t*>(gy), ldg,
                          reinterpret_cast<const uint16_t*>(b), offs, cols, n, out, ldo);
    }
  };
  if (grad_weight.numel() == 0) return;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume(), K = in_per_group * kvol;
  const GradWeightPlan plan = plan_grad_weight(g, sizeof(A), sizeof(E), at::get_num_threads());
  const Layout& L = plan.layout;
  const ColumnMap cm(L);
  const std::vector<int64_t> offs = L.tap_offsets(plan.in_block);

  // Sums go straight into grad_weight when it is a dense [C_out, K] matrix of A, else
  // into a buffer copied over at the end.
  const bool in_place = std::is_same_v<A, T> && grad_weight.is_contiguous();
  at::Tensor acc_holder =
      in_place ? grad_weight
               : at::empty({g.out_channels, K},
                           at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  A* acc = static_cast<A*>(acc_holder.data_ptr());
  const T* gyp = grad_output.const_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), xs = spatial_strides(input);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const int64_t bands = L.bands(), gy_row = plan.gy_row;

  const int64_t per_depth = g.kernel[1] * g.kernel[2];
  // With Sanitize, input NaN/Inf read as zero (the dropped columns would pair them with
  // zeros); see nonfinite.h. With skip, an output depth sums only the kernel depths that
  // read input frames (live_kernel_depths): the products with padding zeros are zero
  // unless that grad_output is NaN/Inf, and then a live product with it is not finite
  // either, so the caller sees a non-finite sum and reruns without skipping. (A depth
  // with no live kernel depth is summed in full.)
  auto pass = [&](auto sanitize, bool skip) {
    acc_holder.zero_();
    at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
      at::Tensor h_buf, h_gy;
      const int64_t bufsize = L.buffer_size(plan.in_block);
      E* buf = scratch<E>(h_buf, bufsize);
      std::fill(buf, buf + bufsize, E(0));
      E* gy_tile = scratch<E>(h_gy, plan.out_block * gy_row);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t grp = task / (plan.out_blocks * plan.in_blocks);
        const int64_t co0 = (task / plan.in_blocks) % plan.out_blocks * plan.out_block;
        const int64_t out_count = std::min(plan.out_block, out_per_group - co0);
        const int64_t c0 = task % plan.in_blocks * plan.in_block;
        const int64_t in_count = std::min(plan.in_block, in_per_group - c0);
        A* out = acc + (grp * out_per_group + co0) * K + c0 * kvol;
        for (int64_t n = 0; n < g.batch; ++n)
          for (int64_t od0 = 0; od0 < g.out[0]; od0 += L.td)
            for (int64_t band = 0; band < bands; ++band) {
              const int64_t oh0 = band * L.th, th = L.band_rows(oh0);
              const int64_t depths = std::min(L.td, g.out[0] - od0);
              pack_planes<decltype(sanitize)::value>(
                  L, cm, input_frames<T>(g, input, n, grp * in_per_group + c0), in_count, xs,
                  od0, depths, oh0, th + L.qh_max, buf);
              for (int64_t dl = 0; dl < depths; ++dl) {
                pack_grad_output(L, gyp + n * gysn + (grp * out_per_group + co0) * gysc,
                                 out_count, gysc, gys, od0 + dl, oh0, gy_tile, gy_row, 0);
                const E* window = buf + dl * L.depth_step();
                const DepthRange live = live_kernel_depths(g, od0 + dl, skip);
                if (live.empty() || live.to - live.from == g.kernel[0]) {
                  dot(out_count, gy_tile, gy_row, window, offs.data(), in_count * kvol,
                      L.positions(th), out, K);
                  continue;
                }
                const int64_t first = live.from * per_depth;
                for (int64_t c = 0; c < in_count; ++c)
                  dot(out_count, gy_tile, gy_row, window, offs.data() + c * kvol + first,
                      (live.to - live.from) * per_depth, L.positions(th),
                      out + c * kvol + first, K);
              }
            }
      }
    });
  };
  const bool skip = g.mode[0] == PadMode::Zeros;
  pass(std::false_type{}, skip);
  if (!all_finite(acc, g.out_channels * K)) {
    if (skip) pass(std::false_type{}, false);
    const auto where = nonfinite_inputs<T>(g, input);
    if (!where.empty()) {
      pass(std::true_type{}, false);
      add_input_terms<T, A>(g, grad_output, input, where, acc);
    }
  }

  if (!in_place) grad_weight.copy_(acc_holder.view(grad_weight.sizes()));
}

}  // namespace

void tiled_grad_weight(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& input, at::Tensor& grad_weight) {
  if (grad_weight_winograd(g, grad_output, input, grad_weight)) return;
  // (The copies would copy the input tensor alone: a stream's head is read in place.)
  if (g.head.frames == 0 && through_channels_last(g, input) &&
      grad_weight_channels_last(g, to_channels_last(grad_output, kCopy),
                                to_channels_last(input, kCopy2), grad_weight))
    return;
  if (grad_weight_channels_last(g, grad_output, input, grad_weight)) return;
  if (grad_output.scalar_type() == at::kBFloat16 && bf16_kernels()) {
    return grad_weight_kernel<c10::BFloat16, c10::BFloat16>(g, grad_output, input, grad_weight);
  }
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_weight", [&] {
    grad_weight_kernel<scalar_t, at::opmath_type<scalar_t>>(g, grad_output, input, grad_weight);
  });
}

}  // namespace torchconv3d::cpu
