// Forward for channels_last tensors with the channels innermost all the way through.
//
// The planar passes (conv3d_tiled.cpp) give every channel its own phase plane and put
// positions in the vector lanes; fed a channels_last tensor, their packing transposes the
// input and their stores scatter the output one channel at a time. Here the tile keeps
// the tensor's own order: the same phase planes (tile_layout.h), but each plane position
// holds a run of channels, so
//   - packing a source row is a copy of its [W][C] run (the padding mode still decides
//     which column a padded coordinate reads),
//   - the GEMM (MicroKernels::gemm_cl) puts output channels in the vector lanes and
//     broadcasts one input element per (position, tap, channel): a tap is a row offset and
//     C_in a contiguous run, as in an implicit GEMM over NDHWC,
//   - the result rows are [position][C_out], stored as runs into the channels_last output.
// Depthwise layers (one input and one output channel per group) vectorise over channels
// instead (depthwise_cl): all groups share one tile, each channel reads only itself.
// bfloat16 with AVX512-BF16 keeps the input in bfloat16 and reads channel pairs as the
// 32-bit operands of vdpbf16ps (Bf16Kernels::gemm_cl): the pairs are adjacent in NDHWC
// already, so packing stays a copy.
#include "kernels.h"
#include "tile_layout.h"

#include <ATen/OpMathType.h>

#include <cstring>
#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
namespace {

// Bytes of GEMM results a thread holds before storing them: a chunk of positions x the
// padded output channels, kept in L1/L2 between the micro-kernel and the store.
constexpr int64_t kResultBytes = 64 * 1024;

// A tile's phase planes, channels innermost: element (plane p, position f, channel e) at
// buf[(p * L.plane + f) * ldb + e], planes in Layout's order (slot, rh, rw). Channels
// [channels, ldb) are left as they are (the caller zeroes the buffer once).
template <typename T, typename B>
void pack_channels_innermost(const Layout& L, const ColumnMap& cm, const T* x,
                             int64_t channels, int64_t ldb, const std::array<int64_t, 3>& xs,
                             int64_t od0, int64_t depths, int64_t oh0, int64_t rows, B* buf) {
  const Geometry& g = L.g;
  const int64_t row = L.lw * ldb;
  for (int64_t slot = 0; slot < L.slots; ++slot) {
    if (!L.slot_used(slot, depths)) continue;
    const int64_t id = source_index(od0 * g.stride[0] + slot - g.pad_before[0], g.in[0],
                                    g.pad_before[0], g.pad_after[0], g.mode);
    for (int64_t rh = 0; rh < L.sh; ++rh)
      for (int64_t rw = 0; rw < L.sw; ++rw) {
        B* base = buf + L.plane_offset(0, slot, rh, rw) * ldb;
        const int64_t* col = cm.col.data() + rw * L.lw;
        for (int64_t t_row = 0; t_row < rows; ++t_row) {
          B* d = base + t_row * row;
          const int64_t ih = id < 0 ? -1 : row_source(L, oh0, t_row, rh);
          if (ih < 0) {
            std::fill(d, d + row, B(0));
            continue;
          }
          const T* src = x + id * xs[0] + ih * xs[1];
          for (int64_t t = 0; t < L.lw; ++t) {
            B* dt = d + t * ldb;
            if (col[t] < 0) {
              std::fill(dt, dt + channels, B(0));
              continue;
            }
            const T* sp = src + col[t] * xs[2];
            if constexpr (std::is_same_v<T, B>) {
              std::memcpy(dt, sp, channels * sizeof(T));
            } else {
              for (int64_t e = 0; e < channels; ++e) dt[e] = static_cast<B>(sp[e]);
            }
          }
        }
      }
  }
}

// Runs the tiles of L (ForwardTile; L.g's groups are the tiles' groups): packs each tile's
// `channels` input channels of its group with row stride ldb (buffer elements of type B),
// then for each output depth and chunk of positions calls
//   gemm(grp, window, positions, ct)   ct[f * cols + j] for output channel j of the group
// and stores ct + bias into the output (cog channels per group).
template <typename T, typename B, typename C, typename Gemm>
void run_tiles(const Layout& L, const at::Tensor& input, int64_t channels, int64_t ldb,
               int64_t cols, const std::vector<C>& bias, at::Tensor& output, Gemm&& gemm) {
  const Geometry& g = L.g;
  const ColumnMap cm(L);
  const int64_t cog = g.out_per_group();
  const T* xp = input.const_data_ptr<T>();
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  const int64_t chunk =
      std::max<int64_t>(24, kResultBytes / (cols * int64_t(sizeof(C))) / 24 * 24);

  at::parallel_for(0, ForwardTile::count(L), 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_buf, h_c;
    // The last row's window reads up to qw_max positions past its plane (dead columns).
    const int64_t bufsize = (L.planes_per_channel() * L.plane + L.lw + kLanes) * ldb;
    B* buf = scratch<B>(h_buf, bufsize);
    std::fill(buf, buf + bufsize, B(0));
    C* ct = scratch<C>(h_c, chunk * cols);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_channels_innermost(L, cm, xp + t.n * xsn + t.grp * channels * xsc, channels, ldb, xs,
                              t.od0, t.depths, t.oh0, t.th + L.qh_max, buf);
      // Positions up to the last real output of the band's last row.
      const int64_t n = (t.th - 1) * L.lw + g.out[2];
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const B* window = buf + dl * L.depth_step() * ldb;
        T* yd = yp + t.n * ysn + t.grp * cog * ysc + (t.od0 + dl) * ys[0];
        for (int64_t f0 = 0; f0 < n; f0 += chunk) {
          const int64_t nf = std::min(chunk, n - f0);
          gemm(t.grp, window + f0 * ldb, nf, ct);
          for (int64_t f = f0; f < f0 + nf; ++f) {
            const int64_t t_row = f / L.lw, ow = f % L.lw;
            if (ow >= g.out[2]) continue;
            const C* src = ct + (f - f0) * cols;
            const C* bp = bias.data() + t.grp * cog;
            T* dst = yd + (t.oh0 + t_row) * ys[1] + ow * ys[2];
            for (int64_t j = 0; j < cog; ++j) dst[j * ysc] = static_cast<T>(src[j] + bp[j]);
          }
        }
      }
    }
  });
}

template <typename C>
std::vector<C> bias_or_zeros(const Geometry& g, const at::Tensor& bias) {
  std::vector<C> b(g.out_channels, C(0));
  if (bias.defined()) {
    const at::Tensor bc = bias.to(c10::CppTypeToScalarType<C>::value).contiguous();
    std::copy(bc.const_data_ptr<C>(), bc.const_data_ptr<C>() + g.out_channels, b.begin());
  }
  return b;
}

// tap_offset of every tap, in weight order, for planes with ldb elements per position.
std::vector<int64_t> tap_offsets(const Layout& L, int64_t ldb) {
  std::vector<int64_t> offs = L.tap_offsets(1);
  for (int64_t& o : offs) o *= ldb;
  return offs;
}

// Dense (and grouped) layers on gemm_cl, in A = float or double.
template <typename T>
void forward_dense(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  const int64_t cig = g.in_per_group(), cog = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t cols = round_up(cog, kLanes), K = kvol * cig;
  const Layout L = forward_layout(g, cig, sizeof(A));
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
  const A* wp = w.const_data_ptr<A>();
  // Per group [tap][channel][cols], output channels innermost, zero past cog.
  std::vector<A> a(g.groups * K * cols, A(0));
  for (int64_t co = 0; co < g.out_channels; ++co) {
    const int64_t grp = co / cog, j = co % cog;
    for (int64_t e = 0; e < cig; ++e)
      for (int64_t k = 0; k < kvol; ++k)
        a[(grp * K + k * cig + e) * cols + j] = wp[(co * cig + e) * kvol + k];
  }
  const std::vector<int64_t> offs = tap_offsets(L, cig);
  run_tiles<T, A, A>(L, input, cig, cig, cols, bias_or_zeros<A>(g, bias), output,
                     [&](int64_t grp, const A* b, int64_t n, A* c) {
                       mk.gemm_cl(n, cols, a.data() + grp * K * cols, cols, kvol, cig, b, cig,
                                  offs.data(), c, cols);
                     });
}

// bfloat16 on vdpbf16ps: the tile stays bfloat16 with an even channel count per position
// (a zero after an odd last channel), read as pairs.
void forward_dense_bf16(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& bias, at::Tensor& output, const Bf16Kernels& bk) {
  using T = c10::BFloat16;
  const int64_t cig = g.in_per_group(), cog = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t pairs = ceil_div(cig, 2), ldb = 2 * pairs;
  const int64_t cols = round_up(cog, kLanes), K = kvol * pairs;
  const Layout L = forward_layout(g, ldb, sizeof(T));
  const at::Tensor w = weight.contiguous();
  const T* wp = w.const_data_ptr<T>();
  std::vector<uint32_t> a(g.groups * K * cols, 0u);
  for (int64_t co = 0; co < g.out_channels; ++co) {
    const int64_t grp = co / cog, j = co % cog;
    const T* row = wp + co * cig * kvol;
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t k = 0; k < kvol; ++k) {
        const uint32_t lo = row[2 * p * kvol + k].x;
        const uint32_t hi = 2 * p + 1 < cig ? row[(2 * p + 1) * kvol + k].x : 0u;
        a[(grp * K + k * pairs + p) * cols + j] = lo | hi << 16;
      }
  }
  // Offsets in pairs: every element offset is even (ldb is).
  std::vector<int64_t> offs = tap_offsets(L, ldb);
  for (int64_t& o : offs) o /= 2;
  run_tiles<T, T, float>(L, input, cig, ldb, cols, bias_or_zeros<float>(g, bias), output,
                         [&](int64_t grp, const T* b, int64_t n, float* c) {
                           bk.gemm_cl(n, cols, a.data() + grp * K * cols, cols, kvol, pairs,
                                      reinterpret_cast<const uint32_t*>(b), pairs, offs.data(),
                                      c, cols);
                         });
}

// Depthwise (one input and one output channel per group): every channel in one tile, as a
// single group of C channels read channel by channel.
template <typename T>
void forward_depthwise(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  const int64_t C = g.in_channels, kvol = g.kernel_volume(), ldb = round_up(C, kLanes);
  Geometry one = g;
  one.groups = 1;
  const Layout L = forward_layout(one, ldb, sizeof(A));
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
  const A* wp = w.const_data_ptr<A>();
  std::vector<A> a(kvol * ldb, A(0));  // [tap][channel]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < kvol; ++k) a[k * ldb + c] = wp[c * kvol + k];
  const std::vector<int64_t> offs = tap_offsets(L, ldb);
  run_tiles<T, A, A>(L, input, C, ldb, ldb, bias_or_zeros<A>(g, bias), output,
                     [&](int64_t, const A* b, int64_t n, A* c) {
                       mk.depthwise_cl(n, ldb, a.data(), ldb, kvol, b, ldb, offs.data(), c, ldb);
                     });
}

}  // namespace

bool forward_channels_last(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output) {
  if (input.stride(1) != 1 || output.stride(1) != 1 || g.in_channels < 2) return false;
  const int64_t cig = g.in_per_group(), cog = g.out_per_group();
  if (cig == 1 && cog == 1) {
    TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward_depthwise_cl",
                  [&] { forward_depthwise<scalar_t>(g, input, weight, bias, output); });
    return true;
  }
  // Output channels fill the vector lanes: below 3/4 of them in use (small groups), the
  // planar kernels, which vectorise over positions, do better.
  if (4 * cog < 3 * round_up(cog, kLanes)) return false;
  if (input.scalar_type() == at::kBFloat16 && cig >= 2) {
    if (const Bf16Kernels* bk = bf16_kernels()) {
      forward_dense_bf16(g, input, weight, bias, output, *bk);
      return true;
    }
  }
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward_cl",
                [&] { forward_dense<scalar_t>(g, input, weight, bias, output); });
  return true;
}

}  // namespace torchconv3d::cpu
