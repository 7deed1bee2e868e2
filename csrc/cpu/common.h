// Pieces shared by the CPU kernels: strides, rounding, scratch. (source_index and
// ceil_div, shared with the CUDA kernels, are in conv3d.h.)
#pragma once

#include "../conv3d.h"

#include <ATen/ATen.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

namespace torchconv3d::cpu {

inline std::array<int64_t, 3> spatial_strides(const at::Tensor& t) {
  return {t.stride(2), t.stride(3), t.stride(4)};
}

inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// The input index that output index o reads through tap t along spatial dimension d, or -1
// for a padding zero.
inline int64_t tap_source(const Geometry& g, int d, int64_t o, int64_t t) {
  return source_index(o * g.stride[d] + t * g.dilation[d] - g.pad_before[d], g.in[d],
                      g.pad_before[d], g.pad_after[d], g.mode[d]);
}

// The kernel depths [from, to) whose products an output depth od sums: all of them, or,
// where every weight is finite (a padding zero times a weight is then a zero, not NaN),
// only those that read input frames (a range: the frames read rise with the kernel
// depth). oneDNN skips the others too; in a video layer a few frames deep they are up to
// a sixth of the products (R3D's 4 frames, kernel depth 3). Empty when every kernel depth
// reads padding: the output is the bias.
struct DepthRange {
  int64_t from, to;
  bool empty() const { return from >= to; }
};
inline DepthRange live_kernel_depths(const Geometry& g, int64_t od, bool finite_weights) {
  int64_t from = 0, to = g.kernel[0];
  if (finite_weights) {
    while (from < to && tap_source(g, 0, od, from) < 0) ++from;
    while (to > from && tap_source(g, 0, od, to - 1) < 0) --to;
  }
  return {from, to};
}

// Whether no element is NaN or Inf (the half types through their exact float value).
template <typename E>
bool all_finite(const E* p, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if constexpr (std::is_floating_point_v<E>) {
      if (!std::isfinite(p[i])) return false;
    } else if (!std::isfinite(static_cast<float>(p[i]))) {
      return false;
    }
  }
  return true;
}

// The weight in the accumulation type, contiguous [C_out, C_in/groups, kd, kh, kw].
template <typename A>
at::Tensor weight_as(const at::Tensor& weight) {
  return weight.to(c10::CppTypeToScalarType<A>::value).contiguous();
}

// The bias in the accumulation type C, zeros where there is none.
template <typename C>
std::vector<C> bias_or_zeros(const Geometry& g, const at::Tensor& bias) {
  std::vector<C> b(g.out_channels, C(0));
  if (bias.defined()) {
    const at::Tensor bc = bias.to(c10::CppTypeToScalarType<C>::value).contiguous();
    std::copy(bc.const_data_ptr<C>(), bc.const_data_ptr<C>() + g.out_channels, b.begin());
  }
  return b;
}

// Asks Linux for transparent huge pages (where THP is 'madvise') over the whole 2 MB pages
// inside [ptr, ptr + bytes): one fault per 2 MB on first touch instead of one per 4 KB.
// For buffers used whole and kept (winograd.h's kept_buffer: C3D's 46 MB took 13,000 faults,
// 20 ms a call, when allocated per call); a buffer touched in part would zero more.
inline void advise_huge_pages(void* ptr, size_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// A scratch buffer; at::empty gives 64-byte aligned memory.
template <typename T>
T* scratch(at::Tensor& holder, int64_t n) {
  holder = at::empty({std::max<int64_t>(n, 1)},
                     at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return holder.data_ptr<T>();
}

}  // namespace torchconv3d::cpu
