// grad_input on phase planes: the gradient of a tile's phase planes,
// C[c_in x t] = W^T x shifted grad_output, is added back through the adjoint of the packing
// (scatter_planes), only into the grad_input elements the task owns (plan.h). Layers with
// zero padding go to grad_input_phases.cpp first (one forward per stride phase), which
// hands back those it does not take; every padding mode and non-finite weights run here.
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

// Per (group, depth tap i, phase (rh, rw)): the (c_out, j, l) terms whose taps read that
// phase, their shifts in the grad_output tile, and the weight laid out [k][r] per block of
// input channels, the order gemm reads it.
template <typename A>
struct PhaseTerms {
  int64_t k = 0;
  std::vector<int64_t> offs;
  std::vector<A> a;
};

template <typename A>
std::vector<PhaseTerms<A>> phase_terms(const GradInputPlan& plan, const A* wp) {
  const Layout& L = plan.layout;
  const Geometry& g = L.g;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  const Blocks& blocks = plan.channel_blocks;
  std::vector<PhaseTerms<A>> phases;  // index (grp * kd + i) * sh * sw + rh * sw + rw
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t i = 0; i < kd; ++i)
      for (int64_t rh = 0; rh < L.sh; ++rh)
        for (int64_t rw = 0; rw < L.sw; ++rw) {
          PhaseTerms<A> p;
          std::vector<std::array<int64_t, 3>> terms;  // (co, j, l)
          for (int64_t co = 0; co < out_per_group; ++co)
            for (int64_t j = 0; j < kh; ++j)
              for (int64_t l = 0; l < kw; ++l)
                if (L.phase_h(j) == rh && L.phase_w(l) == rw) {
                  terms.push_back({co, j, l});
                  p.offs.push_back(co * plan.gy_row + plan.halo - L.shift(j, l));
                }
          p.k = static_cast<int64_t>(terms.size());
          p.a.resize(in_per_group * p.k);
          for (int64_t cb = 0; cb < blocks.count; ++cb) {
            const int64_t c0 = blocks.start(cb), rows = blocks.size(cb);
            A* blk = p.a.data() + c0 * p.k;
            for (int64_t k = 0; k < p.k; ++k)
              for (int64_t r = 0; r < rows; ++r) {
                const auto [co, j, l] = terms[k];
                blk[k * rows + r] = wp[((((grp * out_per_group + co) * in_per_group + c0 + r) *
                                          kd + i) * kh + j) * kw + l];
              }
          }
          phases.push_back(std::move(p));
        }
  return phases;
}

// Whether the band from oh0 reads some input row in [from, to) (with the padding modes a
// band's rows need not be contiguous: circular wraps).
bool band_reads_rows(const Layout& L, int64_t oh0, int64_t from, int64_t to) {
  const int64_t rows = L.band_rows(oh0) + L.qh_max;
  for (int64_t t_row = 0; t_row < rows; ++t_row)
    for (int64_t rh = 0; rh < L.sh; ++rh) {
      const int64_t ih = row_source(L, oh0, t_row, rh);
      if (ih >= from && ih < to) return true;
    }
  return false;
}

template <typename T>
void grad_input_kernel(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& weight, at::Tensor& grad_input) {
  using A = at::opmath_type<T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  constexpr bool direct = std::is_same_v<A, T>;
  const GradInputPlan plan =
      plan_grad_input(g, sizeof(A), mk.max_rows, direct, at::get_num_threads());
  const Layout& L = plan.layout;
  const ColumnMap cm(L);
  const Blocks& blocks = plan.channel_blocks;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kd = g.kernel[0], nph = plan.phases(), np = plan.plane_positions;
  const int64_t gy_row = plan.gy_row, halo = plan.halo, bands = L.bands();

  at::Tensor w = weight_as<A>(weight);
  // Non-finite weights would meet the halo's zeros; see nonfinite.h.
  const std::vector<WeightTerm<A>> nonfinite = nonfinite_weights<A>(g, w);
  if (!nonfinite.empty()) w = w.nan_to_num(0, 0, 0);
  const std::vector<PhaseTerms<A>> phases = phase_terms(plan, w.const_data_ptr<A>());

  const T* gyp = grad_output.const_data_ptr<T>();
  T* gxp = grad_input.mutable_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), gxs = spatial_strides(grad_input);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const int64_t gxsn = grad_input.stride(0), gxsc = grad_input.stride(1);
  const int64_t slot_stride = plan.slot_stride();
  const int64_t per_unit = plan.channel_tasks * plan.depth_tasks * plan.row_tasks;

  at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_gy, h_grads, h_slab;
    A* gy_tile = scratch<A>(h_gy, out_per_group * gy_row);
    // The phase-plane gradients of a block of channels, or (slotted) of the task's channels
    // for every slot of a tile.
    A* grads = scratch<A>(h_grads, plan.slotted ? plan.task_channels() * slot_stride
                                                : mk.max_rows * nph * np);
    A* slab = direct ? nullptr
                     : scratch<A>(h_slab, plan.task_channels() * plan.depth_block *
                                              plan.row_block * g.in[2]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t unit = task / per_unit, n = unit / g.groups, grp = unit % g.groups;
      int64_t rest = task % per_unit;
      const int64_t ct = rest / (plan.depth_tasks * plan.row_tasks);
      rest %= plan.depth_tasks * plan.row_tasks;
      const int64_t d0 = rest / plan.row_tasks * plan.depth_block;
      const int64_t d1 = std::min(g.in[0], d0 + plan.depth_block);
      const int64_t h0 = rest % plan.row_tasks * plan.row_block;
      const int64_t h1 = std::min(g.in[1], h0 + plan.row_block);
      const int64_t cb0 = ct * plan.blocks_per_task;
      const int64_t cb1 = std::min(blocks.count, cb0 + plan.blocks_per_task);
      const int64_t c_first = blocks.start(cb0);
      const int64_t channels = (cb1 < blocks.count ? blocks.start(cb1) : in_per_group) - c_first;
      T* gx = gxp + n * gxsn + (grp * in_per_group + c_first) * gxsc;
      const int64_t slab_depth = (h1 - h0) * g.in[2], slab_channel = (d1 - d0) * slab_depth;
      if constexpr (direct) {
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t d = d0; d < d1; ++d)
            for (int64_t h = h0; h < h1; ++h) {
              T* row = gx + c * gxsc + d * gxs[0] + h * gxs[1];
              for (int64_t x = 0; x < g.in[2]; ++x) row[x * gxs[2]] = T(0);
            }
      } else {
        std::fill(slab, slab + channels * slab_channel, A(0));
      }
      // Adds the sw phase-plane gradients (rh, *) of `count` channels from c0 (of the
      // task's; channel stride ldp, phase stride np) into grad_input at depth id, or into
      // the slab.
      auto scatter = [&](const A* src, int64_t ldp, int64_t c0, int64_t count, int64_t prows,
                         int64_t id, int64_t oh0, int64_t rh) {
        if constexpr (direct) {
          scatter_planes(L, cm, src, ldp, np, count, prows, id, oh0, rh,
                         gx + c0 * gxsc + h0 * gxs[1], gxsc, gxs, h0, h1);
        } else {
          scatter_planes(L, cm, src, ldp, np, count, prows, id - d0, oh0, rh,
                         slab + c0 * slab_channel, slab_channel,
                         std::array<int64_t, 3>{slab_depth, g.in[2], 1}, h0, h1);
        }
      };
      auto owned = [&](int64_t id) { return id >= d0 && id < d1; };
      for (int64_t od0 = 0; od0 < g.out[0]; od0 += L.td) {
        const int64_t depths = std::min(L.td, g.out[0] - od0);
        bool any = false;
        for (int64_t od = od0; od < od0 + depths; ++od)
          for (int64_t i = 0; i < kd; ++i) any |= owned(tap_source(g, 0, od, i));
        if (!any) continue;
        for (int64_t band = 0; band < bands; ++band) {
          const int64_t oh0 = band * L.th, prows = L.band_rows(oh0) + L.qh_max;
          if (plan.row_tasks > 1 && !band_reads_rows(L, oh0, h0, h1)) continue;
          const int64_t band_positions = round_up(prows * L.lw, kLanes);
          if (plan.slotted) std::fill(grads, grads + channels * slot_stride, A(0));
          for (int64_t od = od0; od < od0 + depths; ++od) {
            pack_grad_output(L, gyp + n * gysn + grp * out_per_group * gysc, out_per_group,
                             gysc, gys, od, oh0, gy_tile, gy_row, halo);
            for (int64_t i = 0; i < kd; ++i) {
              const int64_t id = tap_source(g, 0, od, i);
              if (!owned(id)) continue;
              const int64_t slot = (od - od0) * g.stride[0] + i * g.dilation[0];
              for (int64_t cb = cb0; cb < cb1; ++cb) {
                const int64_t c0 = blocks.start(cb), rows = blocks.size(cb);
                const int64_t local = c0 - c_first;
                for (int64_t ph = 0; ph < nph; ++ph) {
                  const PhaseTerms<A>& p = phases[(grp * kd + i) * nph + ph];
                  if (plan.slotted) {
                    if (p.k == 0) continue;  // no tap reads this phase: its gradient is zero
                    mk.gemm(rows, p.a.data() + c0 * p.k, p.k, gy_tile, p.offs.data(),
                            band_positions, grads + local * slot_stride + (slot * nph + ph) * np,
                            slot_stride, true);
                  } else if (p.k == 0) {
                    for (int64_t r = 0; r < rows; ++r)
                      std::fill(grads + (r * nph + ph) * np, grads + (r * nph + ph + 1) * np,
                                A(0));
                  } else {
                    mk.gemm(rows, p.a.data() + c0 * p.k, p.k, gy_tile, p.offs.data(),
                            band_positions, grads + ph * np, nph * np, false);
                  }
                }
                if (!plan.slotted) {
                  for (int64_t rh = 0; rh < L.sh; ++rh)
                    scatter(grads + rh * L.sw * np, nph * np, local, rows, prows, id, oh0, rh);
                }
              }
            }
          }
          if (!plan.slotted) continue;
          for (int64_t slot = 0; slot < L.slots; ++slot) {
            if (!L.slot_used(slot, depths)) continue;
            const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                            g.pad_before[0], g.pad_after[0], g.mode[0]);
            if (!owned(id)) continue;
            for (int64_t rh = 0; rh < L.sh; ++rh)
              scatter(grads + (slot * nph + rh * L.sw) * np, slot_stride, 0, channels, prows, id,
                      oh0, rh);
          }
        }
      }
      if constexpr (!direct) {
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t d = d0; d < d1; ++d)
            for (int64_t h = h0; h < h1; ++h) {
              const A* s = slab + c * slab_channel + (d - d0) * slab_depth + (h - h0) * g.in[2];
              T* dst = gx + c * gxsc + d * gxs[0] + h * gxs[1];
              for (int64_t x = 0; x < g.in[2]; ++x) dst[x * gxs[2]] = static_cast<T>(s[x]);
            }
      }
    }
  });
  if (!nonfinite.empty()) add_weight_terms<T, A>(g, grad_output, nonfinite, grad_input);
}

}  // namespace

void tiled_grad_input(const Geometry& g, const at::Tensor& grad_output,
                      const at::Tensor& weight, at::Tensor& grad_input) {
  if (g.zero_padding() && (through_channels_last(g, grad_output) ||
                           grad_input_through_winograd(g, grad_output))) {
    const at::Tensor gy = to_channels_last(grad_output, kCopy);
    at::Tensor gx = layout_scratch(grad_input, at::MemoryFormat::ChannelsLast3d, kCopy2);
    if (grad_input_by_phases(g, gy, weight, gx)) {
      copy_layout(grad_input, gx);
      return;
    }
  }
  if (grad_input_by_phases(g, grad_output, weight, grad_input)) return;
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_input",
                [&] { grad_input_kernel<scalar_t>(g, grad_output, weight, grad_input); });
}

}  // namespace torchconv3d::cpu
