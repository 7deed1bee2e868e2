// NaN and Inf in the CPU kernels.
//
// The tiled kernels form a few products that are not terms of the convolution: at
// positions past the output (dropped columns, lane padding) and, in grad_input, at output
// positions past the border (the halo of the shifted grad_output). Their other factor is a
// zero, so they add nothing - unless the factor they meet is NaN or Inf: 0 * Inf = NaN
// would reach a result that should be +-Inf or finite. Such values are rare (a diverged
// model, an overflowed activation), so when one is there the fast pass reads it as zero,
// and the terms it really is in are added here, walking only real (output, tap) pairs.
// A padding zero is a real zero, as in F.conv3d over the zero-padded input (nn.Conv3d's
// definition): that product is a term, and the fast passes already form it.
#pragma once

#include "common.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <utility>
#include <vector>

namespace torchconv3d::cpu {

template <typename A>
struct WeightTerm {
  int64_t co, ci;  // output channel, input channel within its group
  std::array<int64_t, 3> tap;
  A value;
};

// The non-finite elements of the weight (contiguous, accumulation type).
template <typename A>
std::vector<WeightTerm<A>> nonfinite_weights(const Geometry& g, const at::Tensor& w) {
  std::vector<WeightTerm<A>> out;
  const A* p = w.const_data_ptr<A>();
  const int64_t in_per_group = g.in_per_group();
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  for (int64_t e = 0; e < w.numel(); ++e) {
    if (std::isfinite(p[e])) continue;
    const int64_t l = e % kw, j = e / kw % kh, i = e / (kw * kh) % kd;
    const int64_t ci = e / (kw * kh * kd) % in_per_group, co = e / (kw * kh * kd * in_per_group);
    out.push_back({co, ci, {i, j, l}, p[e]});
  }
  return out;
}

// grad_input += the terms of the weight elements `terms` (whose products the fast pass
// formed with zeros): for each real output position o reading input x through tap t,
// grad_input[n, ci, x] += w[co, ci, t] * grad_output[n, co, o].
template <typename T, typename A>
void add_weight_terms(const Geometry& g, const at::Tensor& grad_output,
                      const std::vector<WeightTerm<A>>& terms, at::Tensor& grad_input) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const T* gyp = grad_output.const_data_ptr<T>();
  T* gxp = grad_input.mutable_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), gxs = spatial_strides(grad_input);
  // A thread owns (sample, input channel) slabs, so no two add into one element.
  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.in_channels, c = task % g.in_channels;
      T* gx = gxp + n * grad_input.stride(0) + c * grad_input.stride(1);
      for (const WeightTerm<A>& term : terms) {
        if (term.ci != c % in_per_group || term.co / out_per_group != c / in_per_group) continue;
        const T* gy = gyp + n * grad_output.stride(0) + term.co * grad_output.stride(1);
        for (int64_t od = 0; od < g.out[0]; ++od) {
          const int64_t id = tap_source(g, 0, od, term.tap[0]);
          if (id < 0) continue;
          for (int64_t oh = 0; oh < g.out[1]; ++oh) {
            const int64_t ih = tap_source(g, 1, oh, term.tap[1]);
            if (ih < 0) continue;
            for (int64_t ow = 0; ow < g.out[2]; ++ow) {
              const int64_t iw = tap_source(g, 2, ow, term.tap[2]);
              if (iw < 0) continue;
              T& dst = gx[id * gxs[0] + ih * gxs[1] + iw * gxs[2]];
              dst = static_cast<T>(static_cast<A>(dst) +
                                   term.value * static_cast<A>(
                                                    gy[od * gys[0] + oh * gys[1] + ow * gys[2]]));
            }
          }
        }
      }
    }
  });
}

// Positions (n, c, d, h, w) of the non-finite input elements, in memory-independent order.
template <typename T>
std::vector<std::array<int64_t, 5>> nonfinite_inputs(const Geometry& g, const at::Tensor& x) {
  const auto xs = spatial_strides(x);
  std::vector<std::vector<std::array<int64_t, 5>>> per_slab(g.batch * g.in_channels);
  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.in_channels, c = task % g.in_channels;
      const InputFrames<T> frames = input_frames<T>(g, x, n, c);
      for (int64_t d = 0; d < g.in[0]; ++d) {
        const T* s = frames.frame(0, d);
        for (int64_t h = 0; h < g.in[1]; ++h)
          for (int64_t w = 0; w < g.in[2]; ++w)
            if (!std::isfinite(static_cast<at::opmath_type<T>>(s[h * xs[1] + w * xs[2]])))
              per_slab[task].push_back({n, c, d, h, w});
      }
    }
  });
  std::vector<std::array<int64_t, 5>> out;
  for (auto& v : per_slab) out.insert(out.end(), v.begin(), v.end());
  return out;
}

// acc ([C_out, C_in/groups * kvol], accumulation type) += the terms of the input elements
// at `where` (which the fast pass read as zero): for each real output position o that
// reads input x through tap t, acc[co, ci, t] += grad_output[n, co, o] * x.
template <typename T, typename A>
void add_input_terms(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& x,
                     const std::vector<std::array<int64_t, 5>>& where, A* acc) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume();
  // Per dimension and input index: the (tap, output index) pairs reading it.
  std::array<std::vector<std::vector<std::pair<int64_t, int64_t>>>, 3> readers;
  for (int d = 0; d < 3; ++d) {
    readers[d].resize(g.in[d]);
    for (int64_t t = 0; t < g.kernel[d]; ++t)
      for (int64_t o = 0; o < g.out[d]; ++o) {
        const int64_t i = tap_source(g, d, o, t);
        if (i >= 0) readers[d][i].push_back({t, o});
      }
  }
  const T* gyp = grad_output.const_data_ptr<T>();
  const auto gys = spatial_strides(grad_output), xs = spatial_strides(x);
  // A thread owns output channels: the rows of acc it adds into.
  at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      const int64_t grp = co / out_per_group;
      A* row = acc + co * in_per_group * kvol;
      for (const auto& [n, c, d, h, w] : where) {
        if (c / in_per_group != grp) continue;
        const A v =
            static_cast<A>(input_frames<T>(g, x, n, c).frame(0, d)[h * xs[1] + w * xs[2]]);
        const T* gy = gyp + n * grad_output.stride(0) + co * grad_output.stride(1);
        A* taps = row + (c % in_per_group) * kvol;
        for (const auto& [td, od] : readers[0][d])
          for (const auto& [th, oh] : readers[1][h])
            for (const auto& [tw, ow] : readers[2][w])
              taps[(td * g.kernel[1] + th) * g.kernel[2] + tw] +=
                  static_cast<A>(gy[od * gys[0] + oh * gys[1] + ow * gys[2]]) * v;
      }
    }
  });
}

}  // namespace torchconv3d::cpu
