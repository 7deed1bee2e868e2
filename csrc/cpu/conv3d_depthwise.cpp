// Direct CPU loops for convolutions with one input channel per group (depthwise, any
// channel multiplier m = C_out / groups). An implicit GEMM would multiply a single
// weight row per group; walking output rows directly is far cheaper.
//
// Every loop runs over output rows (od, oh). For kernel tap l along W, the output
// columns [inner_lo, inner_hi) read the input at a plain stride, which the compiler
// vectorises; the few border columns go through the tap table, where the padding mode
// decides what they read.
//
// Splits: forward over (sample, output channel), grad_input over (sample, input
// channel) - a thread owns whole input planes - and grad_weight over output channels,
// each summing in a fixed order (deterministic, no atomics).
#include "common.h"
#include "kernels.h"

#include <ATen/Parallel.h>

#include <type_traits>

namespace torchconv3d::cpu {
namespace {

// Calls f(first tap of the (i, j) kernel row, offset of the input row it reads) for
// every (i, j) whose depth and height indices are not padding zeros.
template <typename F>
void for_each_row_tap(const Geometry& g, const TapTables& tt, int64_t od, int64_t oh,
                      const std::array<int64_t, 3>& s, F&& f) {
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  for (int64_t i = 0; i < kd; ++i) {
    const int64_t id = tt.index[0][od * kd + i];
    if (id < 0) continue;
    for (int64_t j = 0; j < kh; ++j) {
      const int64_t ih = tt.index[1][oh * kh + j];
      if (ih < 0) continue;
      f((i * kh + j) * kw, id * s[0] + ih * s[1]);
    }
  }
}

// Columns of one output row along W for tap l: the plain-stride interior and the border.
struct Columns {
  int64_t lo, hi, first, step;  // interior [lo, hi) reads element first + (t - lo) * step
};

Columns columns(const Geometry& g, const TapTables& tt, int64_t l, int64_t elem_stride) {
  const int64_t lo = tt.inner_lo[2][l], hi = tt.inner_hi[2][l];
  return {lo, hi, (lo * g.stride[2] + l * g.dilation[2] - g.pad_before[2]) * elem_stride,
          g.stride[2] * elem_stride};
}

// Visits the border columns of tap l (those outside [lo, hi)) that read a real element.
template <typename F>
void for_each_border(const Geometry& g, const TapTables& tt, int64_t l, const Columns& c, F&& f) {
  const int64_t kw = g.kernel[2];
  for (int64_t t = 0; t < c.lo; ++t)
    if (const int64_t iw = tt.index[2][t * kw + l]; iw >= 0) f(t, iw);
  for (int64_t t = c.hi; t < g.out[2]; ++t)
    if (const int64_t iw = tt.index[2][t * kw + l]; iw >= 0) f(t, iw);
}

template <typename A, typename T>
A strided_dot(const A* a, const T* b, int64_t n, int64_t step) {
  // Eight partial sums let the compiler vectorise without reassociating a single sum.
  A part[8] = {};
  int64_t t = 0;
  if (step == 1) {
    for (; t + 8 <= n; t += 8)
      for (int u = 0; u < 8; ++u) part[u] += a[t + u] * static_cast<A>(b[t + u]);
  }
  for (; t < n; ++t) part[0] += a[t] * static_cast<A>(b[t * step]);
  A sum = 0;
  for (int u = 0; u < 8; ++u) sum += part[u];
  return sum;
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
  const int64_t m = g.out_per_group(), kvol = g.kernel_volume(), kw = g.kernel[2];
  const int64_t Wo = g.out[2];
  const auto xs = spatial_strides(input);
  const auto ys = spatial_strides(output);
  const TapTables tt(g);

  at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(Wo);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_channels, co = task % g.out_channels;
      const T* xplane = xp + n * input.stride(0) + (co / m) * input.stride(1);
      T* yplane = yp + n * output.stride(0) + co * output.stride(1);
      const acc_t* wc = wp + co * kvol;
      const acc_t bc = bp ? static_cast<acc_t>(bp[co]) : acc_t(0);
      for (int64_t od = 0; od < g.out[0]; ++od) {
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          std::fill(row.begin(), row.end(), bc);
          for_each_row_tap(g, tt, od, oh, xs, [&](int64_t tap0, int64_t xoff) {
            const T* xr = xplane + xoff;
            for (int64_t l = 0; l < kw; ++l) {
              const acc_t wv = wc[tap0 + l];
              const Columns c = columns(g, tt, l, xs[2]);
              const T* src = xr + c.first;
              if (c.step == 1) {
                for (int64_t t = c.lo; t < c.hi; ++t)
                  row[t] += wv * static_cast<acc_t>(src[t - c.lo]);
              } else {
                for (int64_t t = c.lo; t < c.hi; ++t)
                  row[t] += wv * static_cast<acc_t>(src[(t - c.lo) * c.step]);
              }
              for_each_border(g, tt, l, c, [&](int64_t t, int64_t iw) {
                row[t] += wv * static_cast<acc_t>(xr[iw * xs[2]]);
              });
            }
          });
          T* yr = yplane + od * ys[0] + oh * ys[1];
          for (int64_t t = 0; t < Wo; ++t) yr[t * ys[2]] = static_cast<T>(row[t]);
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
  // sum in a float plane, written once at the end.
  constexpr bool direct = std::is_same_v<acc_t, T>;
  const at::Tensor w = weight_as_acc<T>(weight);
  const acc_t* wp = w.const_data_ptr<acc_t>();
  const T* gyp = grad_output.const_data_ptr<T>();
  T* gxp = grad_input.mutable_data_ptr<T>();
  const int64_t m = g.out_per_group(), kvol = g.kernel_volume(), kw = g.kernel[2];
  const int64_t Wo = g.out[2], V = g.in_volume();
  const auto gys = spatial_strides(grad_output);
  const auto gxs = spatial_strides(grad_input);
  const std::array<int64_t, 3> ts =
      direct ? gxs : std::array<int64_t, 3>{g.in[1] * g.in[2], g.in[2], 1};
  const TapTables tt(g);

  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grow(Wo);
    at::Tensor h_plane;
    acc_t* plane = direct ? nullptr : scratch<acc_t>(h_plane, V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.in_channels, ci = task % g.in_channels;
      T* gx_plane = gxp + n * grad_input.stride(0) + ci * grad_input.stride(1);
      acc_t* target = direct ? reinterpret_cast<acc_t*>(gx_plane) : plane;
      if (!direct) std::fill(plane, plane + V, acc_t(0));
      for (int64_t j = 0; j < m; ++j) {
        const int64_t co = ci * m + j;
        const T* gy_plane = gyp + n * grad_output.stride(0) + co * grad_output.stride(1);
        const acc_t* wc = wp + co * kvol;
        for (int64_t od = 0; od < g.out[0]; ++od) {
          for (int64_t oh = 0; oh < g.out[1]; ++oh) {
            const T* gr = gy_plane + od * gys[0] + oh * gys[1];
            for (int64_t t = 0; t < Wo; ++t) grow[t] = static_cast<acc_t>(gr[t * gys[2]]);
            for_each_row_tap(g, tt, od, oh, ts, [&](int64_t tap0, int64_t toff) {
              acc_t* tr = target + toff;
              for (int64_t l = 0; l < kw; ++l) {
                const acc_t wv = wc[tap0 + l];
                const Columns c = columns(g, tt, l, ts[2]);
                acc_t* dst = tr + c.first;
                if (c.step == 1) {
                  for (int64_t t = c.lo; t < c.hi; ++t) dst[t - c.lo] += wv * grow[t];
                } else {
                  for (int64_t t = c.lo; t < c.hi; ++t) dst[(t - c.lo) * c.step] += wv * grow[t];
                }
                for_each_border(g, tt, l, c,
                                [&](int64_t t, int64_t iw) { tr[iw * ts[2]] += wv * grow[t]; });
              }
            });
          }
        }
      }
      if constexpr (!direct) store_plane(g, plane, gx_plane, gxs);
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
  const int64_t m = g.out_per_group(), kvol = g.kernel_volume();
  const int64_t kh = g.kernel[1], kw = g.kernel[2], Wo = g.out[2];
  const auto xs = spatial_strides(input);
  const auto gys = spatial_strides(grad_output);
  const TapTables tt(g);

  at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grow(Wo);
    std::vector<double> acc(kvol);  // row sums in acc_t, the long sum over rows in double
    for (int64_t co = begin; co < end; ++co) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < g.batch; ++n) {
        const T* xplane = xp + n * input.stride(0) + (co / m) * input.stride(1);
        const T* gy_plane = gyp + n * grad_output.stride(0) + co * grad_output.stride(1);
        for (int64_t od = 0; od < g.out[0]; ++od) {
          for (int64_t oh = 0; oh < g.out[1]; ++oh) {
            const T* gr = gy_plane + od * gys[0] + oh * gys[1];
            for (int64_t t = 0; t < Wo; ++t) grow[t] = static_cast<acc_t>(gr[t * gys[2]]);
            for_each_row_tap(g, tt, od, oh, xs, [&](int64_t tap0, int64_t xoff) {
              const T* xr = xplane + xoff;
              for (int64_t l = 0; l < kw; ++l) {
                const Columns c = columns(g, tt, l, xs[2]);
                acc_t sum = strided_dot(grow.data() + c.lo, xr + c.first, c.hi - c.lo, c.step);
                for_each_border(g, tt, l, c, [&](int64_t t, int64_t iw) {
                  sum += grow[t] * static_cast<acc_t>(xr[iw * xs[2]]);
                });
                acc[tap0 + l] += static_cast<double>(sum);
              }
            });
          }
        }
      }
      T* gw_c = gwp + co * grad_weight.stride(0);
      for (int64_t tap = 0; tap < kvol; ++tap) {
        const int64_t i = tap / (kh * kw), j = (tap / kw) % kh, l = tap % kw;
        gw_c[i * grad_weight.stride(2) + j * grad_weight.stride(3) + l * grad_weight.stride(4)] =
            static_cast<T>(acc[tap]);
      }
    }
  });
}

}  // namespace

void depthwise_forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, at::Tensor& output) {
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_depthwise_forward",
                [&] { forward_kernel<scalar_t>(g, input, weight, bias, output); });
}

void depthwise_grad_input(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_depthwise_grad_input",
                [&] { grad_input_kernel<scalar_t>(g, grad_output, weight, grad_input); });
}

void depthwise_grad_weight(const Geometry& g, const at::Tensor& grad_output,
                           const at::Tensor& input, at::Tensor& grad_weight) {
  TC3D_DISPATCH(grad_output.scalar_type(), "torchconv3d_depthwise_grad_weight",
                [&] { grad_weight_kernel<scalar_t>(g, grad_output, input, grad_weight); });
}

}  // namespace torchconv3d::cpu
