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
#include <numeric>

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
         g.out_per_group() < kLimit &&
         g.kernel_volume() * std::max(g.in_per_group(), g.out_per_group()) < kLimit;
}

// Spatial geometry in 32 bits (fits_32_bits checked), (D, H, W) order.
struct Dims32 {
  int in[3], out[3], k[3], stride[3], dil[3], pad_before[3], pad_after[3];
};

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
  return d;
}

inline int64_t chunk_elems(at::ScalarType t) {
  return 16 / static_cast<int64_t>(c10::elementSize(t));
}

// The forward pass runs on tensor cores when input channels per group fill whole 16-byte
// chunks (8 halves, 4 floats); others (C_in = 3 stems, depthwise) stay on the v1 kernels.
inline bool forward_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  return dtype_ok(t, allow_tf32) && fits_32_bits(g) && g.in_per_group() > 1 &&
         g.in_per_group() % chunk_elems(t) == 0 && g.out_per_group() > 0;
}

// grad_input: output channels per group (its K) in whole chunks, zero padding. The other
// padding modes fold border gradients back onto several inputs (v1's preimage gather).
inline bool grad_input_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  return dtype_ok(t, allow_tf32) && fits_32_bits(g) && g.mode == PadMode::Zeros &&
         g.in_per_group() > 1 && g.out_per_group() % chunk_elems(t) == 0;
}

// A channels-last copy of t unless it already is one, with a 16-byte aligned start.
inline at::Tensor channels_last(const at::Tensor& t) {
  at::Tensor c = t.contiguous(at::MemoryFormat::ChannelsLast3d);
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0)
    c = c.clone(at::MemoryFormat::ChannelsLast3d);
  return c;
}

// Forward weights: [C_out][kd][kh][kw][C_in/groups], a weight tensor's channels-last layout.
inline at::Tensor pack_forward_weight(const at::Tensor& w) { return channels_last(w); }

// grad_input weights: [C_in][kd][kh][kw][C_out/groups], output channels of a group innermost.
inline at::Tensor pack_grad_input_weight(const at::Tensor& w, int64_t groups) {
  const int64_t cout_g = w.size(0) / groups;
  return w.reshape({groups, cout_g, w.size(1), w.size(2), w.size(3), w.size(4)})
      .permute({0, 2, 3, 4, 5, 1})
      .contiguous();
}

template <typename T>
Gather<T> gather_of(const at::Tensor& t) {
  Gather<T> g;
  g.data = t.const_data_ptr<T>();
  for (int i = 0; i < 5; ++i) g.stride[i] = t.stride(i);
  return g;
}

// One residue class of the strided-dgrad decomposition along one dimension (see
// GradInputTc): input indices first + stride * j (j < count), taps t0 + step * q (q < taps).
struct DgradClass {
  int first, count, t0, step, taps, o_first, o_step;
};
inline DgradClass dgrad_class(int r, int in, int k, int stride, int dil, int pad_before) {
  DgradClass c{};
  c.first = ((r - pad_before) % stride + stride) % stride;
  c.count = c.first < in ? (in - c.first + stride - 1) / stride : 0;
  c.step = stride / std::gcd(stride, dil);
  c.o_step = c.step * dil / stride;
  c.t0 = -1;
  for (int t = 0; t < k && c.t0 < 0; ++t)
    if ((t * dil) % stride == r) c.t0 = t;
  if (c.t0 < 0) {
    c.t0 = 0;
    c.taps = 0;  // no tap reaches this class: its gradient is zero
  } else {
    c.taps = (k - 1 - c.t0) / c.step + 1;
  }
  c.o_first = (c.first + pad_before - c.t0 * dil) / stride;
  return c;
}

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
  if (m_tiles == 0 || n_tiles == 0) return;  // k_tiles == 0 writes zeros
  const dim3 grid(static_cast<unsigned>(std::min(m_tiles, env.max_grid_x)),
                  static_cast<unsigned>(std::min(n_tiles, env.max_grid_y)),
                  static_cast<unsigned>(splits));
  env.launch_dynamic(tc_gemm_kernel<Cfg, Problem>, grid, dim3(Cfg::kThreads), Cfg::kSmemBytes,
                     p);
}

template <typename Cfg64, typename Cfg128, typename Env, typename Problem>
void launch_by_width(const Env& env, const Problem& p) {
  if (p.N <= 64)
    launch<Cfg64>(env, p, 1);
  else
    launch<Cfg128>(env, p, 1);
}

template <typename Env>
void forward(const Env& env, const Geometry& g, const at::Tensor& x, const at::Tensor& w,
             const at::Tensor& b, at::Tensor& y) {
  const at::Tensor xc = channels_last(x);
  const at::Tensor wp = pack_forward_weight(w);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const Dims32 d = dims32(g);
    ForwardTc<T> p;
    p.walk = KWalk<T>(static_cast<int>(g.in_per_group()), d.k);
    p.gather = gather_of<T>(xc);
    for (int i = 0; i < 3; ++i) {
      p.gather.extent[i] = d.in[i];
      p.gather.pad_before[i] = d.pad_before[i];
      p.gather.pad_after[i] = d.pad_after[i];
      p.gather.coef[i] = d.dil[i];
      p.packed.kernel[i] = d.k[i];
      p.packed.t0[i] = 0;
      p.packed.step[i] = 1;
      p.out[i] = d.out[i];
      p.stride[i] = d.stride[i];
    }
    p.gather.mode = g.mode;
    p.packed.data = wp.const_data_ptr<T>();
    p.M = g.batch * g.out[0] * g.out[1] * g.out[2];
    p.N = g.out_per_group();
    p.groups = g.groups;
    p.k_tiles = p.k_tiles_per_split = p.walk.k_tiles();
    p.bias = b.defined() ? b.const_data_ptr<T>() : nullptr;
    p.bias_stride = b.defined() ? b.stride(0) : 0;
    p.y = y.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) p.ys[i] = y.stride(i);
    launch_by_width<Tile128x64, Tile128x128>(env, p);
  });
}

// One GEMM per residue class of input positions (stride_d * stride_h * stride_w classes;
// one for stride 1), each over only the taps that reach its positions.
template <typename Env>
void grad_input(const Env& env, const Geometry& g, const at::Tensor& gy, const at::Tensor& w,
                at::Tensor& gx) {
  const at::Tensor gyc = channels_last(gy);
  const at::Tensor wp = pack_grad_input_weight(w, g.groups);
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const Dims32 d = dims32(g);
    GradInputTc<T> p;
    p.gather = gather_of<T>(gyc);
    p.gather.mode = PadMode::Zeros;
    p.packed.data = wp.const_data_ptr<T>();
    p.N = g.in_per_group();
    p.groups = g.groups;
    p.gx = gx.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) p.gxs[i] = gx.stride(i);
    for (int i = 0; i < 3; ++i) {
      p.gather.extent[i] = d.out[i];
      p.gather.pad_before[i] = p.gather.pad_after[i] = 0;
      p.packed.kernel[i] = d.k[i];
      p.stride[i] = d.stride[i];
    }
    for (int rd = 0; rd < d.stride[0]; ++rd)
      for (int rh = 0; rh < d.stride[1]; ++rh)
        for (int rw = 0; rw < d.stride[2]; ++rw) {
          const int r[3] = {rd, rh, rw};
          int taps[3];
          for (int i = 0; i < 3; ++i) {
            const DgradClass c =
                dgrad_class(r[i], d.in[i], d.k[i], d.stride[i], d.dil[i], d.pad_before[i]);
            p.count[i] = c.count;
            p.first[i] = c.first;
            p.o_first[i] = c.o_first;
            p.gather.coef[i] = -c.o_step;
            p.packed.t0[i] = c.t0;
            p.packed.step[i] = c.step;
            taps[i] = c.taps;
          }
          p.walk = KWalk<T>(static_cast<int>(g.out_per_group()), taps);
          p.M = g.batch * int64_t(p.count[0]) * p.count[1] * p.count[2];
          p.k_tiles = p.k_tiles_per_split = p.walk.k_tiles();
          launch_by_width<Tile128x64, Tile128x128>(env, p);
        }
  });
}

}  // namespace torchconv3d::gpu::tc
