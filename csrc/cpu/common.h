// Pieces shared by the CPU kernels: where each kernel tap reads, tiles, scratch, GEMM.
#pragma once

#include "../conv3d.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorUtils.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

namespace torchconv3d::cpu {

// The only place a padding mode acts: the input index that output position `o` reads
// through kernel tap `j` along a dimension of size n, or -1 for a padding zero.
inline int64_t source_index(int64_t o, int64_t j, int64_t n, int64_t stride, int64_t dilation,
                            int64_t pad_before, PadMode mode) {
  const int64_t q = o * stride + j * dilation - pad_before;
  if (q >= 0 && q < n) return q;
  switch (mode) {
    case PadMode::Zeros:
      return -1;
    case PadMode::Reflect:  // the checker guarantees pad < n: one reflection suffices
      return q < 0 ? -q : 2 * (n - 1) - q;
    case PadMode::Replicate:
      return q < 0 ? 0 : n - 1;
    case PadMode::Circular:  // pad <= n: one wrap suffices
      return q < 0 ? q + n : q - n;
  }
  return -1;
}

// source_index for every (output position, tap) pair of each dimension, laid out
// [o * k + j], plus the range of o whose taps j all land inside the input
// ([inner_lo[j], inner_hi[j]) per tap), where the index is the plain o*s + j*d - pad.
struct TapTables {
  std::array<std::vector<int64_t>, 3> index;
  std::array<std::vector<int64_t>, 3> inner_lo, inner_hi;

  explicit TapTables(const Geometry& g) {
    for (int i = 0; i < 3; ++i) {
      const int64_t k = g.kernel[i], out = g.out[i];
      index[i].resize(out * k);
      inner_lo[i].assign(k, out);
      inner_hi[i].assign(k, out);
      for (int64_t j = 0; j < k; ++j) {
        bool seen = false;
        for (int64_t o = 0; o < out; ++o) {
          index[i][o * k + j] = source_index(o, j, g.in[i], g.stride[i], g.dilation[i],
                                             g.pad_before[i], g.mode);
          const int64_t q = o * g.stride[i] + j * g.dilation[i] - g.pad_before[i];
          if (q >= 0 && q < g.in[i]) {
            if (!seen) inner_lo[i][j] = o;
            seen = true;
            inner_hi[i][j] = o + 1;
          }
        }
        if (!seen) inner_lo[i][j] = inner_hi[i][j] = 0;
      }
    }
  }
};

inline std::array<int64_t, 3> spatial_strides(const at::Tensor& t) {
  return {t.stride(2), t.stride(3), t.stride(4)};
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Stride between consecutive flattened spatial positions of a 5-D tensor, when D, H, W
// can be read as one dimension (contiguous and channels_last_3d both can).
inline std::optional<int64_t> flat_position_stride(const at::Tensor& t) {
  const auto st = at::detail::computeStride(
      t.sizes(), t.strides(), at::IntArrayRef{t.size(0), t.size(1), t.size(2) * t.size(3) * t.size(4)});
  if (!st) return std::nullopt;
  return (*st)[2];
}

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

// A per-thread scratch buffer; at::empty gives 64-byte aligned memory.
template <typename T>
T* scratch(at::Tensor& holder, int64_t n) {
  holder = at::empty({std::max<int64_t>(n, 1)},
                     at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return holder.data_ptr<T>();
}

// The weight as a dense [C_out, C_in/groups * kvol] matrix in the accumulation type.
template <typename T>
at::Tensor weight_as_acc(const at::Tensor& weight) {
  using acc_t = at::opmath_type<T>;
  return weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
}

// Writes a dense [D, H, W] float plane (where the half types sum their input gradient)
// into one channel of grad_input, which has spatial strides s.
template <typename A, typename T>
void store_plane(const Geometry& g, const A* plane, T* dst, const std::array<int64_t, 3>& s) {
  int64_t v = 0;
  for (int64_t d = 0; d < g.in[0]; ++d)
    for (int64_t h = 0; h < g.in[1]; ++h)
      for (int64_t x = 0; x < g.in[2]; ++x, ++v)
        dst[d * s[0] + h * s[1] + x * s[2]] = static_cast<T>(plane[v]);
}

// A strided m x n matrix view: element (i, j) at ptr[i * s0 + j * s1].
template <typename A>
struct Mat {
  const A* ptr;
  int64_t s0, s1;
};

// C = A B + beta C in float or double through ATen's BLAS (MKL on x86 wheels). A is
// m x k, B is k x n, C is m x n with strides (cs0, cs1); any strides BLAS cannot take
// are copied by ATen. The half types are converted to float before they get here.
template <typename A>
void gemm(int64_t m, int64_t n, int64_t k, Mat<A> a, Mat<A> b, A beta, A* c, int64_t cs0,
          int64_t cs1) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  auto view = [&](Mat<A> x, int64_t rows, int64_t cols) {
    return at::from_blob(const_cast<A*>(x.ptr), {rows, cols}, {x.s0, x.s1}, opts);
  };
  at::Tensor ct = at::from_blob(c, {m, n}, {cs0, cs1}, opts);
  if (beta == A(0)) {
    at::mm_out(ct, view(a, m, k), view(b, k, n));
  } else {
    ct.addmm_(view(a, m, k), view(b, k, n), beta, 1);
  }
}

}  // namespace torchconv3d::cpu
