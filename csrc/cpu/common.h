// Pieces shared by the CPU kernels: where a padded coordinate reads, strides, scratch.
#pragma once

#include "../conv3d.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>

namespace torchconv3d::cpu {

// The only place a padding mode acts: the input index read at padded coordinate q
// (q = o * stride + tap * dilation - pad_before) along a dimension of size n, or -1 for
// a padding zero. Coordinates past the padded extent [-pad_before, n + pad_after) are
// never read by a real output position; they give -1 too.
inline int64_t source_index(int64_t q, int64_t n, int64_t pad_before, int64_t pad_after,
                            PadMode mode) {
  if (q >= 0 && q < n) return q;
  if (q < -pad_before || q >= n + pad_after) return -1;
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

inline std::array<int64_t, 3> spatial_strides(const at::Tensor& t) {
  return {t.stride(2), t.stride(3), t.stride(4)};
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A per-thread scratch buffer; at::empty gives 64-byte aligned memory.
template <typename T>
T* scratch(at::Tensor& holder, int64_t n) {
  holder = at::empty({std::max<int64_t>(n, 1)},
                     at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return holder.data_ptr<T>();
}

}  // namespace torchconv3d::cpu
