// Pieces shared by the CPU kernels: strides, rounding, scratch. (source_index and
// ceil_div, shared with the CUDA kernels, are in conv3d.h.)
#pragma once

#include "../conv3d.h"
#include "microkernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
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

// One sample's input from a first channel, addressed by channel and input depth: the input
// tensor's frames, behind the frames of g.head (a streaming cache, read in place) where
// there is one. Height and width strides are the input's in both (DepthHead).
template <typename T>
struct InputFrames {
  const T* body = nullptr;
  const T* head = nullptr;
  int64_t head_frames = 0, body_c = 0, body_d = 0, head_c = 0, head_d = 0;
  const T* frame(int64_t c, int64_t id) const {
    return id < head_frames ? head + c * head_c + id * head_d
                            : body + c * body_c + (id - head_frames) * body_d;
  }
};
template <typename T>
InputFrames<T> input_frames(const Geometry& g, const at::Tensor& x, int64_t n, int64_t c0) {
  InputFrames<T> f;
  f.body = static_cast<const T*>(x.const_data_ptr()) + n * x.stride(0) + c0 * x.stride(1);
  f.body_c = x.stride(1);
  f.body_d = x.stride(2);
  if (g.head.frames > 0) {
    const auto& s = g.head.stride;
    f.head = static_cast<const T*>(g.head.data) + n * s[0] + c0 * s[1];
    f.head_frames = g.head.frames;
    f.head_c = s[1];
    f.head_d = s[2];
  }
  return f;
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

// dst[n][c][r] = src[n][r][c] for `batch` [rows][cols] matrices of E, in tiles split over
// threads: whole 16 x 16 (2-byte) or 8 x 8 (4-byte) blocks by the SIMD `transpose`, the
// ragged edges here, walking the side whose elements are adjacent in memory. Tiles are
// 32 x 32, or 128 rows x 16 columns where rows are the longer side (a [D*H*W][C] source:
// each destination row then takes 256 contiguous bytes a tile).
template <typename E>
void transpose_matrices(const E* src, E* dst, int64_t batch, int64_t rows, int64_t cols) {
  const auto simd =
      sizeof(E) == 2 || sizeof(E) == 4 ? micro_kernels(float{}).transpose : nullptr;
  const int64_t block = sizeof(E) == 2 ? 16 : 8;
  const int64_t tile_r = rows >= cols ? 128 : 32, tile_c = rows >= cols ? 16 : 32;
  const int64_t rt = ceil_div(rows, tile_r), ct = ceil_div(cols, tile_c);
  at::parallel_for(0, batch * rt * ct, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (rt * ct), r0 = (t / ct % rt) * tile_r, c0 = t % ct * tile_c;
      const int64_t r1 = std::min(rows, r0 + tile_r), c1 = std::min(cols, c0 + tile_c);
      const E* sp = src + n * rows * cols;
      E* dp = dst + n * rows * cols;
      // [r0, rb) x [c0, cb): whole blocks; the rest element by element.
      const int64_t rb = simd ? r0 + (r1 - r0) / block * block : r0;
      const int64_t cb = simd ? c0 + (c1 - c0) / block * block : c0;
      if (rb > r0 && cb > c0)
        simd(sizeof(E), sp + r0 * cols + c0, cols, dp + c0 * rows + r0, rows, rb - r0, cb - c0);
      const auto scalar = [&](int64_t ra, int64_t rz, int64_t ca, int64_t cz) {
        if (rows < cols) {
          for (int64_t r = ra; r < rz; ++r)
            for (int64_t c = ca; c < cz; ++c) dp[c * rows + r] = sp[r * cols + c];
        } else {
          for (int64_t c = ca; c < cz; ++c)
            for (int64_t r = ra; r < rz; ++r) dp[c * rows + r] = sp[r * cols + c];
        }
      };
      if (rb > r0) scalar(r0, rb, cb, c1);  // right of the blocks
      scalar(rb, r1, c0, c1);                // below them
    }
  });
}

// Buffer `slot` of the calling thread, at least n floats, kept between calls: fresh memory
// comes zeroed from the kernel, and zeroing C3D's 36 MB of transformed inputs and products
// cost 4 ms a call (its arithmetic takes 7) in the Winograd passes (winograd.h). What a
// thread keeps is its largest use so far: for the calling thread up to 32 MB of Winograd
// tiles and 48 MB of weights (C3D in bfloat16: 33 + 14 MB), a few MB for the others
// (WinogradPlan's caller_bytes, thread_bytes), and up to 16 MB in each of kCopy, kCopy2 (a
// pass's layout copies, layout_scratch).
enum Slot { kWeights, kAllWeights, kInputs, kProducts, kComponentWeights, kCopy, kCopy2, kSlots };
inline float* kept_buffer(Slot slot, int64_t n) {
  struct Kept {
    std::unique_ptr<float[]> raw;
    float* p = nullptr;  // 64-byte aligned, as at::empty's: a vector load stays in one line
    int64_t n = 0;
  };
  thread_local std::array<Kept, kSlots> kept;
  Kept& k = kept[slot];
  if (k.n < n) {
    k.raw.reset();
    k.raw.reset(new float[n + 16]);
    k.p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(k.raw.get()) + 63) &
                                   ~uintptr_t(63));
    k.n = n;
    advise_huge_pages(k.p, n * sizeof(float));
  }
  return k.p;
}

// dst.copy_(src) for tensors of one shape. Between a contiguous and a channels_last_3d
// tensor it is a transpose per sample of [C][D*H*W] (transpose_matrices): ATen's copy ran
// at 4-35 GB/s here and, between our passes, cost MedicalNet's bfloat16 planar forward
// 1.5 of its 4.7 ms.
inline void copy_layout(at::Tensor& dst, const at::Tensor& src) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  const bool to_cl = src.is_contiguous() && dst.is_contiguous(cl);
  const bool to_planar = src.is_contiguous(cl) && dst.is_contiguous();
  if (src.dim() != 5 || dst.sizes() != src.sizes() || dst.dtype() != src.dtype() ||
      (to_cl == to_planar)) {
    dst.copy_(src);
    return;
  }
  const int64_t n = src.size(0), c = src.size(1), s = src.numel() / std::max<int64_t>(n * c, 1);
  const int64_t rows = to_cl ? c : s, cols = to_cl ? s : c;
  const auto run = [&](auto element) {
    using E = decltype(element);
    transpose_matrices(static_cast<const E*>(src.const_data_ptr()),
                       static_cast<E*>(dst.mutable_data_ptr()), n, rows, cols);
  };
  switch (src.element_size()) {
    case 2: return run(uint16_t{});
    case 4: return run(uint32_t{});
    case 8: return run(uint64_t{});
    default: dst.copy_(src);
  }
}

// A 5-D tensor of like's sizes and dtype in `format`, held in buffer `slot` of the calling
// thread where it takes at most kKeptCopyBytes (fresh memory otherwise): the planar <->
// channels_last copies around a pass. Fresh, their pages faulted in on every call (a planar
// I3D stem forward took ~970 page faults a call for its 6.4 MB output alone): its
// channels_last float32 forward through planar copies, 2 threads, 9.1 ms with fresh copies,
// 8.8 kept (8.2 from a planar input, nothing copied).
// A slot holds one live copy at a time: the pass entry points (tiled_forward's routes,
// forward_winograd, tiled_grad_input, tiled_grad_weight, grad_weight_winograd) take kCopy
// for their operand and kCopy2 for the other operand or the result; the forwards that
// grad_input runs inside its copies (one per stride phase) get channels_last views with
// 16+ (bfloat16) or 64+ (float32 Winograd) input channels, which no route copies again.
constexpr int64_t kKeptCopyBytes = int64_t(16) << 20;
inline at::Tensor layout_scratch(const at::Tensor& like, at::MemoryFormat format, Slot slot) {
  const int64_t bytes = like.numel() * like.element_size();
  // (Not inside a parallel region: a pool thread would keep its own copy of every layer.)
  if (like.dim() != 5 || bytes > kKeptCopyBytes || at::in_parallel_region())
    return at::empty_like(like, format);
  std::vector<int64_t> strides = c10::get_channels_last_strides_3d(like.sizes());
  if (format != at::MemoryFormat::ChannelsLast3d) {
    const auto planar = c10::contiguous_strides(like.sizes());
    strides.assign(planar.begin(), planar.end());
  }
  return at::from_blob(kept_buffer(slot, ceil_div(bytes, 4)), like.sizes(), strides,
                       like.options());
}

// src in channels_last_3d: itself where it already is, else a copy (copy_layout) in
// layout_scratch's `slot`.
inline at::Tensor to_channels_last(const at::Tensor& src, Slot slot) {
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  if (src.is_contiguous(cl)) return src;
  at::Tensor dst = layout_scratch(src, cl, slot);
  copy_layout(dst, src);
  return dst;
}

// A scratch buffer; at::empty gives 64-byte aligned memory.
template <typename T>
T* scratch(at::Tensor& holder, int64_t n) {
  holder = at::empty({std::max<int64_t>(n, 1)},
                     at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return holder.data_ptr<T>();
}

}  // namespace torchconv3d::cpu
