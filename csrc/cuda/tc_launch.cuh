// Host side of the tensor-core kernels: which layers take them (planning), and the launch.
// Decisions depend on shapes, dtype and torch's TF32 setting only, never on timing, so the
// same call always runs the same kernels (and sums in the same order).
#pragma once

#include "tc_iterators.cuh"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace torchconv3d::gpu::tc {

// float16/bfloat16 always; float32 only when torch allows TF32 for convolutions
// (torch.backends.cudnn.allow_tf32, True by default); float64 never.
inline bool dtype_ok(at::ScalarType t, bool allow_tf32) {
  return t == at::kHalf || t == at::kBFloat16 || (t == at::kFloat && allow_tf32);
}

inline bool fits_32_bits(const Geometry& g) {
  constexpr int64_t kLimit = int64_t(1) << 30;
  for (int i = 0; i < 3; ++i)
    if (g.in[i] + g.pad_before[i] + g.pad_after[i] >= kLimit ||
        g.kernel[i] * g.dilation[i] >= kLimit || g.out[i] * g.stride[i] >= kLimit)
      return false;
  return g.out[0] * g.out[1] * g.out[2] < kLimit && g.in_per_group() < kLimit &&
         g.out_per_group() < kLimit && g.kernel_volume() * g.in_per_group() < kLimit;
}

// The forward pass runs on tensor cores when input channels per group fill whole 16-byte
// chunks (8 halves, 4 floats); others (C_in = 3 stems, depthwise) stay on the v1 kernels.
inline bool forward_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  if (!dtype_ok(t, allow_tf32) || !fits_32_bits(g)) return false;
  const int64_t chunk = 16 / static_cast<int64_t>(c10::elementSize(t));
  return g.in_per_group() > 1 && g.in_per_group() % chunk == 0 && g.out_per_group() > 0;
}

inline Dims32 dims32(const Geometry& g) {
  Dims32 d;
  for (int i = 0; i < 3; ++i) {
    d.in[i] = static_cast<int>(g.in[i]);
    d.out[i] = static_cast<int>(g.out[i]);
    d.k[i] = static_cast<int>(g.kernel[i]);
    d.stride[i] = static_cast<int>(g.stride[i]);
    d.dil[i] = static_cast<int>(g.dilation[i]);
    d.pad_before[i] = static_cast<int>(g.pad_before[i]);
    d.pad_after[i] = static_cast<int>(g.pad_after[i]);
  }
  d.mode = g.mode;
  return d;
}

// A channels-last copy of t unless it already is one, with a 16-byte aligned start.
inline at::Tensor channels_last(const at::Tensor& t) {
  at::Tensor c = t.contiguous(at::MemoryFormat::ChannelsLast3d);
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0)
    c = c.clone(at::MemoryFormat::ChannelsLast3d);
  return c;
}

// Weights as [C_out][kd][kh][kw][C_in/groups]: the channels-last layout of a weight tensor.
inline at::Tensor pack_weight(const at::Tensor& w) { return channels_last(w); }

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kHalf:
      return f(c10::Half{});
    case at::kBFloat16:
      return f(c10::BFloat16{});
    case at::kFloat:
      return f(float{});
    default:
      TORCH_CHECK(false, "torchconv3d: no tensor-core kernel for ", t);
  }
}

template <typename Cfg, typename Env, typename Problem>
void launch(const Env& env, const Problem& p, int64_t splits) {
  const int64_t m_tiles = (p.M + Cfg::BM - 1) / Cfg::BM;
  const int64_t n_tiles = (p.N + Cfg::BN - 1) / Cfg::BN * p.groups;
  if (m_tiles == 0 || n_tiles == 0 || p.k_tiles == 0) return;
  const dim3 grid(static_cast<unsigned>(std::min(m_tiles, env.max_grid_x)),
                  static_cast<unsigned>(std::min(n_tiles, env.max_grid_y)),
                  static_cast<unsigned>(splits));
  env.launch_dynamic(tc_gemm_kernel<Cfg, Problem>, grid, dim3(Cfg::kThreads), Cfg::kSmemBytes,
                     p);
}

template <typename Env>
void forward(const Env& env, const Geometry& g, const at::Tensor& x, const at::Tensor& w,
             const at::Tensor& b, at::Tensor& y) {
  const at::Tensor xc = channels_last(x);
  const at::Tensor wp = pack_weight(w);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    ForwardTc<T> p;
    p.d = dims32(g);
    p.cin_g = static_cast<int>(g.in_per_group());
    p.cout_g = static_cast<int>(g.out_per_group());
    p.c_tiles = static_cast<int>((p.cin_g + ForwardTc<T>::kTileElems - 1) /
                                 ForwardTc<T>::kTileElems);
    p.out_hw = g.out[1] * g.out[2];
    p.out_vol = g.out[0] * p.out_hw;
    p.M = g.batch * p.out_vol;
    p.N = p.cout_g;
    p.groups = g.groups;
    p.k_tiles = g.kernel_volume() * p.c_tiles;
    p.k_tiles_per_split = p.k_tiles;
    p.x = xc.const_data_ptr<T>();
    p.wp = wp.const_data_ptr<T>();
    p.bias = b.defined() ? b.const_data_ptr<T>() : nullptr;
    p.bias_stride = b.defined() ? b.stride(0) : 0;
    p.y = y.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) {
      p.xs[i] = xc.stride(i);
      p.ys[i] = y.stride(i);
    }
    if (p.N <= 64)
      launch<Tile128x64>(env, p, 1);
    else
      launch<Tile128x128>(env, p, 1);
  });
}

}  // namespace torchconv3d::gpu::tc
