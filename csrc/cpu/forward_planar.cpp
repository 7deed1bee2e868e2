// The forward on phase planes (tile_layout.h): tiles (sample, group, depth block, band), each
// C[c_out x f] = W x shifted planes. A forward on channels_last tensors goes to
// forward_channels_last.cpp first; it hands back the layers these kernels do better.
#include "common.h"
#include "kernels.h"
#include "microkernel.h"
#include "packing.h"
#include "plan.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
namespace {

// The forward's result rows of one tile, from the GEMM's rows ct (row stride L.n):
// out[co, od, oh0 + t_row, :] = ct + bias, for `rows` output channels from co0.
template <typename T, typename A>
void store_forward_rows(const Layout& L, const A* ct, int64_t rows, int64_t co0, const A* bp,
                        T* yp, int64_t ysc, const std::array<int64_t, 3>& ys, int64_t od,
                        int64_t oh0, int64_t th) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t co = co0 + r;
    const A bc = bp ? bp[co] : A(0);
    for (int64_t t_row = 0; t_row < th; ++t_row) {
      const A* src = ct + r * L.n + t_row * L.lw;
      T* dst = yp + co * ysc + od * ys[0] + (oh0 + t_row) * ys[1];
      if (ys[2] == 1) {
        for (int64_t ow = 0; ow < L.g.out[2]; ++ow) dst[ow] = static_cast<T>(src[ow] + bc);
      } else {
        for (int64_t ow = 0; ow < L.g.out[2]; ++ow)
          dst[ow * ys[2]] = static_cast<T>(src[ow] + bc);
      }
    }
  }
}

// Weight blocks of output channels (out_blocks within each group) laid out [k][r], the
// order gemm reads them: element(co, k) for k < K. A block of channels per task: this runs
// on every call, before the tiles.
template <typename E, typename Element>
std::vector<E> pack_weight_blocks(const Geometry& g, const Blocks& out_blocks, int64_t K,
                                  Element&& element) {
  const int64_t out_per_group = g.out_per_group();
  std::vector<E> wpack(g.out_channels * K);
  at::parallel_for(0, g.groups * out_blocks.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t grp = task / out_blocks.count, mb = task % out_blocks.count;
      const int64_t m0 = out_blocks.start(mb), rows = out_blocks.size(mb);
      E* blk = wpack.data() + (grp * out_per_group + m0) * K;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < rows; ++r) blk[k * rows + r] = element(grp * out_per_group + m0 + r, k);
    }
  });
  return wpack;
}

// The GEMM's operands for each output depth: K runs over (channel, tap) in weight order,
// and an output depth sums only its live kernel depths (live_kernel_depths), a range of
// taps within each channel; each distinct range (the full one, and a few at the borders)
// gets its own weight blocks and tap offsets, as long as those extra copies stay within
// kBorderSetBytes (past it, a depth sums every tap: right, only not the fewest products).
// (With the kernel depth outermost in K, a range would be one slice of a single pack, but
// that order measured 7% slower on C3D: channel-major reads each channel's planes in turn.)
constexpr int64_t kBorderSetBytes = int64_t(8) << 20;

template <typename E>
struct TermSets {
  struct Set {
    DepthRange live;
    int64_t K;
    std::vector<E> weights;
    std::vector<int64_t> offs;
  };
  std::vector<Set> sets;          // sets[0]: every tap
  std::vector<int64_t> of_depth;  // per output depth, its set; -1 where none is live

  // element(co, k) and offs(k) for the full K = channels * kvol.
  template <typename Element>
  TermSets(const Geometry& g, const Blocks& out_blocks, int64_t channels, bool finite_weights,
           const std::vector<int64_t>& offs, Element&& element) {
    const int64_t kvol = g.kernel_volume(), per_depth = g.kernel[1] * g.kernel[2];
    auto add = [&](DepthRange live) {
      const int64_t span = (live.to - live.from) * per_depth;
      // Term k of this set is term full(k) of the whole K.
      auto full = [&](int64_t k) { return k / span * kvol + live.from * per_depth + k % span; };
      Set set{live, channels * span, {}, {}};
      set.weights = pack_weight_blocks<E>(g, out_blocks, set.K,
                                          [&](int64_t co, int64_t k) { return element(co, full(k)); });
      for (int64_t k = 0; k < set.K; ++k) set.offs.push_back(offs[full(k)]);
      sets.push_back(std::move(set));
    };
    add(DepthRange{0, g.kernel[0]});
    int64_t extra_bytes = 0;
    for (int64_t od = 0; od < g.out[0]; ++od) {
      const DepthRange live = live_kernel_depths(g, od, finite_weights);
      if (live.empty()) {
        of_depth.push_back(-1);
        continue;
      }
      int64_t s = 0;
      while (s < int64_t(sets.size()) &&
             (sets[s].live.from != live.from || sets[s].live.to != live.to))
        ++s;
      if (s == int64_t(sets.size())) {
        const int64_t bytes =
            g.out_channels * channels * (live.to - live.from) * per_depth * int64_t(sizeof(E));
        if (extra_bytes + bytes > kBorderSetBytes) {
          s = 0;
        } else {
          extra_bytes += bytes;
          add(live);
        }
      }
      of_depth.push_back(s);
    }
  }
};

uint32_t bf16_bits(c10::BFloat16 v) { return v.x; }

// bfloat16 on the dot-product kernels (Bf16Kernels): pairs of bfloat16 operands in 32-bit
// lanes, so each vdpbf16ps does 16 positions x 2 products, summing in float. The weights are
// paired the way the planes are. A tile is packed as bfloat16 planes (no conversion), then
// paired, in one of two ways:
//   - channels (2p, 2p + 1) at the same tap: one plane of pairs per two channels (an odd last
//     channel pairs with a zero plane);
//   - with few, odd channels (1 or 3: a CT volume, an RGB stem) and wide kernels, kernel
//     columns (2q, 2q + 1) of one channel (tap_pair_step): I3D's 3-channel 7x7x7 stem sums
//     12 operand pairs per kernel row instead of 14, a 1-channel layer runs at vdpbf16ps's
//     rate instead of falling back to float FMAs. An odd kernel width's last column pairs
//     with a plane of zeros (not with the next column: a zero weight times an Inf there
//     would be NaN).
// Returns false (nothing done) for a single channel that cannot pair taps.
bool forward_bf16_pairs(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& bias, at::Tensor& output, const Bf16Kernels& bk) {
  using T = c10::BFloat16;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume(), pairs = ceil_div(in_per_group, 2);
  // The GEMM reads only the pairs (2 B per channel element); the staging planes are
  // written and read once per tile.
  const ForwardPlan plan =
      plan_forward(g, sizeof(T), bk.max_rows, true, at::get_num_threads());
  const Layout& L = plan.layout;
  const ColumnMap cm(L);
  const int64_t cstride = L.channel_stride();

  const int64_t kw = g.kernel[2], half_kw = ceil_div(kw, 2);
  const int64_t step = plan.tap_pair_step;
  if (in_per_group == 1 && step == 0) return false;
  // Planes of pairs: per channel pair, or (tap pairs) per channel, then, for an odd kernel
  // width, per channel again with zeros in the upper halves.
  const int64_t pair_planes =
      step == 0 ? pairs : (kw % 2 == 1 ? 2 * in_per_group : in_per_group);

  const at::Tensor w = weight.contiguous();
  const T* wp = w.const_data_ptr<T>();
  const bool finite = all_finite(wp, w.numel());
  const TermSets<uint32_t> terms = [&] {
    if (step == 0)
      return TermSets<uint32_t>(
          g, plan.out_blocks, pairs, finite, L.tap_offsets(pairs), [&](int64_t co, int64_t k) {
            const int64_t p = k / kvol, tap = k % kvol, c = 2 * p;
            const T* row = wp + co * in_per_group * kvol;
            const uint32_t lo = bf16_bits(row[c * kvol + tap]);
            const uint32_t hi = c + 1 < in_per_group ? bf16_bits(row[(c + 1) * kvol + tap]) : 0;
            return lo | hi << 16;
          });
    // The terms of a layer whose kernel is half_kw columns wide, column q standing for the
    // layer's columns (2q, 2q + 1).
    Geometry paired = g;
    paired.kernel[2] = half_kw;
    std::vector<int64_t> offs;
    for (int64_t c = 0; c < in_per_group; ++c)
      for (int64_t i = 0; i < g.kernel[0]; ++i)
        for (int64_t j = 0; j < g.kernel[1]; ++j)
          for (int64_t q = 0; q < half_kw; ++q)
            offs.push_back(L.tap_offset(c, i, j, 2 * q) +
                           (2 * q + 1 < kw ? 0 : in_per_group * cstride));
    return TermSets<uint32_t>(
        paired, plan.out_blocks, in_per_group, finite, offs, [&](int64_t co, int64_t k) {
          const T* taps = wp + co * in_per_group * kvol + k / half_kw * kw;  // (c, i, j) row
          const int64_t l = 2 * (k % half_kw);
          return bf16_bits(taps[l]) | (l + 1 < kw ? bf16_bits(taps[l + 1]) : 0u) << 16;
        });
  }();

  const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  const Blocks& out_blocks = plan.out_blocks;

  at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_planes, h_pairs, h_c;
    const int64_t planes_size = L.buffer_size(2 * pairs);
    T* planes = scratch<T>(h_planes, planes_size);
    std::fill(planes, planes + planes_size, T(0));  // an odd last channel stays 0
    const int64_t pairs_size = L.buffer_size(pair_planes);
    uint32_t* buf = reinterpret_cast<uint32_t*>(scratch<int32_t>(h_pairs, pairs_size));
    std::fill(buf, buf + pairs_size, 0u);
    float* ct = scratch<float>(h_c, bk.max_rows * L.n);
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(planes);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_planes(L, cm, input_frames<T>(g, input, t.n, t.grp * in_per_group), in_per_group,
                  xs, t.od0, t.depths, t.oh0, t.th + L.qh_max, planes);
      if (step == 0) {
        for (int64_t p = 0; p < pairs; ++p) {
          const uint16_t* lo = bits + 2 * p * cstride;
          bk.interleave(cstride, lo, lo + cstride, buf + p * cstride);
        }
      } else {
        for (int64_t c = 0; c < in_per_group; ++c) {
          const uint16_t* lo = bits + c * cstride;
          uint32_t* d = buf + c * cstride;
          // (The last `step` elements are past every window's real columns.)
          bk.interleave(cstride - step, lo, lo + step, d);
          bk.interleave(step, lo + cstride - step, nullptr, d + cstride - step);
          if (kw % 2 == 1) bk.interleave(cstride, lo, nullptr, d + in_per_group * cstride);
        }
      }
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const int64_t od = t.od0 + dl, set = terms.of_depth[od];
        for (int64_t mb = 0; mb < out_blocks.count; ++mb) {
          const int64_t m0 = out_blocks.start(mb), rows = out_blocks.size(mb);
          if (set < 0) {
            std::fill(ct, ct + rows * L.n, 0.f);
          } else {
            const auto& s = terms.sets[set];
            bk.gemm(rows, s.weights.data() + (t.grp * out_per_group + m0) * s.K, s.K,
                    buf + dl * L.depth_step(), s.offs.data(), t.np, ct, L.n);
          }
          store_forward_rows(L, ct, rows, t.grp * out_per_group + m0, bp, yp + t.n * ysn, ysc,
                             ys, od, t.oh0, t.th);
        }
      }
    }
  });
  return true;
}

template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t K = in_per_group * g.kernel_volume();
  if (K == 0) {  // no input channels: the output is the bias
    if (bias.defined()) {
      output.copy_(bias.view({1, g.out_channels, 1, 1, 1}).expand_as(output));
    } else {
      output.zero_();
    }
    return;
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    // (One input channel paired with a zero would gain nothing over the float kernels: it
    // runs there unless its taps pair.)
    if (const Bf16Kernels* bk = bf16_kernels();
        bk && forward_bf16_pairs(g, input, weight, bias, output, *bk))
      return;
  }
  const MicroKernels<A>& mk = micro_kernels(A{});
  const ForwardPlan plan = plan_forward(g, sizeof(A), mk.max_rows, false, at::get_num_threads(),
                                        mk.block_positions);
  const Layout& L = plan.layout;
  const Blocks& out_blocks = plan.out_blocks;
  const ColumnMap cm(L);

  const at::Tensor w = weight_as<A>(weight);
  const A* wp = w.const_data_ptr<A>();
  const TermSets<A> terms(g, out_blocks, in_per_group, all_finite(wp, w.numel()),
                          L.tap_offsets(in_per_group),
                          [&](int64_t co, int64_t k) { return wp[co * K + k]; });

  const at::Tensor b =
      bias.defined() ? bias.to(c10::CppTypeToScalarType<A>::value).contiguous() : bias;
  const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);

  at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_buf, h_c;
    const int64_t bufsize = L.buffer_size(in_per_group);
    A* buf = scratch<A>(h_buf, bufsize);
    std::fill(buf, buf + bufsize, A(0));
    const int64_t held_rows = plan.held_blocks * mk.max_rows;
    A* ct = scratch<A>(h_c, held_rows * L.n);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_planes(L, cm, input_frames<T>(g, input, t.n, t.grp * in_per_group), in_per_group,
                  xs, t.od0, t.depths, t.oh0, t.th + L.qh_max, buf);
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const int64_t od = t.od0 + dl, set = terms.of_depth[od];
        const A* planes = buf + dl * L.depth_step();
        for (int64_t mb0 = 0; mb0 < out_blocks.count; mb0 += plan.held_blocks) {
          const int64_t mb1 = std::min(out_blocks.count, mb0 + plan.held_blocks);
          const int64_t m00 = out_blocks.start(mb0);  // ct's first row
          if (set < 0) {
            std::fill(ct, ct + held_rows * L.n, A(0));
          } else {
            const auto& s = terms.sets[set];
            for (int64_t k0 = 0; k0 < s.K; k0 += plan.chunk_terms) {
              const int64_t kc = std::min(plan.chunk_terms, s.K - k0);
              for (int64_t f0 = 0; f0 < t.np; f0 += plan.slice_positions) {
                const int64_t nf = std::min(plan.slice_positions, t.np - f0);
                for (int64_t mb = mb0; mb < mb1; ++mb) {
                  const int64_t m0 = out_blocks.start(mb), rows = out_blocks.size(mb);
                  // (A block's weights are [k][row]: its chunk starts k0 * rows in.)
                  const A* wb = s.weights.data() + (t.grp * out_per_group + m0) * s.K;
                  mk.gemm(rows, wb + k0 * rows, kc, planes + f0, s.offs.data() + k0, nf,
                          ct + (m0 - m00) * L.n + f0, L.n, k0 > 0);
                }
              }
            }
          }
          for (int64_t mb = mb0; mb < mb1; ++mb) {
            const int64_t m0 = out_blocks.start(mb);
            store_forward_rows(L, ct + (m0 - m00) * L.n, out_blocks.size(mb),
                               t.grp * out_per_group + m0, bp, yp + t.n * ysn, ysc, ys, od,
                               t.oh0, t.th);
          }
        }
      }
    }
  });
}

}  // namespace

void tiled_forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output) {
  // (It takes only layers with input channels, so the K == 0 case stays in forward_kernel.)
  if (forward_winograd(g, input, weight, bias, output)) return;
  if (forward_channels_last(g, input, weight, bias, output)) return;
  // The routes through layout copies copy the input tensor alone: a stream's head (g.head)
  // is read in place by the kernels below.
  const bool copies = g.head.frames == 0;
  // (1x1x1 is a plain GEMM on planar tensors already: 128 -> 128 channels took 0.46-0.48
  // ms planar, 0.51-0.56 through the copies.)
  if (copies && g.kernel_volume() > 1 && through_channels_last(g, input)) {
    at::Tensor y = layout_scratch(output, at::MemoryFormat::ChannelsLast3d, kCopy2);
    if (forward_channels_last(g, to_channels_last(input, kCopy), weight, bias, y)) {
      copy_layout(output, y);
      return;
    }
  }
  // A channels_last input with few channels (an RGB stem), which the channels-innermost
  // kernels hand back: packed from NDHWC each position's 3 channels were a short run, and
  // each output element a store of its own C_out apart; planar copies cost less than both.
  // I3D's stem (3 -> 64, 7x7x7 stride 2), 2 threads, ms: float32 9.35 -> 8.8, bfloat16 6.4
  // -> 5.7 (then 5.1 with the kernel-column pairs of forward_bf16_pairs).
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  if (copies && g.in_per_group() < 8 && !input.is_contiguous() && input.is_contiguous(cl) &&
      output.is_contiguous(cl)) {
    at::Tensor x = layout_scratch(input, at::MemoryFormat::Contiguous, kCopy);
    at::Tensor y = layout_scratch(output, at::MemoryFormat::Contiguous, kCopy2);
    copy_layout(x, input);
    TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward",
                  [&] { forward_kernel<scalar_t>(g, x, weight, bias, y); });
    copy_layout(output, y);
    return;
  }
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward",
                [&] { forward_kernel<scalar_t>(g, input, weight, bias, output); });
}

}  // namespace torchconv3d::cpu
