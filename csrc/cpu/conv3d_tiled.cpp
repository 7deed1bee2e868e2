// CPU convolution over shifted planes: one design for every pass, groups (depthwise
// included), kernel, stride, dilation and padding mode.
//
// A tile is a band of `th` output rows of `td` output depths (usually one). Its input is
// copied into a small buffer as "phase planes": for input channel c, padded input depth
// (slot) and stride phase (rh, rw), plane[t_row][t_col] holds the padded input at row
// (oh0 + t_row) * sh + rh and column t_col * sw + rw, where the padding mode (through
// source_index) decides what a padded coordinate reads. Rows are lw = W_out + qw_max long,
// so for a tile position f = r * lw + ow, tap (c, i, j, l) reads
//     plane(c, slot of (od, i), (j*dh) % sh, (l*dw) % sw)[f + (j*dh / sh) * lw + (l*dw / sw)]
// - a fixed shift per tap. The convolution becomes a GEMM with one shifted window of the
// buffer per k (microkernel.h), vectorised along f. Columns ow >= W_out are computed and
// dropped (qw_max / lw of the work: 3-12% on the suite's shapes).
//
// A forward on channels_last tensors goes to forward_channels_last.cpp first (the same tile
// plan, channels innermost); it hands back the layers where these planar kernels do better.
// Their grad_input goes to grad_input_phases.cpp first (the same forward, one per stride
// phase), with zero padding, and grad_weight to grad_weight_channels_last.cpp.
//
// Passes and the splits that keep threads from writing the same element:
//   forward      tiles (sample, group, depth block, band); C[c_out x f] = W x shifted planes
//   grad_input   (sample, group, block of input depths): the gradient of a tile's phase
//                planes, C[c_in x t] = W^T x shifted grad_output, is added back through
//                the adjoint of the copy, only for depth taps that land in the block.
//   grad_weight  (group, block of c_out, block of c_in) owns those weight elements and
//                walks every tile in order: dot products of grad_output rows with shifted
//                planes.
// Sums run in an order fixed by the shape (bands of grad_input and grad_weight do not
// depend on the thread count), so results are bitwise stable run to run and across
// thread counts. No floating-point atomics. Workspace per thread is a few hundred KB.
#include "common.h"
#include "kernels.h"
#include "microkernel.h"
#include "nonfinite.h"
#include "tile_layout.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
namespace {


// pack_planes for channel stride 1 (channels_last): the same planes, filled walking each
// source row once with the channel innermost, so reads are contiguous.
template <bool Sanitize, typename T, typename A>
void pack_planes_channels_last(const Layout& L, const ColumnMap& cm, const T* x, int64_t channels,
                               const std::array<int64_t, 3>& xs, int64_t od0, int64_t depths,
                               int64_t oh0, int64_t rows, A* buf) {
  const Geometry& g = L.g;
  const int64_t cstride = L.channel_stride();
  for (int64_t slot = 0; slot < L.slots; ++slot) {
    if (!L.slot_used(slot, depths)) continue;
    const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                    g.pad_before[0], g.pad_after[0], g.mode[0]);
    for (int64_t rh = 0; rh < L.sh; ++rh) {
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        A* base = buf + L.plane_offset(0, slot, rh, rw);
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t_row = 0; t_row < rows; ++t_row) {
          A* d = base + t_row * L.lw;
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            for (int64_t c = 0; c < channels; ++c)
              std::fill(d + c * cstride, d + c * cstride + L.lw, A(0));
            continue;
          }
          const T* src = x + id * xs[0] + ih * xs[1];
          for (int64_t t = 0; t < L.lw; ++t) {
            if (col[t] < 0) {
              for (int64_t c = 0; c < channels; ++c) d[c * cstride + t] = A(0);
            } else {
              const T* sp = src + col[t] * xs[2];
              for (int64_t c = 0; c < channels; ++c) d[c * cstride + t] = load<Sanitize, A>(sp[c]);
            }
          }
        }
      }
    }
  }
}

// Copies channels [0, channels) of `x` (one sample, the block's first channel; channel
// stride xc, spatial strides xs) for the tile of `depths` output depths from od0 and the
// band from oh0 into phase planes, their first `rows` rows (what the band reads).
template <bool Sanitize = false, typename T, typename A>
void pack_planes(const Layout& L, const ColumnMap& cm, const T* x, int64_t channels, int64_t xc,
                 const std::array<int64_t, 3>& xs, int64_t od0, int64_t depths, int64_t oh0,
                 int64_t rows, A* buf) {
  const Geometry& g = L.g;
  const int64_t lo = cm.all_lo, hi = cm.all_hi, pw = g.pad_before[2];
  if (xc == 1 && channels > 1) {
    // channels_last: a source row is [W][C]; read it once, channels innermost.
    pack_planes_channels_last<Sanitize>(L, cm, x, channels, xs, od0, depths, oh0, rows, buf);
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t slot = 0; slot < L.slots; ++slot) {
      if (!L.slot_used(slot, depths)) continue;
      const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                      g.pad_before[0], g.pad_after[0], g.mode[0]);
      for (int64_t rh = 0; rh < L.sh; ++rh) {
        // The sw phase planes of (c, slot, rh) are consecutive: phase rw at dst + rw * plane.
        A* dst = buf + L.plane_offset(c, slot, rh, 0);
        for (int64_t t_row = 0; t_row < rows; ++t_row, dst += L.lw) {
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            for (int64_t rw = 0; rw < L.sw; ++rw)
              std::fill(dst + rw * L.plane, dst + rw * L.plane + L.lw, A(0));
            continue;
          }
          const T* src = x + c * xc + id * xs[0] + ih * xs[1];
          // Border columns through the table, where the padding mode decides.
          for (int64_t rw = 0; rw < L.sw; ++rw) {
            A* d = dst + rw * L.plane;
            const int64_t* col = cm.col.data() + rw * L.lw;
            for (int64_t t = 0; t < lo; ++t)
              d[t] = col[t] < 0 ? A(0) : load<Sanitize, A>(src[col[t] * xs[2]]);
            for (int64_t t = hi; t < L.lw; ++t)
              d[t] = col[t] < 0 ? A(0) : load<Sanitize, A>(src[col[t] * xs[2]]);
          }
          // Interior: one pass over the source row feeds every phase (contiguous reads;
          // stride 2 de-interleaves into two planes).
          if (xs[2] == 1 && L.sw == 1) {
            const T* s0 = src - pw;
            for (int64_t t = lo; t < hi; ++t) dst[t] = load<Sanitize, A>(s0[t]);
          } else if (xs[2] == 1 && L.sw == 2) {
            const T* s0 = src - pw;
            A* d1 = dst + L.plane;
            for (int64_t t = lo; t < hi; ++t) {
              dst[t] = load<Sanitize, A>(s0[2 * t]);
              d1[t] = load<Sanitize, A>(s0[2 * t + 1]);
            }
          } else {
            for (int64_t rw = 0; rw < L.sw; ++rw) {
              A* d = dst + rw * L.plane;
              const T* s0 = src + (rw - pw) * xs[2];
              const int64_t step = L.sw * xs[2];
              for (int64_t t = lo; t < hi; ++t) d[t] = load<Sanitize, A>(s0[t * step]);
            }
          }
        }
      }
    }
  }
}

// The adjoint of pack_planes for the first `rows` rows of the sw phase planes (rh, *) of
// `channels` channels at depth id: adds gp[c * ldp + rw * pstride + t_row * lw + t_col]
// into gx (channel stride gc, spatial strides gs).
template <typename A, typename D>
void scatter_planes(const Layout& L, const ColumnMap& cm, const A* gp, int64_t ldp,
                    int64_t pstride, int64_t channels, int64_t rows, int64_t id, int64_t oh0,
                    int64_t rh, D* gx, int64_t gc, const std::array<int64_t, 3>& gs) {
  const Geometry& g = L.g;
  const int64_t lo = cm.all_lo, hi = cm.all_hi, pw = g.pad_before[2];
  for (int64_t t_row = 0; t_row < rows; ++t_row) {
    const int64_t ih = row_source(L, oh0, t_row, rh);
    if (ih < 0) continue;
    for (int64_t c = 0; c < channels; ++c) {
      const A* src = gp + c * ldp + t_row * L.lw;
      D* dst = gx + c * gc + id * gs[0] + ih * gs[1];
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        const A* s = src + rw * pstride;
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t = 0; t < lo; ++t)
          if (col[t] >= 0) dst[col[t] * gs[2]] += s[t];
        for (int64_t t = hi; t < L.lw; ++t)
          if (col[t] >= 0) dst[col[t] * gs[2]] += s[t];
      }
      if (gs[2] == 1 && L.sw == 1) {
        D* d0 = dst - pw;
        for (int64_t t = lo; t < hi; ++t) d0[t] += src[t];
      } else if (gs[2] == 1 && L.sw == 2) {  // interleave the two phases back
        D* d0 = dst - pw;
        const A* s1 = src + pstride;
        for (int64_t t = lo; t < hi; ++t) {
          d0[2 * t] += src[t];
          d0[2 * t + 1] += s1[t];
        }
      } else {
        for (int64_t rw = 0; rw < L.sw; ++rw) {
          const A* s = src + rw * pstride;
          D* d0 = dst + (rw - pw) * gs[2];
          const int64_t step = L.sw * gs[2];
          for (int64_t t = lo; t < hi; ++t) d0[t * step] += s[t];
        }
      }
    }
  }
}

// grad_output of one sample and tile for `channels` channels into rows of length ld:
// position f = r * lw + ow at dst[c * ld + base + f], zero wherever no output is.
template <typename T, typename A>
void pack_grad_output(const Layout& L, const T* gy, int64_t channels, int64_t gyc,
                      const std::array<int64_t, 3>& gys, int64_t od, int64_t oh0, A* dst,
                      int64_t ld, int64_t base) {
  const Geometry& g = L.g;
  const int64_t rows = L.band_rows(oh0);
  if (gyc == 1 && channels > 1) {  // channels_last: channels innermost, contiguous reads
    for (int64_t c = 0; c < channels; ++c) std::fill(dst + c * ld, dst + (c + 1) * ld, A(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = gy + od * gys[0] + (oh0 + r) * gys[1];
      A* dr = dst + base + r * L.lw;
      for (int64_t ow = 0; ow < g.out[2]; ++ow)
        for (int64_t c = 0; c < channels; ++c)
          dr[c * ld + ow] = static_cast<A>(s[ow * gys[2] + c]);
    }
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    A* d = dst + c * ld;
    std::fill(d, d + ld, A(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = gy + c * gyc + od * gys[0] + (oh0 + r) * gys[1];
      A* dr = d + base + r * L.lw;
      if (gys[2] == 1) {
        for (int64_t ow = 0; ow < g.out[2]; ++ow) dr[ow] = static_cast<A>(s[ow]);
      } else {
        for (int64_t ow = 0; ow < g.out[2]; ++ow) dr[ow] = static_cast<A>(s[ow * gys[2]]);
      }
    }
  }
}

// The weight in the accumulation type, contiguous [C_out, C_in/groups, kd, kh, kw].
template <typename A>
at::Tensor weight_as(const at::Tensor& weight) {
  return weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
}

// The forward's result rows of one tile, from the GEMM's float rows ct (row stride L.n):
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

// Weight blocks of output channels (mblocks within each group) laid out [k][r], the
// order gemm reads them: element(co, k) for k < K.
template <typename E, typename Element>
std::vector<E> pack_weight_blocks(const Geometry& g, const Blocks& mblocks, int64_t K,
                                  Element&& element) {
  const int64_t cog = g.out_per_group();
  std::vector<E> wpack(g.out_channels * K);
  for (int64_t co = 0; co < g.out_channels; ++co) {
    const int64_t grp = co / cog, m = co % cog, mb = mblocks.of(m);
    const int64_t m0 = mblocks.start(mb), rows = mblocks.size(mb);
    E* blk = wpack.data() + (grp * cog + m0) * K;
    for (int64_t k = 0; k < K; ++k) blk[k * rows + (m - m0)] = element(co, k);
  }
  return wpack;
}

uint32_t bf16_bits(c10::BFloat16 v) { return v.x; }

// bfloat16 forward on the dot-product kernels (Bf16Kernels): the planes of input channels
// (2p, 2p + 1) interleaved into one plane of 32-bit pairs, the weights paired the same way,
// so each vdpbf16ps does 16 positions x 2 channels, summing in float. A tile is packed as
// bfloat16 planes (no conversion), then paired.
void forward_bf16_pairs(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& bias, at::Tensor& output, const Bf16Kernels& bk) {
  using T = c10::BFloat16;
  const int64_t cig = g.in_per_group(), cog = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t pairs = ceil_div(cig, 2), K = pairs * kvol;
  const Blocks mblocks(cog, bk.max_rows);
  // The GEMM reads only the pairs (2 B per channel element); the staging planes are
  // written and read once per tile.
  const Layout L = forward_layout(g, cig, sizeof(T));
  const ColumnMap cm(L);

  const at::Tensor w = weight.contiguous();
  const T* wp = w.const_data_ptr<T>();
  const std::vector<uint32_t> wpack =
      pack_weight_blocks<uint32_t>(g, mblocks, K, [&](int64_t co, int64_t k) {
        const int64_t p = k / kvol, tap = k % kvol, c = 2 * p;
        const T* row = wp + co * cig * kvol;
        const uint32_t lo = bf16_bits(row[c * kvol + tap]);
        const uint32_t hi = c + 1 < cig ? bf16_bits(row[(c + 1) * kvol + tap]) : 0;
        return lo | hi << 16;
      });
  const std::vector<int64_t> offs = L.tap_offsets(pairs);

  const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  const T* xp = input.const_data_ptr<T>();
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  const int64_t cstride = L.channel_stride();

  at::parallel_for(0, ForwardTile::count(L), 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_planes, h_pairs, h_c;
    const int64_t planes_size = L.buffer_size(2 * pairs);
    T* planes = scratch<T>(h_planes, planes_size);
    std::fill(planes, planes + planes_size, T(0));  // an odd last channel stays 0
    const int64_t pairs_size = L.buffer_size(pairs);
    uint32_t* buf = reinterpret_cast<uint32_t*>(scratch<int32_t>(h_pairs, pairs_size));
    std::fill(buf, buf + pairs_size, 0u);
    float* ct = scratch<float>(h_c, bk.max_rows * L.n);
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(planes);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_planes(L, cm, xp + t.n * xsn + t.grp * cig * xsc, cig, xsc, xs, t.od0, t.depths,
                  t.oh0, t.th + L.qh_max, planes);
      for (int64_t p = 0; p < pairs; ++p) {
        const uint16_t* lo = bits + 2 * p * cstride;
        const uint16_t* hi = lo + cstride;
        uint32_t* d = buf + p * cstride;
        for (int64_t e = 0; e < cstride; ++e) d[e] = lo[e] | uint32_t(hi[e]) << 16;
      }
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const int64_t od = t.od0 + dl;
        for (int64_t mb = 0; mb < mblocks.count; ++mb) {
          const int64_t m0 = mblocks.start(mb), rows = mblocks.size(mb);
          bk.gemm(rows, wpack.data() + (t.grp * cog + m0) * K, K, buf + dl * L.depth_step(),
                  offs.data(), t.np, ct, L.n);
          store_forward_rows(L, ct, rows, t.grp * cog + m0, bp, yp + t.n * ysn, ysc, ys, od,
                             t.oh0, t.th);
        }
      }
    }
  });
}

template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const int64_t cig = g.in_per_group(), cog = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t K = cig * kvol;
  if (K == 0) {  // no input channels: the output is the bias
    if (bias.defined()) {
      output.copy_(bias.view({1, g.out_channels, 1, 1, 1}).expand_as(output));
    } else {
      output.zero_();
    }
    return;
  }
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    // One input channel would pair with a zero: no gain over the float kernels.
    if (const Bf16Kernels* bk = bf16_kernels(); bk && cig >= 2)
      return forward_bf16_pairs(g, input, weight, bias, output, *bk);
  }
  const MicroKernels<A>& mk = micro_kernels(A{});
  const Blocks mblocks(cog, mk.max_rows);
  const Layout L = forward_layout(g, cig, sizeof(A));
  const ColumnMap cm(L);

  const at::Tensor w = weight_as<A>(weight);
  const A* wp = w.const_data_ptr<A>();
  const std::vector<A> wpack = pack_weight_blocks<A>(
      g, mblocks, K, [&](int64_t co, int64_t k) { return wp[co * K + k]; });
  const std::vector<int64_t> offs = L.tap_offsets(cig);

  const at::Tensor b =
      bias.defined() ? bias.to(c10::CppTypeToScalarType<A>::value).contiguous() : bias;
  const A* bp = b.defined() ? b.const_data_ptr<A>() : nullptr;
  const T* xp = input.const_data_ptr<T>();
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);

  at::parallel_for(0, ForwardTile::count(L), 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_buf, h_c;
    const int64_t bufsize = L.buffer_size(cig);
    A* buf = scratch<A>(h_buf, bufsize);
    std::fill(buf, buf + bufsize, A(0));
    A* ct = scratch<A>(h_c, mk.max_rows * L.n);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_planes(L, cm, xp + t.n * xsn + t.grp * cig * xsc, cig, xsc, xs, t.od0, t.depths,
                  t.oh0, t.th + L.qh_max, buf);
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const int64_t od = t.od0 + dl;
        for (int64_t mb = 0; mb < mblocks.count; ++mb) {
          const int64_t m0 = mblocks.start(mb), rows = mblocks.size(mb);
          mk.gemm(rows, wpack.data() + (t.grp * cog + m0) * K, K, buf + dl * L.depth_step(),
                  offs.data(), t.np, ct, L.n, false);
          store_forward_rows(L, ct, rows, t.grp * cog + m0, bp, yp + t.n * ysn, ysc, ys, od,
                             t.oh0, t.th);
        }
      }
    }
  });
}

template <typename T>
void grad_input_kernel(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& weight, at::Tensor& grad_input) {
  using A = at::opmath_type<T>;
  // float and double add straight into grad_input (each task first zeroes the part it
  // owns); the half types sum a block of input depths in a float slab and write it once.
  constexpr bool direct = std::is_same_v<A, T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  const int64_t cig = g.in_per_group(), cog = g.out_per_group();
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  const Blocks cblocks(cig, mk.max_rows);

  Layout L(g);
  const int64_t halo = L.qh_max * L.lw + L.qw_max;
  // The band fixes how terms are grouped into sums, so it depends on the shape alone.
  L.set_band(kTileBytes / (cog * L.lw * sizeof(A)) - L.qh_max);
  const int64_t np = round_up(L.plane, kLanes);  // phase-plane positions computed
  // grad_output row stride in the buffer (+kLanes: off multiples of 4 KB, see
  // channel_stride).
  const int64_t ld = halo + np + kLanes;
  const ColumnMap cm(L);

  // Per (depth tap i, phase): the (c_out, j, l) terms, their shifts in the grad_output
  // buffer, and the weight laid out [k][r] per block of input channels.
  struct Phase {
    int64_t k = 0;
    std::vector<int64_t> offs;
    std::vector<A> a;  // per block of channels: [k][r]
  };
  at::Tensor w = weight_as<A>(weight);
  // Non-finite weights would meet the halo's zeros; see nonfinite.h.
  const std::vector<WeightTerm<A>> nonfinite = nonfinite_weights<A>(g, w);
  if (!nonfinite.empty()) w = w.nan_to_num(0, 0, 0);
  const A* wp = w.const_data_ptr<A>();
  std::vector<Phase> phases;  // index (grp * kd + i) * sh * sw + rh * sw + rw
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t i = 0; i < kd; ++i)
      for (int64_t rh = 0; rh < L.sh; ++rh)
        for (int64_t rw = 0; rw < L.sw; ++rw) {
          Phase p;
          std::vector<std::array<int64_t, 3>> terms;  // (co, j, l)
          for (int64_t co = 0; co < cog; ++co)
            for (int64_t j = 0; j < kh; ++j)
              for (int64_t l = 0; l < kw; ++l)
                if (L.phase_h(j) == rh && L.phase_w(l) == rw) {
                  terms.push_back({co, j, l});
                  p.offs.push_back(co * ld + halo - L.shift(j, l));
                }
          p.k = static_cast<int64_t>(terms.size());
          p.a.resize(cig * p.k);
          for (int64_t cb = 0; cb < cblocks.count; ++cb) {
            const int64_t c0 = cblocks.start(cb), rows = cblocks.size(cb);
            A* blk = p.a.data() + c0 * p.k;
            for (int64_t k = 0; k < p.k; ++k)
              for (int64_t r = 0; r < rows; ++r) {
                const auto [co, j, l] = terms[k];
                blk[k * rows + r] =
                    wp[((((grp * cog + co) * cig + c0 + r) * kd + i) * kh + j) * kw + l];
              }
          }
          phases.push_back(std::move(p));
        }

  // Threads own blocks of input depths; a block is fed by the (od, i) pairs that read it
  // (each task scans the output depths once, so few large blocks keep that linear). The
  // half types' float slab holds the block: as many depths as kTileBytes allows, at least
  // one, at most what the direct types take.
  const int64_t units = g.batch * g.groups;
  const int64_t want = 4 * at::get_num_threads();
  const int64_t slab_depth = g.in[1] * g.in[2];
  const int64_t by_threads = ceil_div(g.in[0], std::max<int64_t>(1, ceil_div(want, units)));
  const int64_t dblock =
      direct ? by_threads
             : std::clamp<int64_t>(
                   kTileBytes / std::max<int64_t>(1, cig * slab_depth * int64_t(sizeof(A))), 1,
                   std::max<int64_t>(1, by_threads));
  const int64_t dblocks = ceil_div(g.in[0], dblock);

  const T* gyp = grad_output.const_data_ptr<T>();
  T* gxp = grad_input.mutable_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), gxs = spatial_strides(grad_input);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const int64_t gxsn = grad_input.stride(0), gxsc = grad_input.stride(1);
  const int64_t bands = L.bands(), nph = L.sh * L.sw;

  // Thin layers: when the phase-plane gradients of every channel for several output
  // depths fit the budget, they are summed per input depth over those output depths and
  // added back once, rather than once per (output depth, depth tap). Shape-only choice.
  if (bands == 1) {
    L.grow_depths([&](const Layout& t) {
      return cig * t.slots * nph * np * int64_t(sizeof(A)) <= kTileBytes;
    });
  }
  const bool slotted = L.td > 1;
  const int64_t slot_stride = L.slots * nph * np;  // channel stride of the slot planes

  at::parallel_for(0, units * dblocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_gy, h_gp, h_slab;
    A* gyb = scratch<A>(h_gy, cog * ld);
    A* gp = scratch<A>(h_gp, slotted ? cig * slot_stride : mk.max_rows * nph * np);
    A* gps = gp;
    A* slab = direct ? nullptr : scratch<A>(h_slab, cig * dblock * slab_depth);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (g.groups * dblocks), grp = (task / dblocks) % g.groups;
      const int64_t d0 = (task % dblocks) * dblock, d1 = std::min(g.in[0], d0 + dblock);
      T* gx = gxp + n * gxsn + grp * cig * gxsc;
      if constexpr (direct) {
        for (int64_t c = 0; c < cig; ++c)
          for (int64_t d = d0; d < d1; ++d)
            for (int64_t h = 0; h < g.in[1]; ++h) {
              T* row = gx + c * gxsc + d * gxs[0] + h * gxs[1];
              for (int64_t x = 0; x < g.in[2]; ++x) row[x * gxs[2]] = T(0);
            }
      } else {
        std::fill(slab, slab + cig * dblock * slab_depth, A(0));
      }
      // Adds the sw phase-plane gradients (rh, *) of `channels` channels (channel stride
      // ldp, phase stride np) into grad_input at depth id, or into the slab.
      auto scatter = [&](const A* src, int64_t ldp, int64_t c0, int64_t channels, int64_t prows,
                         int64_t id, int64_t oh0, int64_t rh) {
        if constexpr (direct) {
          scatter_planes(L, cm, src, ldp, np, channels, prows, id, oh0, rh, gx + c0 * gxsc, gxsc,
                         gxs);
        } else {
          scatter_planes(L, cm, src, ldp, np, channels, prows, id - d0, oh0, rh,
                         slab + c0 * dblock * slab_depth, dblock * slab_depth,
                         std::array<int64_t, 3>{slab_depth, g.in[2], 1});
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
          const int64_t npb = round_up(prows * L.lw, kLanes);
          if (slotted) std::fill(gps, gps + cig * slot_stride, A(0));
          for (int64_t od = od0; od < od0 + depths; ++od) {
            pack_grad_output(L, gyp + n * gysn + grp * cog * gysc, cog, gysc, gys, od, oh0, gyb,
                             ld, halo);
            for (int64_t i = 0; i < kd; ++i) {
              const int64_t id = tap_source(g, 0, od, i);
              if (!owned(id)) continue;
              const int64_t slot = (od - od0) * g.stride[0] + i * g.dilation[0];
              for (int64_t cb = 0; cb < cblocks.count; ++cb) {
                const int64_t c0 = cblocks.start(cb), rows = cblocks.size(cb);
                for (int64_t ph = 0; ph < nph; ++ph) {
                  const Phase& p = phases[(grp * kd + i) * nph + ph];
                  if (slotted) {
                    if (p.k == 0) continue;  // no tap reads this phase: its gradient is zero
                    mk.gemm(rows, p.a.data() + c0 * p.k, p.k, gyb, p.offs.data(), npb,
                            gps + c0 * slot_stride + (slot * nph + ph) * np, slot_stride, true);
                  } else if (p.k == 0) {
                    for (int64_t r = 0; r < rows; ++r)
                      std::fill(gp + (r * nph + ph) * np, gp + (r * nph + ph + 1) * np, A(0));
                  } else {
                    mk.gemm(rows, p.a.data() + c0 * p.k, p.k, gyb, p.offs.data(), npb,
                            gp + ph * np, nph * np, false);
                  }
                }
                if (!slotted) {
                  for (int64_t rh = 0; rh < L.sh; ++rh)
                    scatter(gp + rh * L.sw * np, nph * np, c0, rows, prows, id, oh0, rh);
                }
              }
            }
          }
          if (!slotted) continue;
          for (int64_t slot = 0; slot < L.slots; ++slot) {
            if (!L.slot_used(slot, depths)) continue;
            const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                            g.pad_before[0], g.pad_after[0], g.mode[0]);
            if (!owned(id)) continue;
            for (int64_t rh = 0; rh < L.sh; ++rh)
              scatter(gps + (slot * nph + rh * L.sw) * np, slot_stride, 0, cig, prows, id, oh0,
                      rh);
          }
        }
      }
      if constexpr (!direct) {
        for (int64_t c = 0; c < cig; ++c)
          for (int64_t d = d0; d < d1; ++d)
            for (int64_t h = 0; h < g.in[1]; ++h) {
              const A* s = slab + (c * dblock + d - d0) * slab_depth + h * g.in[2];
              T* dst = gx + c * gxsc + d * gxs[0] + h * gxs[1];
              for (int64_t x = 0; x < g.in[2]; ++x) dst[x * gxs[2]] = static_cast<T>(s[x]);
            }
      }
    }
  });
  if (!nonfinite.empty()) add_weight_terms<T, A>(g, grad_output, nonfinite, grad_input);
}

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
  const int64_t cig = g.in_per_group(), cog = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t K = cig * kvol;
  if (grad_weight.numel() == 0) return;

  Layout L(g);
  // Whole output planes per tile when they fit: each dot product then runs over a long
  // stretch of positions before its lanes are added up. Shape-only, like grad_input's.
  const int64_t per_channel = (g.out[1] + L.qh_max) * L.row_bytes(sizeof(A));
  int64_t cib = std::clamp<int64_t>(kTileBytes / per_channel, 1, cig);
  if (kTileBytes / per_channel >= 1) {
    L.set_band(g.out[1]);
  } else {
    L.set_band(kTileBytes / L.row_bytes(sizeof(A)) - L.qh_max);
  }
  // Then enough (c_out block, c_in block) pairs for every thread: c_in is split first
  // (the cheaper copy to repeat is grad_output's), then c_out.
  const int64_t want = 4 * at::get_num_threads();
  cib = std::min(cib, ceil_div(cig, std::min(cig, ceil_div(want, g.groups))));
  const int64_t ciblocks = ceil_div(cig, cib);
  const int64_t coblocks = std::min(cog, ceil_div(want, g.groups * ciblocks));
  const int64_t cob = ceil_div(cog, coblocks);
  const int64_t nco = ceil_div(cog, cob);
  // Several depths per tile when whole planes fit: every sum still runs over samples,
  // then depths in order, so this changes no result.
  if (L.bands() == 1) {
    L.grow_depths(
        [&](const Layout& t) { return t.planes_bytes(cib, sizeof(A)) <= kTileBytes; });
  }
  const ColumnMap cm(L);

  const std::vector<int64_t> offs = L.tap_offsets(cib);

  // Sums go straight into grad_weight when it is a dense [C_out, K] matrix of A, else
  // into a buffer copied over at the end.
  const bool in_place = std::is_same_v<A, T> && grad_weight.is_contiguous();
  at::Tensor acc_holder =
      in_place ? grad_weight
               : at::empty({g.out_channels, K},
                           at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  A* acc = static_cast<A*>(acc_holder.data_ptr());
  const T* gyp = grad_output.const_data_ptr<T>();
  const T* xp = input.const_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), xs = spatial_strides(input);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t bands = L.bands();

  // With Sanitize, input NaN/Inf read as zero (the dropped columns would pair them with
  // zeros); see nonfinite.h.
  auto pass = [&](auto sanitize) {
    acc_holder.zero_();
    at::parallel_for(0, g.groups * nco * ciblocks, 1, [&](int64_t begin, int64_t end) {
      at::Tensor h_buf, h_gy;
      const int64_t bufsize = L.buffer_size(cib);
      E* buf = scratch<E>(h_buf, bufsize);
      std::fill(buf, buf + bufsize, E(0));
      // Row stride, off multiples of 4 KB; the bfloat16 dot reads up to kLanes past a row.
      const int64_t gld = L.n + kLanes;
      E* gyb = scratch<E>(h_gy, cob * gld);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t grp = task / (nco * ciblocks);
        const int64_t co0 = (task / ciblocks) % nco * cob, cos = std::min(cob, cog - co0);
        const int64_t c0 = task % ciblocks * cib, cis = std::min(cib, cig - c0);
        A* out = acc + (grp * cog + co0) * K + c0 * kvol;
        for (int64_t n = 0; n < g.batch; ++n)
          for (int64_t od0 = 0; od0 < g.out[0]; od0 += L.td)
            for (int64_t band = 0; band < bands; ++band) {
              const int64_t oh0 = band * L.th, th = L.band_rows(oh0);
              const int64_t depths = std::min(L.td, g.out[0] - od0);
              pack_planes<decltype(sanitize)::value>(L, cm, xp + n * xsn + (grp * cig + c0) * xsc,
                                                     cis, xsc, xs, od0, depths, oh0,
                                                     th + L.qh_max, buf);
              for (int64_t dl = 0; dl < depths; ++dl) {
                pack_grad_output(L, gyp + n * gysn + (grp * cog + co0) * gysc, cos, gysc, gys,
                                 od0 + dl, oh0, gyb, gld, 0);
                dot(cos, gyb, gld, buf + dl * L.depth_step(), offs.data(), cis * kvol,
                    L.positions(th), out, K);
              }
            }
      }
    });
  };
  pass(std::false_type{});
  if (any_nonfinite(acc, g.out_channels * K)) {
    const auto where = nonfinite_inputs<T>(g, input);
    if (!where.empty()) {
      pass(std::true_type{});
      add_input_terms<T, A>(g, grad_output, input, where, acc);
    }
  }

  if (!in_place) grad_weight.copy_(acc_holder.view(grad_weight.sizes()));
}

}  // namespace

void tiled_forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output) {
  // (It takes only layers with input channels, so the K == 0 case below stays here.)
  if (forward_channels_last(g, input, weight, bias, output)) return;
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward",
                [&] { forward_kernel<scalar_t>(g, input, weight, bias, output); });
}

void tiled_grad_input(const Geometry& g, const at::Tensor& grad_output,
                      const at::Tensor& weight, at::Tensor& grad_input) {
  if (grad_input_by_phases(g, grad_output, weight, grad_input)) return;
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_input",
                [&] { grad_input_kernel<scalar_t>(g, grad_output, weight, grad_input); });
}

void tiled_grad_weight(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& input, at::Tensor& grad_weight) {
  if (grad_weight_channels_last(g, grad_output, input, grad_weight)) return;
  if (grad_output.scalar_type() == at::kBFloat16 && bf16_kernels()) {
    return grad_weight_kernel<c10::BFloat16, c10::BFloat16>(g, grad_output, input, grad_weight);
  }
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_weight", [&] {
    grad_weight_kernel<scalar_t, at::opmath_type<scalar_t>>(g, grad_output, input, grad_weight);
  });
}

}  // namespace torchconv3d::cpu
