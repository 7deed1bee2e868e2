// CPU convolution as a tiled implicit GEMM, for any groups, kernel, stride, dilation and
// padding mode.
//
// Output positions are cut into tiles. For one tile, a small im2col block (rows = input
// channel x kernel tap, columns = the tile's positions) is gathered straight from the
// input through a table of element offsets, and a GEMM multiplies it with the weight.
// The block's size is fixed by a byte budget and the row count, never by the volume.
//
// Parallel splits are chosen so that no two threads write the same element:
//   forward      over (sample, tile)                 - each output element written once
//   grad_input   over (sample, group, channel block) - a thread owns whole input channels
//   grad_weight  over (group, block of rows of K)    - a thread owns whole weight columns
// and every reduction runs in an order fixed by the shape alone, so results do not change
// from run to run or with the thread count.
#include "common.h"
#include "kernels.h"

#include <ATen/Parallel.h>

#include <type_traits>

namespace torchconv3d::cpu {
namespace {

// For each tap and each position of the tile, the offset (in elements, for a volume with
// spatial strides s) of the input element read, or -1: off[tap * n_t + t].
void tap_offsets(const Geometry& g, const TapTables& tt, int64_t p0, int64_t p1,
                 const std::array<int64_t, 3>& s, int64_t* off) {
  const int64_t n_t = p1 - p0;
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  for_each_position(g, p0, p1, [&](int64_t t, int64_t od, int64_t oh, int64_t ow) {
    const int64_t* td = &tt.index[0][od * kd];
    const int64_t* th = &tt.index[1][oh * kh];
    const int64_t* tw = &tt.index[2][ow * kw];
    int64_t tap = 0;
    for (int64_t i = 0; i < kd; ++i)
      for (int64_t j = 0; j < kh; ++j)
        for (int64_t l = 0; l < kw; ++l, ++tap)
          off[tap * n_t + t] = (td[i] < 0 || th[j] < 0 || tw[l] < 0)
                                   ? -1
                                   : td[i] * s[0] + th[j] * s[1] + tw[l] * s[2];
  });
}

// Offsets of the tile's positions in an output-shaped volume with spatial strides s.
void position_offsets(const Geometry& g, int64_t p0, int64_t p1,
                      const std::array<int64_t, 3>& s, int64_t* off) {
  for_each_position(g, p0, p1, [&](int64_t t, int64_t od, int64_t oh, int64_t ow) {
    off[t] = od * s[0] + oh * s[1] + ow * s[2];
  });
}

// A stretch of one tap's row of the tile: positions [t0, t0 + len) read elements
// src, src + step, ...; src < 0 marks a stretch of padding zeros. Most stretches are a
// whole output row, so the copy loops below run long and vectorise (step 1).
struct Run {
  int64_t t0, len, src, step;
};

// Cuts each tap's offsets (from tap_offsets) into runs; tap k owns
// runs[first[k] .. first[k + 1]).
void offsets_to_runs(const int64_t* off, int64_t kvol, int64_t n_t, std::vector<Run>& runs,
                     std::vector<int64_t>& first) {
  runs.clear();
  first.resize(kvol + 1);
  for (int64_t k = 0; k < kvol; ++k) {
    first[k] = static_cast<int64_t>(runs.size());
    const int64_t* o = off + k * n_t;
    for (int64_t t = 0; t < n_t;) {
      Run r{t, 1, o[t], 0};
      if (o[t] < 0) {
        while (t + r.len < n_t && o[t + r.len] < 0) ++r.len;
      } else if (t + 1 < n_t && o[t + 1] >= 0) {
        r.step = o[t + 1] - o[t];
        while (t + r.len < n_t && o[t + r.len] >= 0 && o[t + r.len] - o[t + r.len - 1] == r.step)
          ++r.len;
      }
      runs.push_back(r);
      t += r.len;
    }
  }
  first[kvol] = static_cast<int64_t>(runs.size());
}

struct TileRuns {
  std::vector<Run> runs;
  std::vector<int64_t> first;
};

// Rows [r0, r1) of the im2col block of one sample and group; row r is channel r / kvol,
// tap r % kvol. `x` points at the group's first channel.
template <typename T, typename A>
void im2col_rows(const T* x, int64_t channel_stride, const TileRuns& tr, int64_t kvol,
                 int64_t n_t, int64_t r0, int64_t r1, A* cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xc = x + (r / kvol) * channel_stride;
    const int64_t tap = r % kvol;
    A* dst = cols + (r - r0) * n_t;
    for (int64_t k = tr.first[tap]; k < tr.first[tap + 1]; ++k) {
      const Run& run = tr.runs[k];
      A* d = dst + run.t0;
      if (run.src < 0) {
        std::fill(d, d + run.len, A(0));
      } else if (run.step == 1) {
        const T* src = xc + run.src;
        for (int64_t u = 0; u < run.len; ++u) d[u] = static_cast<A>(src[u]);
      } else {
        for (int64_t u = 0; u < run.len; ++u) d[u] = static_cast<A>(xc[run.src + u * run.step]);
      }
    }
  }
}

// The adjoint of im2col_rows: adds rows [0, rows) of `cols` into the volume `gx`, whose
// first channel is the block's first.
template <typename A, typename T>
void col2im_rows(const A* cols, const TileRuns& tr, int64_t kvol, int64_t n_t, int64_t rows,
                 T* gx, int64_t channel_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    T* gc = gx + (r / kvol) * channel_stride;
    const int64_t tap = r % kvol;
    const A* src = cols + r * n_t;
    for (int64_t k = tr.first[tap]; k < tr.first[tap + 1]; ++k) {
      const Run& run = tr.runs[k];
      if (run.src < 0) continue;
      const A* s = src + run.t0;
      if (run.step == 1) {
        T* d = gc + run.src;
        for (int64_t u = 0; u < run.len; ++u) d[u] += s[u];
      } else {
        for (int64_t u = 0; u < run.len; ++u) gc[run.src + u * run.step] += s[u];
      }
    }
  }
}

// grad_output at one sample, `rows` channels from `y`, positions [p0, p1), as a
// [rows x n_t] matrix: a view of the tensor itself when it has the accumulation type and
// its positions flatten to one stride, else a converted copy in `buf`.
template <typename T, typename A>
Mat<A> tile_of(const T* y, int64_t channel_stride, std::optional<int64_t> flat, const Geometry& g,
               const std::array<int64_t, 3>& s, int64_t p0, int64_t p1, int64_t rows, int64_t* pos,
               A* buf) {
  const int64_t n_t = p1 - p0;
  if constexpr (std::is_same_v<T, A>) {
    if (flat) return {y + p0 * *flat, channel_stride, *flat};
  }
  position_offsets(g, p0, p1, s, pos);
  for (int64_t c = 0; c < rows; ++c) {
    const T* yc = y + c * channel_stride;
    for (int64_t t = 0; t < n_t; ++t) buf[c * n_t + t] = static_cast<A>(yc[pos[t]]);
  }
  return {buf, n_t, 1};
}

// Positions per tile: the im2col block (rows x tp elements) stays near `budget` bytes so
// that it sits in L2 beside the GEMM operands. Depends on the shape only.
int64_t tile_positions(int64_t positions, int64_t rows, int64_t elem_size,
                       int64_t budget = 512 * 1024) {
  int64_t tp = budget / (std::max<int64_t>(rows, 1) * elem_size);
  tp = std::clamp<int64_t>(tp, 32, 2048);
  tp = (tp + 15) / 16 * 16;
  return std::max<int64_t>(1, std::min(tp, positions));
}

template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor& bias, at::Tensor& output) {
  using acc_t = at::opmath_type<T>;
  const at::Tensor w = weight_as_acc<T>(weight);
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const acc_t* wp = w.const_data_ptr<acc_t>();
  const T* bp = b.defined() ? b.const_data_ptr<T>() : nullptr;
  const T* xp = input.const_data_ptr<T>();
  T* yp = output.mutable_data_ptr<T>();

  const int64_t P = g.out_volume(), K = g.gemm_k(), kvol = g.kernel_volume();
  const int64_t cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const auto xs = spatial_strides(input);
  const auto ys = spatial_strides(output);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);
  // GEMM straight into the output when it has the accumulation type and flat positions.
  const std::optional<int64_t> yflat =
      std::is_same_v<T, acc_t> ? flat_position_stride(output) : std::nullopt;
  const TapTables tt(g);

  // Smaller tiles when there are too few to keep every thread busy. Each output element
  // stays one dot product over all of K, so the tiling does not enter any sum.
  int64_t tp = tile_positions(P, K, sizeof(acc_t));
  const int64_t want = 4 * at::get_num_threads();
  if (g.batch * ceil_div(P, tp) < want) {
    tp = std::min(P, std::max<int64_t>(16, ceil_div(g.batch * P, want)));
  }
  const int64_t ntiles = ceil_div(P, tp);

  at::parallel_for(0, g.batch * ntiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_off, h_pos, h_cols, h_acc;
    int64_t* off = scratch<int64_t>(h_off, kvol * tp);
    int64_t* pos = scratch<int64_t>(h_pos, tp);
    acc_t* cols = scratch<acc_t>(h_cols, K * tp);
    acc_t* acc = yflat ? nullptr : scratch<acc_t>(h_acc, cout_g * tp);
    TileRuns runs;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / ntiles;
      const int64_t p0 = (task % ntiles) * tp, p1 = std::min(P, p0 + tp), n_t = p1 - p0;
      tap_offsets(g, tt, p0, p1, xs, off);
      offsets_to_runs(off, kvol, n_t, runs.runs, runs.first);
      if (!yflat) position_offsets(g, p0, p1, ys, pos);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        im2col_rows(xp + n * xsn + grp * cin_g * xsc, xsc, runs, kvol, n_t, 0, K, cols);
        const Mat<acc_t> wg{wp + grp * cout_g * K, K, 1}, cm{cols, n_t, 1};
        T* y0 = yp + n * ysn + grp * cout_g * ysc;
        if (yflat) {
          acc_t* yt = reinterpret_cast<acc_t*>(y0) + p0 * *yflat;
          gemm(cout_g, n_t, K, wg, cm, acc_t(0), yt, ysc, *yflat);
          if (bp) {
            const int64_t fs = *yflat;
            for (int64_t co = 0; co < cout_g; ++co) {
              const acc_t bc = static_cast<acc_t>(bp[grp * cout_g + co]);
              acc_t* yc = yt + co * ysc;
              if (fs == 1) {  // contiguous output: a loop the compiler vectorises
                for (int64_t t = 0; t < n_t; ++t) yc[t] += bc;
              } else {
                for (int64_t t = 0; t < n_t; ++t) yc[t * fs] += bc;
              }
            }
          }
        } else {
          gemm(cout_g, n_t, K, wg, cm, acc_t(0), acc, n_t, 1);
          for (int64_t co = 0; co < cout_g; ++co) {
            const acc_t bc = bp ? static_cast<acc_t>(bp[grp * cout_g + co]) : acc_t(0);
            T* yc = y0 + co * ysc;
            const acc_t* a = acc + co * n_t;
            for (int64_t t = 0; t < n_t; ++t) yc[pos[t]] = static_cast<T>(a[t] + bc);
          }
        }
      }
    }
  });
}

template <typename T>
void grad_input_kernel(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& weight, at::Tensor& grad_input) {
  using acc_t = at::opmath_type<T>;
  // Float and double add straight into grad_input (which arrives zeroed); the half types
  // sum in a float plane per channel, written once at the end.
  constexpr bool direct = std::is_same_v<acc_t, T>;
  const at::Tensor w = weight_as_acc<T>(weight);
  const acc_t* wp = w.const_data_ptr<acc_t>();
  const T* gyp = grad_output.const_data_ptr<T>();
  T* gxp = grad_input.mutable_data_ptr<T>();

  const int64_t P = g.out_volume(), V = g.in_volume(), K = g.gemm_k(), kvol = g.kernel_volume();
  const int64_t cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const auto gys = spatial_strides(grad_output);
  const auto gxs = spatial_strides(grad_input);
  const std::array<int64_t, 3> dense = {g.in[1] * g.in[2], g.in[2], 1};
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const int64_t gxsn = grad_input.stride(0), gxsc = grad_input.stride(1);
  const auto gyflat = flat_position_stride(grad_output);
  const TapTables tt(g);

  // Channel blocks as large as possible (a taller GEMM, fewer repeats of the per-tile
  // tables) while every thread still gets a block.
  const int64_t units = g.batch * g.groups;
  int64_t cb = direct ? ceil_div(cin_g, ceil_div(at::get_num_threads(), units)) : 1;
  cb = std::min(cb, cin_g);
  const int64_t nblocks = ceil_div(cin_g, cb);
  const int64_t tp = tile_positions(P, cb * kvol, sizeof(acc_t));

  at::parallel_for(0, units * nblocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_off, h_pos, h_gy, h_cols, h_plane;
    int64_t* off = scratch<int64_t>(h_off, kvol * tp);
    int64_t* pos = scratch<int64_t>(h_pos, tp);
    acc_t* gy_buf = scratch<acc_t>(h_gy, cout_g * tp);
    acc_t* cols = scratch<acc_t>(h_cols, cb * kvol * tp);
    acc_t* plane = direct ? nullptr : scratch<acc_t>(h_plane, cb * V);
    TileRuns runs;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (g.groups * nblocks);
      const int64_t grp = (task / nblocks) % g.groups;
      const int64_t c0 = (task % nblocks) * cb, c1 = std::min(cin_g, c0 + cb);
      const int64_t rows = (c1 - c0) * kvol;
      T* gx_block = gxp + n * gxsn + (grp * cin_g + c0) * gxsc;
      if (!direct) std::fill(plane, plane + (c1 - c0) * V, acc_t(0));
      for (int64_t p0 = 0; p0 < P; p0 += tp) {
        const int64_t p1 = std::min(P, p0 + tp), n_t = p1 - p0;
        tap_offsets(g, tt, p0, p1, direct ? gxs : dense, off);
        offsets_to_runs(off, kvol, n_t, runs.runs, runs.first);
        const Mat<acc_t> gy = tile_of<T, acc_t>(gyp + n * gysn + grp * cout_g * gysc, gysc,
                                                gyflat, g, gys, p0, p1, cout_g, pos, gy_buf);
        // cols[rows x t] = W_g[:, rows]^T gy: W_g is [cout_g x K], row stride K.
        const Mat<acc_t> wt{wp + grp * cout_g * K + c0 * kvol, 1, K};
        gemm(rows, n_t, cout_g, wt, gy, acc_t(0), cols, n_t, 1);
        if constexpr (direct) {
          col2im_rows(cols, runs, kvol, n_t, rows, gx_block, gxsc);
        } else {
          col2im_rows(cols, runs, kvol, n_t, rows, plane, V);
        }
      }
      if constexpr (!direct) {
        for (int64_t c = 0; c < c1 - c0; ++c)
          store_plane(g, plane + c * V, gx_block + c * gxsc, gxs);
      }
    }
  });
}

template <typename T>
void grad_weight_kernel(const Geometry& g, const at::Tensor& grad_output,
                        const at::Tensor& input, at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<T>;
  const T* gyp = grad_output.const_data_ptr<T>();
  const T* xp = input.const_data_ptr<T>();
  T* gwp = grad_weight.mutable_data_ptr<T>();

  const int64_t P = g.out_volume(), K = g.gemm_k(), kvol = g.kernel_volume();
  const int64_t cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const auto xs = spatial_strides(input);
  const auto gys = spatial_strides(grad_output);
  const int64_t xsn = input.stride(0), xsc = input.stride(1);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  const auto gyflat = flat_position_stride(grad_output);
  const TapTables tt(g);

  // The sum over (sample, tile) runs in order, one tile at a time; within a tile the
  // threads split the weight's columns (blocks of K rows), so partial sums of different
  // threads never meet. The tile size depends on the shape alone, so every element's sum
  // order - and the result - is the same whatever the thread count.
  const int64_t threads = at::get_num_threads();
  const int64_t rb = ceil_div(K, std::max<int64_t>(1, ceil_div(2 * threads, g.groups)));
  const int64_t nblocks = ceil_div(K, rb);
  const int64_t tp = tile_positions(P, K, sizeof(acc_t));

  at::Tensor h_acc, h_off, h_pos, h_gy;
  acc_t* acc = scratch<acc_t>(h_acc, g.out_channels * K);  // [C_out x K], weight-sized
  std::fill(acc, acc + g.out_channels * K, acc_t(0));
  int64_t* off = scratch<int64_t>(h_off, kvol * tp);
  int64_t* pos = scratch<int64_t>(h_pos, tp);
  acc_t* gy_buf = scratch<acc_t>(h_gy, g.out_channels * tp);
  std::vector<at::Tensor> h_cols(threads);
  TileRuns runs;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t p0 = 0; p0 < P; p0 += tp) {
      const int64_t p1 = std::min(P, p0 + tp), n_t = p1 - p0;
      tap_offsets(g, tt, p0, p1, xs, off);
      offsets_to_runs(off, kvol, n_t, runs.runs, runs.first);
      const Mat<acc_t> gy_all = tile_of<T, acc_t>(gyp + n * gysn, gysc, gyflat, g, gys, p0, p1,
                                                  g.out_channels, pos, gy_buf);
      at::parallel_for(0, g.groups * nblocks, 1, [&](int64_t begin, int64_t end) {
        acc_t* cols = scratch<acc_t>(h_cols[at::get_thread_num()], rb * n_t);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t grp = task / nblocks;
          const int64_t r0 = (task % nblocks) * rb, r1 = std::min(K, r0 + rb), nr = r1 - r0;
          im2col_rows(xp + n * xsn + grp * cin_g * xsc, xsc, runs, kvol, n_t, r0, r1, cols);
          const Mat<acc_t> gy{gy_all.ptr + grp * cout_g * gy_all.s0, gy_all.s0, gy_all.s1};
          // acc[co x r] += gy[co x t] cols[r x t]^T
          gemm(cout_g, nr, n_t, gy, Mat<acc_t>{cols, 1, n_t}, acc_t(1),
               acc + grp * cout_g * K + r0, K, 1);
        }
      });
    }
  }
  // Weight element (c_out, c_in, i, j, l) is column c_in * kvol + tap of K.
  const auto ws = grad_weight.strides();
  at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      for (int64_t r = 0; r < K; ++r) {
        const int64_t ci = r / kvol, tap = r % kvol;
        const int64_t i = tap / (g.kernel[1] * g.kernel[2]);
        const int64_t j = (tap / g.kernel[2]) % g.kernel[1];
        const int64_t l = tap % g.kernel[2];
        gwp[co * ws[0] + ci * ws[1] + i * ws[2] + j * ws[3] + l * ws[4]] =
            static_cast<T>(acc[co * K + r]);
      }
    }
  });
}

}  // namespace

void gemm_forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output) {
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_gemm_forward",
                [&] { forward_kernel<scalar_t>(g, input, weight, bias, output); });
}

void gemm_grad_input(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                     at::Tensor& grad_input) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_gemm_grad_input",
                [&] { grad_input_kernel<scalar_t>(g, grad_output, weight, grad_input); });
}

void gemm_grad_weight(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                      at::Tensor& grad_weight) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_gemm_grad_weight",
                [&] { grad_weight_kernel<scalar_t>(g, grad_output, input, grad_weight); });
}

}  // namespace torchconv3d::cpu
