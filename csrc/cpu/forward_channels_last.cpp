// Forward for channels_last tensors with the channels innermost all the way through.
//
// The planar passes (tile_layout.h) give every channel its own phase plane and put
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
// instead (depthwise_cl) and read the input where it lies: each channel reads only itself.
// bfloat16 with AVX512-BF16 keeps the input in bfloat16 and reads channel pairs as the
// 32-bit operands of vdpbf16ps (Bf16Kernels::gemm_cl): the pairs are adjacent in NDHWC
// already, so packing stays a copy.
#include "kernels.h"
#include "packing.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {
namespace {

// Bytes of GEMM results a thread holds before storing them: a chunk of positions x the
// padded output channels, kept in L1/L2 between the micro-kernel and the store.
constexpr int64_t kResultBytes = 192 * 1024;

// Positions per result chunk: kResultBytes of cols results each, a multiple of the
// micro-kernel's position blocks (6, 8, 12).
inline int64_t result_chunk(int64_t cols, int64_t elem) {
  return std::max<int64_t>(24, kResultBytes / (cols * elem) / 24 * 24);
}

// (tap, channel) terms per GEMM call: the weights one sweep over positions reads (this many
// x 64 output channels, 32 KB in float) stay in L1; the partial sums go back to the
// result chunk between calls.
constexpr int64_t kTermBlock = 128;

// Calls gemm(tap0, taps, channel0, channels, accumulate) over blocks of about kTermBlock
// terms that cover taps [tap_begin, tap_end) x ce, in an order fixed by the shape.
template <typename Gemm>
void term_blocks(int64_t tap_begin, int64_t tap_end, int64_t ce, Gemm&& gemm) {
  const int64_t eb = std::min(ce, kTermBlock);
  const int64_t tb = std::clamp<int64_t>(kTermBlock / ce, 1, tap_end - tap_begin);
  for (int64_t t0 = tap_begin; t0 < tap_end; t0 += tb)
    for (int64_t e0 = 0; e0 < ce; e0 += eb)
      gemm(t0, std::min(tb, tap_end - t0), e0, std::min(eb, ce - e0),
           t0 > tap_begin || e0 > 0);
}

// The layer's taps [from, to) a GEMM sums (kd-major, so live_kernel_depths is a range).
struct TapRange {
  int64_t from, to;
};

// gemm_cl's weights: per group, panels of kPanel output channels (the last one narrower),
// each [tap][channel][panel width], so the weights of a block of terms for one panel are
// contiguous. (With whole rows of output channels, a 1 KB row stride would crowd the block
// into a few L1 sets.)
constexpr int64_t kPanel = 64;
struct Panels {
  int64_t cols;      // padded output channels
  int64_t channels;  // the layer's channels (or pairs) per tap
  int64_t taps, ce;  // the terms as gemm_cl walks them: taps x ce
  // With few channels per tap, each (tap, channel) is a term of its own (ce = 1): the
  // micro-kernel's channel loop would otherwise run 1-7 times per tap.
  Panels(int64_t cols_, int64_t kvol, int64_t channels_)
      : cols(cols_), channels(channels_), taps(channels_ < 8 ? kvol * channels_ : kvol),
        ce(channels_ < 8 ? 1 : channels_) {}
  // The panels of `groups` groups from value(grp, j, tap, e), the weight of output channel
  // j of the group (zero past out_per_group), in the panels' own order. This runs on every
  // call, before the tiles, so it must not be a serial stretch: tasks are (group, panel,
  // tap) (a panel per task left a one-panel layer's packing, 4% of nnU-Net's 0.6 ms
  // bfloat16 forward, to one thread while the other waited).
  template <typename E, typename Value>
  std::vector<E> pack(int64_t groups, int64_t out_per_group, Value&& value) const {
    std::vector<E> a(groups * taps * ce * cols);
    const int64_t panels = ceil_div(cols, kPanel);
    at::parallel_for(0, groups * panels * taps, ceil_div(taps, 4), [&](int64_t begin,
                                                                         int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t k = task % taps, grp = task / taps / panels;
        const int64_t j0 = task / taps % panels * kPanel;
        const int64_t pw = std::min(kPanel, cols - j0);
        const int64_t live = std::clamp<int64_t>(out_per_group - j0, 0, pw);
        E* dst = a.data() + (grp * cols + j0) * taps * ce + k * ce * pw;
        for (int64_t c = 0; c < ce; ++c, dst += pw) {
          const int64_t tap = ce == 1 ? k / channels : k, e = ce == 1 ? k % channels : c;
          for (int64_t j = 0; j < live; ++j) dst[j] = value(grp, j0 + j, tap, e);
          std::fill(dst + live, dst + pw, E(0));
        }
      }
    });
    return a;
  }
  // The offset of each of gemm_cl's taps from the layer's tap offsets.
  std::vector<int64_t> offsets(const std::vector<int64_t>& tap_offs) const {
    if (ce != 1) return tap_offs;
    std::vector<int64_t> offs;
    for (const int64_t o : tap_offs)
      for (int64_t e = 0; e < channels; ++e) offs.push_back(o + e);
    return offs;
  }
  // c[f * cols + j] for every j, from the tile window b (ldb per position, offs per tap),
  // summing the layer's taps in `range` (not empty).
  template <typename E, typename C, typename GemmCl>
  void run(GemmCl gemm_cl, const E* a, int64_t grp, const E* b, int64_t ldb,
           const int64_t* offs, int64_t n, C* c, TapRange range) const {
    const int64_t per_tap = ce == 1 ? channels : 1;  // gemm_cl's taps per layer tap
    for (int64_t j0 = 0; j0 < cols; j0 += kPanel) {
      const int64_t pw = std::min(kPanel, cols - j0);
      const E* panel = a + (grp * cols + j0) * taps * ce;
      term_blocks(range.from * per_tap, range.to * per_tap, ce,
                  [&](int64_t t0, int64_t tk, int64_t e0, int64_t ek, bool acc) {
        gemm_cl(n, pw, panel + (t0 * ce + e0) * pw, pw, ce * pw, tk, ek, b + e0, ldb,
                offs + t0, c + j0, cols, acc);
      });
    }
  }
};

// Runs the tiles of L (ForwardTile; L.g's groups are the tiles' groups): packs each tile's
// `channels` input channels of its group with row stride ldb (buffer elements of type B),
// then for each output depth and chunk of positions calls
//   gemm(grp, window, ldb, positions, ct, taps)
// ct[f * cols + j] for output channel j of the group, summed over the taps of
// live_kernel_depths(finite_weights),
// and stores ct + bias into the output (out_per_group channels per group).
template <typename T, typename B, typename C, typename Gemm>
void run_tiles(const Layout& L, const at::Tensor& input, int64_t channels, int64_t ldb,
               int64_t cols, const std::vector<C>& bias, bool finite_weights,
               at::Tensor& output, Gemm&& gemm) {
  const Geometry& g = L.g;
  const ColumnMap cm(L);
  const int64_t out_per_group = g.out_per_group();
  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  const int64_t chunk = result_chunk(cols, sizeof(C));

  at::parallel_for(0, ForwardTile::count(L), 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_buf, h_c;
    // The last row's window reads up to qw_max positions past its plane (dead columns).
    const int64_t bufsize = (L.planes_per_channel() * L.plane + L.lw + kLanes) * ldb;
    B* buf = scratch<B>(h_buf, bufsize);
    std::fill(buf, buf + bufsize, B(0));
    C* ct = scratch<C>(h_c, chunk * cols);
    for (int64_t task = begin; task < end; ++task) {
      const ForwardTile t(L, task);
      pack_channels_innermost(L, cm, input_frames<T>(g, input, t.n, t.grp * channels), channels,
                              ldb, xs, t.od0, t.depths, t.oh0, t.th + L.qh_max, buf);
      // Positions up to the last real output of the band's last row.
      const int64_t n = (t.th - 1) * L.lw + g.out[2];
      for (int64_t dl = 0; dl < t.depths; ++dl) {
        const B* window = buf + dl * L.depth_step() * ldb;
        T* yd = yp + t.n * ysn + t.grp * out_per_group * ysc + (t.od0 + dl) * ys[0];
        const DepthRange live = live_kernel_depths(g, t.od0 + dl, finite_weights);
        const int64_t per_depth = g.kernel[1] * g.kernel[2];
        for (int64_t f0 = 0; f0 < n; f0 += chunk) {
          const int64_t nf = std::min(chunk, n - f0);
          if (!live.empty()) {
            gemm(t.grp, window + f0 * ldb, ldb, nf, ct,
                 TapRange{live.from * per_depth, live.to * per_depth});
          } else {
            std::fill(ct, ct + nf * cols, C(0));
          }
          // Row by row: the real outputs of each tile row met in [f0, f0 + nf).
          for (int64_t f = f0; f < f0 + nf;) {
            const int64_t t_row = f / L.lw, row_end = std::min(f0 + nf, (t_row + 1) * L.lw);
            T* yr = yd + (t.oh0 + t_row) * ys[1];
            const int64_t ow_end = std::min(row_end - t_row * L.lw, g.out[2]);
            for (int64_t ow = f - t_row * L.lw; ow < ow_end; ++ow)
              store_run(yr + ow * ys[2], ysc, ct + (t_row * L.lw + ow - f0) * cols,
                        bias.data() + t.grp * out_per_group, out_per_group);
            f = row_end;
          }
        }
      }
    }
  });
}

// Pointwise layers (1x1x1, stride 1, no padding) over input positions evenly spaced
// (dense channels_last): the GEMM reads the input where it lies, so there is nothing to
// pack; tasks are (sample, group, chunk of positions). The output may have any strides
// (grad_input_phases.cpp writes every s-th position).
bool pointwise_in_place(const Geometry& g, const at::Tensor& input) {
  if (g.head.frames > 0) return false;  // (positions of two tensors are not evenly spaced)
  for (int d = 0; d < 3; ++d)
    if (g.kernel[d] != 1 || g.stride[d] != 1 || g.pad_before[d] != 0 || g.pad_after[d] != 0)
      return false;
  return input.stride(2) == input.size(3) * input.stride(3) &&
         input.stride(3) == input.size(4) * input.stride(4);
}

template <typename T, typename C, typename Gemm>
void run_pointwise(const Geometry& g, const at::Tensor& input, int64_t cols,
                   const std::vector<C>& bias, at::Tensor& output, Gemm&& gemm) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t positions = g.out[0] * g.out[1] * g.out[2];
  const int64_t chunk = result_chunk(cols, sizeof(C));
  const int64_t chunks = ceil_div(positions, chunk);
  const T* xp = input.const_data_ptr<T>();
  T* yp = output.mutable_data_ptr<T>();
  const int64_t xsn = input.stride(0), xstep = input.stride(4);
  const auto ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  at::parallel_for(0, g.batch * g.groups * chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_c;
    C* ct = scratch<C>(h_c, chunk * cols);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (g.groups * chunks), grp = task / chunks % g.groups;
      const int64_t p0 = task % chunks * chunk, np = std::min(chunk, positions - p0);
      gemm(grp, xp + n * xsn + grp * in_per_group + p0 * xstep, xstep, np, ct,
           TapRange{0, 1});
      // (od, oh, ow) of position p0, then stepped: three divisions per position were a
      // fifth of a 1x1x1 grad_input phase.
      int64_t ow = p0 % g.out[2], oh = p0 / g.out[2] % g.out[1], od = p0 / (g.out[2] * g.out[1]);
      T* y = yp + n * ysn + grp * out_per_group * ysc;
      for (int64_t f = 0; f < np; ++f) {
        store_run(y + od * ys[0] + oh * ys[1] + ow * ys[2], ysc, ct + f * cols,
                  bias.data() + grp * out_per_group, out_per_group);
        if (++ow == g.out[2]) {
          ow = 0;
          if (++oh == g.out[1]) {
            oh = 0;
            ++od;
          }
        }
      }
    }
  });
}

// Dense (and grouped) layers on gemm_cl, in A = float or double.
template <typename T>
void forward_dense(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume();
  const int64_t cols = round_up(out_per_group, kLanes);
  const Layout L = forward_layout(g, in_per_group, sizeof(A));
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
  const A* wp = w.const_data_ptr<A>();
  const Panels P(cols, kvol, in_per_group);
  const std::vector<A> a =
      P.pack<A>(g.groups, out_per_group, [&](int64_t grp, int64_t j, int64_t k, int64_t e) {
        return wp[((grp * out_per_group + j) * in_per_group + e) * kvol + k];
      });
  const bool finite_weights = all_finite(wp, w.numel());
  const std::vector<int64_t> offs = P.offsets(tap_offsets(L, in_per_group));
  auto gemm = [&](int64_t grp, const A* b, int64_t ldb, int64_t n, A* c, TapRange taps) {
    P.run(mk.gemm_cl, a.data(), grp, b, ldb, offs.data(), n, c, taps);
  };
  if constexpr (std::is_same_v<T, A>) {
    if (pointwise_in_place(g, input))
      return run_pointwise<T, A>(g, input, cols, bias_or_zeros<A>(g, bias), output, gemm);
  }
  run_tiles<T, A, A>(L, input, in_per_group, in_per_group, cols, bias_or_zeros<A>(g, bias),
                     finite_weights, output, gemm);
}

// bfloat16 on vdpbf16ps: the tile stays bfloat16 with an even channel count per position
// (a zero after an odd last channel), read as pairs.
void forward_dense_bf16(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& bias, at::Tensor& output, const Bf16Kernels& bk) {
  using T = c10::BFloat16;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume();
  const int64_t pairs = ceil_div(in_per_group, 2), ldb = 2 * pairs;
  const int64_t cols = round_up(out_per_group, kLanes);
  const Layout L = forward_layout(g, ldb, sizeof(T));
  const at::Tensor w = weight.contiguous();
  const T* wp = w.const_data_ptr<T>();
  const Panels P(cols, kvol, pairs);
  const std::vector<uint32_t> a =
      P.pack<uint32_t>(g.groups, out_per_group, [&](int64_t grp, int64_t j, int64_t k, int64_t p) {
        const T* row = wp + (grp * out_per_group + j) * in_per_group * kvol;
        const uint32_t lo = row[2 * p * kvol + k].x;
        const uint32_t hi = 2 * p + 1 < in_per_group ? row[(2 * p + 1) * kvol + k].x : 0u;
        return lo | hi << 16;
      });
  // Offsets in pairs: every element offset is even (ldb is).
  std::vector<int64_t> offs = tap_offsets(L, ldb);
  for (int64_t& o : offs) o /= 2;
  offs = P.offsets(offs);
  // ldb counts bfloat16 elements; even wherever pairs are read.
  const bool finite_weights = all_finite(wp, w.numel());
  auto gemm = [&](int64_t grp, const T* b, int64_t ldb, int64_t n, float* c, TapRange taps) {
    P.run(bk.gemm_cl, a.data(), grp, reinterpret_cast<const uint32_t*>(b), ldb / 2, offs.data(),
          n, c, taps);
  };
  // In place only with whole, 4-byte aligned pairs per group and position: an odd channel
  // count would pair the last channel with its neighbour (a zero weight, but 0 * Inf is NaN).
  const bool whole_pairs = in_per_group % 2 == 0 && input.stride(4) % 2 == 0 &&
                           reinterpret_cast<uintptr_t>(input.const_data_ptr()) % 4 == 0;
  if (whole_pairs && pointwise_in_place(g, input))
    return run_pointwise<T, float>(g, input, cols, bias_or_zeros<float>(g, bias), output, gemm);
  run_tiles<T, T, float>(L, input, in_per_group, ldb, cols, bias_or_zeros<float>(g, bias),
                         finite_weights, output, gemm);
}

// Element distance from base to p; the two may lie in different buffers (the zero row).
template <typename A>
int64_t distance(const A* base, const A* p) {
  return static_cast<int64_t>(reinterpret_cast<intptr_t>(p) - reinterpret_cast<intptr_t>(base)) /
         static_cast<int64_t>(sizeof(A));
}

// Elements of the zero row a depthwise output row reads for taps in padding zeros; past
// this the layer goes to the planar kernels.
constexpr int64_t kMaxZeroRow = int64_t(1) << 24;

int64_t zero_row_size(const Geometry& g, int64_t column_stride) {
  return ((g.out[2] - 1) * g.stride[2] + (g.kernel[2] - 1) * g.dilation[2] + 1) * column_stride +
         round_up(g.in_channels, kLanes);
}

// Depthwise (one input and one output channel per group) straight from the input, no
// packed copy: a position's channels are one vector run, the taps of an output row are
// row offsets, and the padding mode acts through them (a tap reading padding zeros points
// at a row of zeros, so 0 * w is computed as torch computes it). Columns whose taps all
// read inside the row run as one stretch at a fixed step; the few border columns take
// per-tap offsets one position at a time.
// x: the input as the kernel reads it, elements of type B (A, or bfloat16 bits);
// kernel: a depthwise_cl of MicroKernels reading B.
template <typename T, typename B, typename Kernel>
void depthwise_rows(const Geometry& g, const at::Tensor& x, const B* xp, const at::Tensor& weight,
                    const at::Tensor& bias, at::Tensor& output, Kernel kernel) {
  using A = at::opmath_type<T>;
  const int64_t C = g.in_channels, kvol = g.kernel_volume(), ldc = round_up(C, kLanes);
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  const int64_t sw = g.stride[2], dw = g.dilation[2], pw = g.pad_before[2];
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
  const A* wp = w.const_data_ptr<A>();
  std::vector<A> a(kvol * ldc, A(0));  // [tap][channel]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < kvol; ++k) a[k * ldc + c] = wp[c * kvol + k];
  const std::vector<A> bvec = bias_or_zeros<A>(g, bias);

  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(x), ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  // Output columns [lo, hi) read only real input columns, at a fixed step.
  const int64_t lo = std::min(ceil_div(pw, sw), g.out[2]);
  const int64_t top = g.in[2] - 1 + pw - (kw - 1) * dw;
  const int64_t hi = top < 0 ? lo : std::clamp<int64_t>(top / sw + 1, lo, g.out[2]);

  // Border columns' sources along W (-1: padding), the same for every row.
  std::vector<int64_t> border_cols;
  for (int64_t ow = 0; ow < g.out[2]; ++ow) {
    if (ow == lo && hi > lo) ow = hi;
    if (ow >= g.out[2]) break;
    for (int64_t l = 0; l < kw; ++l) border_cols.push_back(tap_source(g, 2, ow, l));
  }

  const int64_t planes = g.batch * g.out[0];
  const int64_t want = 4 * at::get_num_threads();
  const int64_t band = ceil_div(g.out[1], std::min(g.out[1], std::max<int64_t>(1, ceil_div(want, planes))));
  const int64_t bands = ceil_div(g.out[1], band);

  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_zero, h_c;
    const int64_t zsize = zero_row_size(g, xs[2]);
    B* zero = scratch<B>(h_zero, zsize);
    std::fill(zero, zero + zsize, B(0));
    const B* zero_row = zero + pw * xs[2];  // its column -pw is zero[0]
    A* ct = scratch<A>(h_c, g.out[2] * ldc);
    std::vector<const B*> rows(kd * kh);
    std::vector<int64_t> offs(kvol);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands, n = plane / g.out[0], od = plane % g.out[0];
      const int64_t oh0 = (task % bands) * band, oh1 = std::min(g.out[1], oh0 + band);
      const InputFrames<B> frames = input_frames<B>(g, x, n, 0);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        // Where each (i, j) tap row starts; a row of padding zeros reads the zero row.
        for (int64_t i = 0; i < kd; ++i) {
          const int64_t id = tap_source(g, 0, od, i);
          for (int64_t j = 0; j < kh; ++j) {
            const int64_t ih = tap_source(g, 1, oh, j);
            rows[i * kh + j] = id < 0 || ih < 0 ? zero_row : frames.frame(0, id) + ih * xs[1];
          }
        }
        if (hi > lo) {
          for (int64_t r = 0; r < kd * kh; ++r)
            for (int64_t l = 0; l < kw; ++l)
              offs[r * kw + l] = distance(xp, rows[r] + (lo * sw + l * dw - pw) * xs[2]);
          kernel(hi - lo, C, a.data(), ldc, kvol, xp, sw * xs[2], offs.data(), ct + lo * ldc,
                 ldc);
        }
        const int64_t* cols = border_cols.data();
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          if (ow == lo && hi > lo) ow = hi;
          if (ow >= g.out[2]) break;
          for (int64_t r = 0; r < kd * kh; ++r)
            for (int64_t l = 0; l < kw; ++l)
              offs[r * kw + l] = distance(
                  xp, rows[r] == zero_row || cols[l] < 0 ? zero : rows[r] + cols[l] * xs[2]);
          kernel(1, C, a.data(), ldc, kvol, xp, 0, offs.data(), ct + ow * ldc, ldc);
          cols += kw;
        }
        T* yrow = yp + n * ysn + od * ys[0] + oh * ys[1];
        for (int64_t ow = 0; ow < g.out[2]; ++ow)
          store_run(yrow + ow * ys[2], ysc, ct + ow * ldc, bvec.data(), C);
      }
    }
  });
}

template <typename T>
void forward_depthwise(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, at::Tensor& output) {
  using A = at::opmath_type<T>;
  const MicroKernels<A>& mk = micro_kernels(A{});
  if constexpr (std::is_same_v<T, c10::BFloat16>) {  // widened as the kernel loads it
    return depthwise_rows<T>(g, input, reinterpret_cast<const uint16_t*>(input.const_data_ptr()),
                             weight, bias, output, mk.depthwise_cl_bf16);
  }
  // float16 is widened once (input-sized scratch).
  const at::Tensor xa = std::is_same_v<T, A> ? input : input.to(c10::CppTypeToScalarType<A>::value);
  depthwise_rows<T>(g, xa, xa.const_data_ptr<A>(), weight, bias, output, mk.depthwise_cl);
}

}  // namespace

ChannelsLastForward channels_last_forward(const Geometry& g, const at::Tensor& input,
                                          const at::Tensor& output) {
  if (input.stride(1) != 1 || output.stride(1) != 1 || g.in_channels < 2)
    return ChannelsLastForward::None;
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  if (in_per_group == 1 && out_per_group == 1) {
    // (float16 is widened into a copy of the input tensor alone: not a stream's head.)
    const bool widened = input.scalar_type() == at::kHalf && g.head.frames > 0;
    return zero_row_size(g, input.stride(4)) > kMaxZeroRow || widened
               ? ChannelsLastForward::None
               : ChannelsLastForward::Depthwise;
  }
  // Output channels fill the vector lanes: below 3/4 of the lanes in use (small groups) the
  // planar kernels, which vectorise over positions, do better, and with one register of
  // them (a broadcast feeds a single FMA) unless each position sums few terms: then the
  // planar kernels' transposing pack and store cost more than the narrow GEMM loses
  // (VoxelMorph's grad_input phases, 32 -> 16 channels and 1-8 taps, 2 threads: 1.98 ->
  // 1.21 ms bfloat16, 2.70 -> 2.17 ms float32; V-Net 5x5x5 16 -> 16, 2000 terms, loses
  // 20-30%).
  // Below 8 input channels per group (an RGB stem) the planar kernels win too: their
  // copy of a few channels is cheap and their sums run along positions, not a short
  // channel run per tap.
  const int64_t cols = round_up(out_per_group, kLanes);
  const int64_t min_cols = in_per_group * g.kernel_volume() <= 512 ? kLanes : 2 * kLanes;
  if (cols < min_cols || 4 * out_per_group < 3 * cols || in_per_group < 8)
    return ChannelsLastForward::None;
  return ChannelsLastForward::Dense;
}

bool forward_channels_last(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output) {
  switch (channels_last_forward(g, input, output)) {
    case ChannelsLastForward::None:
      return false;
    case ChannelsLastForward::Depthwise:
      TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward_depthwise_cl",
                    [&] { forward_depthwise<scalar_t>(g, input, weight, bias, output); });
      return true;
    case ChannelsLastForward::Dense:
      if (input.scalar_type() == at::kBFloat16) {
        if (const Bf16Kernels* bk = bf16_kernels()) {
          forward_dense_bf16(g, input, weight, bias, output, *bk);
          return true;
        }
      }
      TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward_cl",
                    [&] { forward_dense<scalar_t>(g, input, weight, bias, output); });
      return true;
  }
  return false;
}

}  // namespace torchconv3d::cpu
