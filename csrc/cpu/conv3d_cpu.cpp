// CPU kernels: tiled implicit GEMM.
//
// Output positions are cut into tiles of `tp` positions. For one tile, a small im2col
// block (rows = input channel x kernel tap, columns = the tile's positions) is gathered
// straight from the input through a table of element offsets, and a GEMM multiplies it
// with the weight. The block never grows with the volume: its size is set by the number
// of rows and a fixed byte budget.
//
// The padding mode lives only in `source_index`: a tap that falls outside the volume
// reads the element the mode names (reflect, replicate, circular) or a zero. No padded
// copy of the input exists anywhere.
//
// Parallel splits are chosen so that no two threads write the same element:
//   forward      over (sample, tile)                 - each output element written once
//   grad_input   over (sample, group, channel block) - a thread owns whole input channels
//   grad_weight  over (group, block of rows of K)    - a thread owns whole weight columns
//   grad_bias    over output channels
// and every reduction runs in a fixed order, so results do not change from run to run.
#include "../conv3d.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace torchconv3d {
namespace {

// Input index that output position `o` reads through kernel tap `j` along one
// dimension of size n, or -1 when it reads a padding zero.
int64_t source_index(int64_t o, int64_t j, int64_t n, int64_t stride, int64_t dilation,
                     int64_t pad_before, PadMode mode) {
  const int64_t q = o * stride + j * dilation - pad_before;
  if (q >= 0 && q < n) return q;
  switch (mode) {
    case PadMode::Zeros:
      return -1;
    case PadMode::Reflect:  // the checker guarantees pad < n, so one reflection suffices
      return q < 0 ? -q : 2 * (n - 1) - q;
    case PadMode::Replicate:
      return q < 0 ? 0 : n - 1;
    case PadMode::Circular:  // pad <= n, so one wrap suffices
      return q < 0 ? q + n : q - n;
  }
  return -1;
}

// source_index for every (output position, tap) pair of each dimension: [out * k].
struct TapTables {
  std::array<std::vector<int64_t>, 3> dim;

  explicit TapTables(const Geometry& g) {
    for (int i = 0; i < 3; ++i) {
      dim[i].resize(g.out[i] * g.kernel[i]);
      for (int64_t o = 0; o < g.out[i]; ++o)
        for (int64_t j = 0; j < g.kernel[i]; ++j)
          dim[i][o * g.kernel[i] + j] = source_index(o, j, g.in[i], g.stride[i], g.dilation[i],
                                                     g.pad_before[i], g.mode);
    }
  }
};

// Walks flattened output positions p in [p0, p1) as (od, oh, ow).
template <typename F>
void for_each_position(const Geometry& g, int64_t p0, int64_t p1, F&& f) {
  const int64_t hw = g.out[1] * g.out[2];
  int64_t od = p0 / hw, oh = (p0 % hw) / g.out[2], ow = p0 % g.out[2];
  for (int64_t t = 0; t < p1 - p0; ++t) {
    f(t, od, oh, ow);
    if (++ow == g.out[2]) {
      ow = 0;
      if (++oh == g.out[1]) {
        oh = 0;
        ++od;
      }
    }
  }
}

// For each tap and each position of the tile, the offset (in elements, for a volume with
// spatial strides s) of the input element read, or -1: off[tap * n_t + t].
void tap_offsets(const Geometry& g, const TapTables& tt, int64_t p0, int64_t p1,
                 const std::array<int64_t, 3>& s, int64_t* off) {
  const int64_t n_t = p1 - p0;
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  for_each_position(g, p0, p1, [&](int64_t t, int64_t od, int64_t oh, int64_t ow) {
    const int64_t* td = &tt.dim[0][od * kd];
    const int64_t* th = &tt.dim[1][oh * kh];
    const int64_t* tw = &tt.dim[2][ow * kw];
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

std::array<int64_t, 3> spatial_strides(const at::Tensor& t) {
  return {t.stride(2), t.stride(3), t.stride(4)};
}

// Rows [r0, r1) of the im2col block of one sample and group; row r is channel r / kvol,
// tap r % kvol. `x` points at the group's first channel.
template <typename T, typename A>
void im2col_rows(const T* x, int64_t channel_stride, const int64_t* off, int64_t kvol,
                 int64_t n_t, int64_t r0, int64_t r1, A* cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xc = x + (r / kvol) * channel_stride;
    const int64_t* o = off + (r % kvol) * n_t;
    A* dst = cols + (r - r0) * n_t;
    for (int64_t t = 0; t < n_t; ++t) dst[t] = o[t] >= 0 ? static_cast<A>(xc[o[t]]) : A(0);
  }
}

// The adjoint of im2col_rows: adds rows [r0, r1) of `cols` into the volume `gx`.
template <typename A, typename T>
void col2im_rows(const A* cols, const int64_t* off, int64_t kvol, int64_t n_t, int64_t r0,
                 int64_t r1, T* gx, int64_t channel_stride) {
  for (int64_t r = r0; r < r1; ++r) {
    T* gc = gx + (r / kvol) * channel_stride;
    const int64_t* o = off + (r % kvol) * n_t;
    const A* src = cols + (r - r0) * n_t;
    for (int64_t t = 0; t < n_t; ++t)
      if (o[t] >= 0) gc[o[t]] += src[t];
  }
}

// Channels [c0, c0 + rows) of one sample at the tile's positions, as a dense
// [rows x n_t] block.
template <typename T, typename A>
void gather_tile(const T* y, int64_t channel_stride, const int64_t* pos, int64_t rows,
                 int64_t n_t, A* dst) {
  for (int64_t c = 0; c < rows; ++c) {
    const T* yc = y + c * channel_stride;
    for (int64_t t = 0; t < n_t; ++t) dst[c * n_t + t] = static_cast<A>(yc[pos[t]]);
  }
}

// Row-major C[m x n] = op(A) op(B) + beta C in float or double, through ATen's BLAS
// (MKL on x86 wheels). C is always dense (ldc == n). The half types are converted to
// float while they are gathered, so every product and sum of theirs runs in float.
template <typename A>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const A* a,
          int64_t lda, const A* b, int64_t ldb, A beta, A* c) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  auto view = [&](const A* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    // op(X) is rows x cols; X itself is stored row-major with leading dimension ld.
    return trans ? at::from_blob(const_cast<A*>(p), {rows, cols}, {1, ld}, opts)
                 : at::from_blob(const_cast<A*>(p), {rows, cols}, {ld, 1}, opts);
  };
  at::Tensor ct = at::from_blob(c, {m, n}, opts);
  if (beta == A(0)) {
    at::mm_out(ct, view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b));
  } else {
    ct.addmm_(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, 1);
  }
}

// A per-thread scratch buffer; at::empty gives 64-byte aligned memory.
template <typename T>
T* scratch(at::Tensor& holder, int64_t n) {
  holder = at::empty({std::max<int64_t>(n, 1)},
                     at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return holder.data_ptr<T>();
}

// Positions per tile: the im2col block (rows x tp elements) stays near `budget` bytes, so
// it sits in L2 beside the GEMM operands. Depends only on sizes, never on the thread
// count, so reduction orders are the same on every machine.
int64_t tile_positions(int64_t positions, int64_t rows, int64_t elem_size) {
  constexpr int64_t budget = 512 * 1024;
  int64_t tp = budget / (std::max<int64_t>(rows, 1) * elem_size);
  tp = std::clamp<int64_t>(tp, 32, 2048);
  tp = (tp + 15) / 16 * 16;
  return std::max<int64_t>(1, std::min(tp, positions));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------
template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor& bias, at::Tensor& output) {
  using acc_t = at::opmath_type<T>;
  // [C_out, K] row-major, in the accumulation type.
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
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
  const TapTables tt(g);

  // Smaller tiles when there are too few to keep every thread busy.
  int64_t tp = tile_positions(P, K, sizeof(acc_t));
  const int64_t want = 4 * at::get_num_threads();
  if (g.batch * ceil_div(P, tp) < want) {
    tp = std::max<int64_t>(16, ceil_div(g.batch * P, want));
    tp = std::min(tp, P);
  }
  const int64_t ntiles = ceil_div(P, tp);

  at::parallel_for(0, g.batch * ntiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_off, h_pos, h_cols, h_acc;
    int64_t* off = scratch<int64_t>(h_off, kvol * tp);
    int64_t* pos = scratch<int64_t>(h_pos, tp);
    acc_t* cols = scratch<acc_t>(h_cols, K * tp);
    acc_t* acc = scratch<acc_t>(h_acc, cout_g * tp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / ntiles;
      const int64_t p0 = (task % ntiles) * tp, p1 = std::min(P, p0 + tp), n_t = p1 - p0;
      tap_offsets(g, tt, p0, p1, xs, off);
      position_offsets(g, p0, p1, ys, pos);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        im2col_rows(xp + n * xsn + grp * cin_g * xsc, xsc, off, kvol, n_t, 0, K, cols);
        gemm(false, false, cout_g, n_t, K, wp + grp * cout_g * K, K, cols, n_t, acc_t(0), acc);
        for (int64_t co = 0; co < cout_g; ++co) {
          const int64_t c = grp * cout_g + co;
          const acc_t bias_c = bp ? static_cast<acc_t>(bp[c]) : acc_t(0);
          T* yc = yp + n * ysn + c * ysc;
          const acc_t* a = acc + co * n_t;
          for (int64_t t = 0; t < n_t; ++t) yc[pos[t]] = static_cast<T>(a[t] + bias_c);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
template <typename T>
void grad_input_kernel(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& weight, at::Tensor& grad_input) {
  using acc_t = at::opmath_type<T>;
  // The half types sum their scattered contributions in a float plane per channel; float
  // and double add straight into grad_input (which arrives zeroed).
  constexpr bool direct = std::is_same_v<acc_t, T>;
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
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
  const TapTables tt(g);

  // Channel blocks: as large as possible (a taller GEMM) while leaving enough tasks.
  const int64_t units = g.batch * g.groups;
  int64_t cb = direct ? std::max<int64_t>(1, cin_g / ceil_div(4 * at::get_num_threads(), units))
                      : 1;
  cb = std::min(cb, cin_g);
  const int64_t nblocks = ceil_div(cin_g, cb);
  const int64_t tp = tile_positions(P, cb * kvol, sizeof(acc_t));

  at::parallel_for(0, units * nblocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_off, h_pos, h_gy, h_cols, h_plane;
    int64_t* off = scratch<int64_t>(h_off, kvol * tp);
    int64_t* pos = scratch<int64_t>(h_pos, tp);
    acc_t* gy_tile = scratch<acc_t>(h_gy, cout_g * tp);
    acc_t* cols = scratch<acc_t>(h_cols, cb * kvol * tp);
    acc_t* plane = direct ? nullptr : scratch<acc_t>(h_plane, cb * V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (g.groups * nblocks);
      const int64_t grp = (task / nblocks) % g.groups;
      const int64_t c0 = (task % nblocks) * cb, c1 = std::min(cin_g, c0 + cb);
      const int64_t r0 = c0 * kvol, r1 = c1 * kvol;
      T* gx_block = gxp + n * gxsn + (grp * cin_g + c0) * gxsc;
      if (!direct) std::fill(plane, plane + (c1 - c0) * V, acc_t(0));
      for (int64_t p0 = 0; p0 < P; p0 += tp) {
        const int64_t p1 = std::min(P, p0 + tp), n_t = p1 - p0;
        tap_offsets(g, tt, p0, p1, direct ? gxs : dense, off);
        position_offsets(g, p0, p1, gys, pos);
        gather_tile(gyp + n * gysn + grp * cout_g * gysc, gysc, pos, cout_g, n_t, gy_tile);
        // cols[r x t] = W_g[:, r]^T gy_tile: W_g is [cout_g x K] with row stride K.
        gemm(true, false, r1 - r0, n_t, cout_g, wp + grp * cout_g * K + r0, K, gy_tile, n_t,
             acc_t(0), cols);
        if constexpr (direct) {
          col2im_rows(cols, off, kvol, n_t, 0, r1 - r0, gx_block, gxsc);
        } else {
          col2im_rows(cols, off, kvol, n_t, 0, r1 - r0, plane, V);
        }
      }
      if constexpr (!direct) {
        for (int64_t c = 0; c < c1 - c0; ++c) {
          const acc_t* src = plane + c * V;
          T* dst = gx_block + c * gxsc;
          int64_t v = 0;
          for (int64_t d = 0; d < g.in[0]; ++d)
            for (int64_t h = 0; h < g.in[1]; ++h)
              for (int64_t x = 0; x < g.in[2]; ++x, ++v)
                dst[d * gxs[0] + h * gxs[1] + x * gxs[2]] = static_cast<T>(src[v]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
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
  const TapTables tt(g);

  // Blocks of K rows: a thread owns the weight columns of its block and sums over every
  // sample and tile in order, so no partial sums from different threads ever meet. The
  // block and tile sizes depend on the shape alone, so the sum order (and the result) is
  // the same whatever the thread count.
  const int64_t rb = std::min(K, std::max<int64_t>(2 * kvol, ceil_div(K, 16)));
  const int64_t nblocks = ceil_div(K, rb);
  const int64_t tp = tile_positions(P, rb, sizeof(acc_t));

  at::parallel_for(0, g.groups * nblocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_off, h_pos, h_gy, h_cols, h_acc;
    int64_t* off = scratch<int64_t>(h_off, kvol * tp);
    int64_t* pos = scratch<int64_t>(h_pos, tp);
    acc_t* gy_tile = scratch<acc_t>(h_gy, cout_g * tp);
    acc_t* cols = scratch<acc_t>(h_cols, rb * tp);
    acc_t* acc = scratch<acc_t>(h_acc, cout_g * rb);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t grp = task / nblocks;
      const int64_t r0 = (task % nblocks) * rb, r1 = std::min(K, r0 + rb), nr = r1 - r0;
      std::fill(acc, acc + cout_g * nr, acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t p0 = 0; p0 < P; p0 += tp) {
          const int64_t p1 = std::min(P, p0 + tp), n_t = p1 - p0;
          tap_offsets(g, tt, p0, p1, xs, off);
          position_offsets(g, p0, p1, gys, pos);
          im2col_rows(xp + n * xsn + grp * cin_g * xsc, xsc, off, kvol, n_t, r0, r1, cols);
          gather_tile(gyp + n * gysn + grp * cout_g * gysc, gysc, pos, cout_g, n_t, gy_tile);
          // acc[co x r] += gy_tile[co x t] cols[r x t]^T
          gemm(false, true, cout_g, nr, n_t, gy_tile, n_t, cols, n_t, acc_t(1), acc);
        }
      }
      // Weight element (c_out, c_in, i, j, l) sits at row r = c_in * kvol + tap of K.
      for (int64_t co = 0; co < cout_g; ++co) {
        T* gw_c = gwp + (grp * cout_g + co) * grad_weight.stride(0);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ci = r / kvol, tap = r % kvol;
          const int64_t i = tap / (g.kernel[1] * g.kernel[2]);
          const int64_t j = (tap / g.kernel[2]) % g.kernel[1];
          const int64_t l = tap % g.kernel[2];
          gw_c[ci * grad_weight.stride(1) + i * grad_weight.stride(2) +
               j * grad_weight.stride(3) + l * grad_weight.stride(4)] =
              static_cast<T>(acc[co * nr + (r - r0)]);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
template <typename T>
void grad_bias_kernel(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_bias) {
  // Summed in double: a long float sum over N*D*H*W terms would lose digits.
  const T* gyp = grad_output.const_data_ptr<T>();
  T* gbp = grad_bias.mutable_data_ptr<T>();
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

#define TC3D_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

void forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
             const at::Tensor& bias, at::Tensor& output) {
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_forward_cpu",
                [&] { forward_kernel<scalar_t>(g, input, weight, bias, output); });
}

void grad_input(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                at::Tensor& grad_in) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_input_cpu",
                [&] { grad_input_kernel<scalar_t>(g, grad_output, weight, grad_in); });
}

void grad_weight(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                 at::Tensor& grad_w) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_weight_cpu",
                [&] { grad_weight_kernel<scalar_t>(g, grad_output, input, grad_w); });
}

void grad_bias(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_b) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_grad_bias_cpu",
                [&] { grad_bias_kernel<scalar_t>(g, grad_output, grad_b); });
}

}  // namespace

const DeviceKernels& cpu_kernels() {
  static const DeviceKernels k{&forward, &grad_input, &grad_weight, &grad_bias};
  return k;
}

}  // namespace torchconv3d
