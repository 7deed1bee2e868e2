// The tiles every CPU pass works on: where a tile's phase planes and positions lie
// (Layout), which input column each plane column reads (ColumnMap), how items are cut into
// blocks (Blocks), and the forward's tiles. packing.h fills and reads them, plan.h sizes
// them per pass.
//
// Shifted phase planes, one design for every pass, groups (depthwise included), kernel,
// stride, dilation and padding mode. A tile is a band of `th` output rows of `td` output
// depths (usually one). Its input is copied into a small buffer as "phase planes": for input
// channel c, padded input depth (slot) and stride phase (rh, rw), plane[t_row][t_col] holds
// the padded input at row (oh0 + t_row) * sh + rh and column t_col * sw + rw, where the
// padding mode (through source_index) decides what a padded coordinate reads. Rows are
// lw = W_out + qw_max long, so for a tile position f = r * lw + ow, tap (c, i, j, l) reads
//     plane(c, slot of (od, i), (j*dh) % sh, (l*dw) % sw)[f + (j*dh / sh) * lw + (l*dw / sw)]
// - a fixed shift per tap. The convolution becomes a GEMM with one shifted window of the
// buffer per k (microkernel.h), vectorised along f. Columns ow >= W_out are computed and
// dropped (qw_max / lw of the work: 3-12% on the suite's shapes). The channels-innermost
// passes (forward_channels_last.cpp, grad_weight_channels_last.cpp) use the same tiles
// with the channel as the fastest index.
#pragma once

#include "common.h"
#include "microkernel.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
// Bytes of phase planes (or shifted grad_output) one thread works on at a time: well
// inside a 1 MB L2 next to the weight block.
constexpr int64_t kTileBytes = 384 * 1024;

// Where a tile's phase planes and positions lie; see the comment at the top.
struct Layout {
  const Geometry& g;
  int64_t sh, sw, qh_max, qw_max, lw;
  int64_t th = 1, rows = 1, plane = 1, n = kLanes;
  // Output depths per tile, and the padded input depths ("slots") they read: a tile of
  // several depths copies each input plane once instead of once per depth tap.
  int64_t td = 1, slots = 1;

  explicit Layout(const Geometry& geo) : g(geo) {
    sh = g.stride[1];
    sw = g.stride[2];
    qh_max = (g.kernel[1] - 1) * g.dilation[1] / sh;
    qw_max = (g.kernel[2] - 1) * g.dilation[2] / sw;
    lw = g.out[2] + qw_max;
    set_depths(1);
  }
  void set_depths(int64_t depths) {
    td = std::clamp<int64_t>(depths, 1, g.out[0]);
    td = ceil_div(g.out[0], ceil_div(g.out[0], td));
    slots = (td - 1) * g.stride[0] + (g.kernel[0] - 1) * g.dilation[0] + 1;
  }
  int64_t depth_blocks() const { return ceil_div(g.out[0], td); }
  // Whether some depth of a tile with `depths` output depths reads slot `slot`.
  bool slot_used(int64_t slot, int64_t depths) const {
    for (int64_t i = 0; i < g.kernel[0]; ++i) {
      const int64_t r = slot - i * g.dilation[0];
      if (r >= 0 && r % g.stride[0] == 0 && r / g.stride[0] < depths) return true;
    }
    return false;
  }
  // Buffer offset between the windows of consecutive output depths of a tile.
  int64_t depth_step() const { return g.stride[0] * sh * sw * plane; }
  // Bands of equal height, at most `band` rows.
  void set_band(int64_t band) {
    th = std::clamp<int64_t>(band, 1, g.out[1]);
    th = ceil_div(g.out[1], ceil_div(g.out[1], th));
    rows = th + qh_max;
    plane = rows * lw;
    n = round_up(th * lw, kLanes);
  }
  int64_t planes_per_channel() const { return slots * sh * sw; }
  // Bytes of the phase planes of `channels` channels.
  int64_t planes_bytes(int64_t channels, int64_t elem) const {
    return channels * planes_per_channel() * plane * elem;
  }
  // Grows the output depths per tile while fits(layout with that many) holds. Only for
  // bands of whole planes, where depths are the remaining way to make tiles larger.
  template <typename Fits>
  void grow_depths(Fits&& fits) {
    for (int64_t depths = 2; depths <= g.out[0]; ++depths) {
      Layout t = *this;
      t.set_depths(depths);
      if (!fits(t)) break;
      set_depths(depths);
    }
  }
  // Elements of the phase planes of `channels` channels, with the tail the last shifted
  // window reads past its plane.
  int64_t buffer_size(int64_t channels) const {
    return channels * channel_stride() + lw + 2 * kLanes;
  }
  // Bytes of phase planes per output row of the band, per channel.
  int64_t row_bytes(int64_t elem) const { return planes_per_channel() * lw * elem; }
  int64_t bands() const { return ceil_div(g.out[1], th); }
  // Output rows of the band starting at oh0 (the last one may be shorter) and the
  // positions computed for it.
  int64_t band_rows(int64_t oh0) const { return std::min(th, g.out[1] - oh0); }
  int64_t positions(int64_t band_rows) const { return round_up(band_rows * lw, kLanes); }

  int64_t phase_h(int64_t j) const { return (j * g.dilation[1]) % sh; }
  int64_t phase_w(int64_t l) const { return (l * g.dilation[2]) % sw; }
  int64_t shift(int64_t j, int64_t l) const {
    return (j * g.dilation[1] / sh) * lw + (l * g.dilation[2] / sw);
  }
  // Elements between the planes of consecutive channels. The extra kLanes keep it off
  // multiples of 4 KB, where the channels_last copy, writing every channel's plane in
  // turn, would land all its stores in one cache set.
  int64_t channel_stride() const { return planes_per_channel() * plane + kLanes; }
  // Offset of phase plane (c, slot, rh, rw) in the buffer.
  int64_t plane_offset(int64_t c, int64_t slot, int64_t rh, int64_t rw) const {
    return c * channel_stride() + ((slot * sh + rh) * sw + rw) * plane;
  }
  // Offset of tap (c, i, j, l)'s window in the buffer, for the tile's first depth.
  int64_t tap_offset(int64_t c, int64_t i, int64_t j, int64_t l) const {
    return plane_offset(c, i * g.dilation[0], phase_h(j), phase_w(l)) + shift(j, l);
  }
  // tap_offset of every (c, i, j, l) for `channels` channels, in weight order.
  std::vector<int64_t> tap_offsets(int64_t channels) const {
    std::vector<int64_t> offs;
    offs.reserve(channels * g.kernel_volume());
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < g.kernel[0]; ++i)
        for (int64_t j = 0; j < g.kernel[1]; ++j)
          for (int64_t l = 0; l < g.kernel[2]; ++l) offs.push_back(tap_offset(c, i, j, l));
    return offs;
  }
};

// Input index of every phase-plane column: col[rw * lw + t] (-1: a zero), and the
// columns [lo[rw], hi[rw]) that read index t * sw + rw - pad directly.
struct ColumnMap {
  std::vector<int64_t> col, lo, hi;
  int64_t all_lo = 0, all_hi = 0;  // [all_lo, all_hi): inside [lo[rw], hi[rw]) for every rw
  explicit ColumnMap(const Layout& L) {
    const Geometry& g = L.g;
    col.resize(L.sw * L.lw);
    lo.assign(L.sw, 0);
    hi.assign(L.sw, 0);
    for (int64_t rw = 0; rw < L.sw; ++rw) {
      bool seen = false;
      for (int64_t t = 0; t < L.lw; ++t) {
        const int64_t q = t * L.sw + rw - g.pad_before[2];
        col[rw * L.lw + t] = source_index(q, g.in[2], g.pad_before[2], g.pad_after[2], g.mode[2]);
        if (q >= 0 && q < g.in[2]) {
          if (!seen) lo[rw] = t;
          seen = true;
          hi[rw] = t + 1;
        }
      }
    }
    all_lo = *std::max_element(lo.begin(), lo.end());
    all_hi = std::max(all_lo, *std::min_element(hi.begin(), hi.end()));
  }
};
// n items cut into the fewest blocks of at most `most`, sizes differing by at most one
// (a short last block would run the micro-kernel at a poor FMA-to-load ratio).
struct Blocks {
  int64_t count, base, extra;
  Blocks(int64_t n, int64_t most)
      : count(ceil_div(n, most)), base(n / std::max<int64_t>(count, 1)),
        extra(n % std::max<int64_t>(count, 1)) {}
  int64_t start(int64_t b) const { return b * base + std::min(b, extra); }
  int64_t size(int64_t b) const { return base + (b < extra ? 1 : 0); }
  int64_t of(int64_t i) const {  // the block holding item i
    const int64_t big = extra * (base + 1);
    return i < big ? i / (base + 1) : extra + (i - big) / base;
  }
};

// An input element as the accumulation type; with Sanitize, NaN and Inf read as zero
// (their terms are added exactly afterwards, see nonfinite.h).
template <bool Sanitize, typename A, typename T>
inline A load(T v) {
  const A a = static_cast<A>(v);
  if constexpr (Sanitize) return std::isfinite(a) ? a : A(0);
  return a;
}

inline int64_t row_source(const Layout& L, int64_t oh0, int64_t t_row, int64_t rh) {
  const Geometry& g = L.g;
  return source_index((oh0 + t_row) * L.sh + rh - g.pad_before[1], g.in[1], g.pad_before[1],
                      g.pad_after[1], g.mode[1]);
}

// The forward tiles: bands as tall as the budget allows (elem bytes per channel element of
// the planes), then shorter while there are too few tiles; whole planes take several
// depths per tile while the budget and the tile count allow (thin layers, where copying
// the input is a large share of the work).
inline Layout forward_layout(const Geometry& g, int64_t channels, int64_t elem,
                             int64_t threads = at::get_num_threads(),
                             int64_t min_positions = 0) {
  Layout L(g);
  int64_t band = std::max(ceil_div(min_positions, L.lw),
                          kTileBytes / (channels * L.row_bytes(elem)) - L.qh_max);
  const int64_t planes = g.batch * g.groups * g.out[0];
  const int64_t want = 4 * threads;
  if (planes * ceil_div(g.out[1], std::max<int64_t>(band, 1)) < want)
    band = std::min(band, ceil_div(g.out[1], ceil_div(want, planes)));
  L.set_band(band);
  if (L.th == g.out[1]) {
    const int64_t per_plane = planes / g.out[0];
    L.grow_depths([&](const Layout& t) {
      return t.planes_bytes(channels, elem) <= kTileBytes && per_plane * t.depth_blocks() >= want;
    });
  }
  return L;
}

// The buffer distance between the windows of kernel columns l and l + 1 when it is the same
// for every even l (stride 1 or 2 along w: the next column, or the other phase plane), else
// 0: then taps (l, l + 1) of a channel can be the two halves of one vdpbf16ps operand, a
// plane whose element f holds (x[f], x[f + step]).
inline int64_t tap_pair_step(const Layout& L) {
  const int64_t kw = L.g.kernel[2];
  if (kw < 2) return 0;
  const int64_t step = L.tap_offset(0, 0, 0, 1) - L.tap_offset(0, 0, 0, 0);
  for (int64_t l = 2; l + 1 < kw; l += 2)
    if (L.tap_offset(0, 0, 0, l + 1) - L.tap_offset(0, 0, 0, l) != step) return 0;
  return step > 0 ? step : 0;
}

// A forward task: sample n, group grp, `depths` output depths from od0, the band of th
// output rows from oh0 (np positions computed).
struct ForwardTile {
  int64_t n, grp, od0, depths, oh0, th, np;
  ForwardTile(const Layout& L, int64_t task) {
    const int64_t bands = L.bands(), dblocks = L.depth_blocks();
    od0 = (task / bands) % dblocks * L.td;
    grp = (task / (bands * dblocks)) % L.g.groups;
    n = task / (bands * dblocks * L.g.groups);
    depths = std::min(L.td, L.g.out[0] - od0);
    oh0 = (task % bands) * L.th;
    th = L.band_rows(oh0);
    np = L.positions(th);
  }
  static int64_t count(const Layout& L) {
    return L.g.batch * L.g.groups * L.depth_blocks() * L.bands();
  }
};

// tap_offset of every tap, in weight order, for planes with ldb elements per position.
inline std::vector<int64_t> tap_offsets(const Layout& L, int64_t ldb) {
  std::vector<int64_t> offs = L.tap_offsets(1);
  for (int64_t& o : offs) o *= ldb;
  return offs;
}

}  // namespace torchconv3d::cpu
