// Host side of the v2 kernels (tensor-core GEMMs, depthwise stencil): which layers take
// them (planning), operand packing, and the launches. Decisions depend on shapes, dtype and
// torch's TF32 setting only, never on timing, so the same call always runs the same
// kernels (and sums in the same order). Layers no v2 kernel takes stay on v1
// (conv3d_kernels.cuh).
#pragma once

#include "depthwise.cuh"
#include "tc_iterators.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/flip.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

namespace torchconv3d::gpu {

// A 1-D grid of work_items blocks, capped (kernels on 1-D grids loop grid-stride).
template <typename Env>
dim3 grid_1d(const Env& env, int64_t work_items) {
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min(work_items, env.max_blocks))));
}

}  // namespace torchconv3d::gpu

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

inline int64_t chunk_elems(at::ScalarType t) {
  return 16 / static_cast<int64_t>(c10::elementSize(t));
}

// Input channels per group the tensor-core kernels see: whole 16-byte chunks (8 halves,
// 4 floats). An ungrouped layer with fewer (C_in = 3 stems, single-channel volumes) gets
// its input and weights zero-padded to the next chunk in the channels-last copies; zero
// times zero adds nothing, so the padded channels change no result, NaN/Inf included.
inline int64_t padded_in_channels(const Geometry& g, at::ScalarType t) {
  const int64_t chunk = chunk_elems(t), cin = g.in_per_group();
  if (cin % chunk == 0 || g.groups != 1) return cin;
  return ceil_div(cin, chunk) * chunk;
}

// Forward on tensor cores: channels in whole chunks (after padding); grouped layers with
// a channel tail and depthwise layers stay elsewhere.
inline bool forward_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  return dtype_ok(t, allow_tf32) && fits_32_bits(g) && g.out_per_group() > 0 &&
         padded_in_channels(g, t) % chunk_elems(t) == 0 &&
         (g.in_per_group() > 1 || g.groups == 1);
}

// Masked gathers need zero padding (any mode reads the same without padding) and kernel
// extents that fit the 10 mask bits per dimension.
inline bool masked_gather(const Geometry& g) {
  for (int i = 0; i < 3; ++i) {
    if (g.kernel[i] > 10) return false;
    const bool padded = g.pad_before[i] != 0 || g.pad_after[i] != 0;
    if (padded && g.mode[i] != PadMode::Zeros) return false;
  }
  return true;
}

// grad_input: output channels per group (its K) in whole chunks, zero padding, kernel
// extents up to 10 (masked gathers). The other padding modes fold border gradients back
// onto several inputs (v1's preimage gather).
inline bool grad_input_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  return dtype_ok(t, allow_tf32) && fits_32_bits(g) && g.zero_padding() &&
         masked_gather(g) && g.in_per_group() > 1 && g.out_per_group() % chunk_elems(t) == 0;
}

// grad_weight: both channel counts per group in whole chunks (its M and its N chunks).
inline bool grad_weight_ok(const Geometry& g, at::ScalarType t, bool allow_tf32) {
  return dtype_ok(t, allow_tf32) && fits_32_bits(g) &&
         (g.in_per_group() > 1 || g.groups == 1) &&
         padded_in_channels(g, t) % chunk_elems(t) == 0 &&
         g.out_per_group() % chunk_elems(t) == 0;
}

// How many K splits grad_weight uses (tensor-core and v1 kernels): a function of the shapes
// and the SM count only, so the summation order never changes between runs. Fewest splits
// whose blocks fill whole waves to at least 90% (a last wave mostly empty costs as much as
// a full one), each split at least 8 K tiles long and the partials (split_bytes each)
// within kMaxSplitBytes.
constexpr int64_t kMaxSplitBytes = int64_t(64) << 20;
inline int64_t grad_weight_splits(int64_t tiles, int64_t k_tiles, int64_t split_bytes,
                                  int64_t blocks_per_wave) {
  const int64_t most = std::max<int64_t>(
      1, std::min({k_tiles / 8, kMaxSplitBytes / std::max<int64_t>(1, split_bytes),
                   int64_t(65535)}));
  int64_t best = 1;
  double best_fill = 0;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t blocks = tiles * s;
    const int64_t waves = ceil_div(blocks, blocks_per_wave);
    const double fill = static_cast<double>(blocks) / static_cast<double>(waves * blocks_per_wave);
    if (fill >= 0.9) return s;
    if (fill > best_fill + 1e-9) {
      best = s;
      best_fill = fill;
    }
    if (waves > 4) break;  // enough parallelism; more splits only add partials
  }
  return best;
}

// t itself when its data starts on a 16-byte boundary (cp.async and 16-byte loads need
// it), else a copy. A fresh allocation always does; a view with an offset may not.
inline at::Tensor aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone();
}

// A channels-last copy of t unless it already is one, with a 16-byte aligned start; with
// `channels` above t's, the extra channels are zeros.
inline at::Tensor channels_last(const at::Tensor& t, int64_t channels = -1) {
  if (channels > t.size(1)) {
    std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
    sizes[1] = channels;
    at::Tensor c = at::empty(sizes, t.options(), at::MemoryFormat::ChannelsLast3d).zero_();
    c.narrow(1, 0, t.size(1)).copy_(t);
    return c;
  }
  return aligned(t.contiguous(at::MemoryFormat::ChannelsLast3d));
}

// Forward weights: [C_out][kd][kh][kw][C_in/groups], a weight tensor's channels-last layout
// (padded to `channels` input channels).
inline at::Tensor pack_forward_weight(const at::Tensor& w, int64_t channels) {
  return channels_last(w, channels);
}

// grad_input weights: [C_in][kd][kh][kw][C_out/groups], output channels of a group innermost.
inline at::Tensor pack_grad_input_weight(const at::Tensor& w, int64_t groups) {
  const int64_t cout_g = w.size(0) / groups;
  return aligned(w.reshape({groups, cout_g, w.size(1), w.size(2), w.size(3), w.size(4)})
                     .permute({0, 2, 3, 4, 5, 1})
                     .contiguous());
}

template <typename T>
Gather<T> gather_of(const at::Tensor& t) {
  Gather<T> g{};
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
  c.count = c.first < in ? static_cast<int>(ceil_div(in - c.first, stride)) : 0;
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
  const int64_t m_tiles = ceil_div(p.M, Cfg::BM);
  const int64_t n_tiles = ceil_div(p.N, Cfg::BN) * p.groups;
  if (m_tiles == 0 || n_tiles == 0) return;  // k_tiles == 0 writes zeros
  const dim3 grid(static_cast<unsigned>(std::min(m_tiles, env.max_grid_x)),
                  static_cast<unsigned>(std::min(n_tiles, env.max_grid_y)),
                  static_cast<unsigned>(splits));
  using Pipe = Pipeline<Cfg, typename Problem::Element, Problem::kAKMajor, Problem::kBKMajor>;
  env.launch_dynamic(tc_gemm_kernel<Cfg, Problem>, grid, dim3(Cfg::kThreads), Pipe::kSmemBytes,
                     p);
}

// 128-wide N tiles unless N is at most 64, or the operands are TF32: at two blocks per SM
// (128 registers) the 128x128 tile has no room left for the TF32 rounding, and spills.
template <typename Env, typename Problem>
void launch_by_width(const Env& env, const Problem& p) {
  if constexpr (std::is_same_v<typename Problem::Element, float>) {
    launch<Tile128x64>(env, p, 1);
  } else {
    if (p.N <= 64)
      launch<Tile128x64>(env, p, 1);
    else
      launch<Tile128x128>(env, p, 1);
  }
}

template <bool Masked, typename T, typename Env>
void forward_with(const Env& env, const Geometry& g, const at::Tensor& xc,
                  const at::Tensor& wp, const at::Tensor& b, at::Tensor& y) {
  const Dims32 d = dims32(g);
  ForwardTc<T, Masked> p;
  p.walk = KWalk<T>{};
  p.walk.channels = static_cast<int>(xc.size(1) / g.groups);
  p.walk.c_tiles = static_cast<int>(ceil_div(p.walk.channels, KWalk<T>::kTileElems));
  p.gather = gather_of<T>(xc);
  p.gather.head = head_frames<T>(g.head);
  for (int i = 0; i < 3; ++i) p.gather.mode[i] = g.mode[i];
  for (int i = 0; i < 3; ++i) {
    p.gather.extent[i] = d.in[i];
    p.gather.pad_before[i] = d.pad_before[i];
    p.gather.pad_after[i] = d.pad_after[i];
    p.gather.coef[i] = d.dil[i];
    p.walk.gstep[i] = d.dil[i] * p.gather.stride[2 + i];
    p.walk.taps[i] = p.walk.kernel[i] = d.k[i];
    p.walk.t0[i] = 0;
    p.walk.step[i] = 1;
    p.out[i] = d.out[i];
    p.stride[i] = d.stride[i];
  }
  p.packed = wp.const_data_ptr<T>();
  p.M = g.batch * g.out[0] * g.out[1] * g.out[2];
  p.N = g.out_per_group();
  p.groups = g.groups;
  p.k_tiles = p.k_tiles_per_split = p.walk.k_tiles();
  p.bias = b.defined() ? b.const_data_ptr<T>() : nullptr;
  p.bias_stride = b.defined() ? b.stride(0) : 0;
  p.y = y.mutable_data_ptr<T>();
  for (int i = 0; i < 5; ++i) p.ys[i] = y.stride(i);
  launch_by_width(env, p);
}

template <typename Env>
void forward(const Env& env, const Geometry& g, const at::Tensor& x, const at::Tensor& w,
             const at::Tensor& b, at::Tensor& y) {
  const int64_t channels = padded_in_channels(g, x.scalar_type());
  const at::Tensor xc = channels_last(x, channels);
  const at::Tensor wp = pack_forward_weight(w, channels);
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    if (masked_gather(g))
      forward_with<true, T>(env, g, xc, wp, b, y);
    else
      forward_with<false, T>(env, g, xc, wp, b, y);
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
    for (PadMode& m : p.gather.mode) m = PadMode::Zeros;
    p.packed = wp.const_data_ptr<T>();
    p.walk.channels = static_cast<int>(g.out_per_group());
    p.walk.c_tiles = static_cast<int>(ceil_div(p.walk.channels, KWalk<T>::kTileElems));
    p.N = g.in_per_group();
    p.groups = g.groups;
    p.gx = gx.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) p.gxs[i] = gx.stride(i);
    for (int i = 0; i < 3; ++i) {
      p.gather.extent[i] = d.out[i];
      p.gather.pad_before[i] = p.gather.pad_after[i] = 0;
      p.walk.kernel[i] = d.k[i];
      p.stride[i] = d.stride[i];
    }
    for (int rd = 0; rd < d.stride[0]; ++rd)
      for (int rh = 0; rh < d.stride[1]; ++rh)
        for (int rw = 0; rw < d.stride[2]; ++rw) {
          const int r[3] = {rd, rh, rw};
          for (int i = 0; i < 3; ++i) {
            const DgradClass c =
                dgrad_class(r[i], d.in[i], d.k[i], d.stride[i], d.dil[i], d.pad_before[i]);
            p.count[i] = c.count;
            p.first[i] = c.first;
            p.o_first[i] = c.o_first;
            p.gather.coef[i] = -c.o_step;
            p.walk.gstep[i] = -int64_t(c.o_step) * p.gather.stride[2 + i];
            p.walk.t0[i] = c.t0;
            p.walk.step[i] = c.step;
            p.walk.taps[i] = c.taps;
          }
          p.M = g.batch * int64_t(p.count[0]) * p.count[1] * p.count[2];
          p.k_tiles = p.k_tiles_per_split = p.walk.k_tiles();
          launch_by_width(env, p);
        }
  });
}

template <typename Cfg, typename Env, typename T>
void grad_weight_with(const Env& env, GradWeightTc<T> p, const at::Tensor& like) {
  const int64_t tiles = ceil_div(p.M, Cfg::BM) * ceil_div(p.N, Cfg::BN) * p.groups;
  const int64_t per_split = p.groups * p.M * p.N;
  int64_t splits = grad_weight_splits(tiles, p.k_tiles, per_split * int64_t(sizeof(float)),
                                      env.sm_count * Cfg::MinBlocks);
  p.k_tiles_per_split = ceil_div(p.k_tiles, splits);
  splits = ceil_div(p.k_tiles, p.k_tiles_per_split);  // no empty split
  at::Tensor workspace;
  if (splits > 1) {
    workspace = at::empty({splits * per_split}, like.options().dtype(at::kFloat));
    p.partial = workspace.mutable_data_ptr<float>();
  }
  launch<Cfg>(env, p, splits);
  if (splits > 1)
    env.launch(reduce_splits_kernel<T>, grid_1d(env, ceil_div(per_split, 256)), dim3(256), p,
               splits);
}

template <typename Env>
void grad_weight(const Env& env, const Geometry& g, const at::Tensor& gy, const at::Tensor& x,
                 at::Tensor& gw) {
  const at::Tensor gyc = channels_last(gy);
  const at::Tensor xc = channels_last(x, padded_in_channels(g, x.scalar_type()));
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const Dims32 d = dims32(g);
    GradWeightTc<T> p;
    p.M = g.out_per_group();
    p.cin_g = static_cast<int>(xc.size(1) / g.groups);
    p.cin_real = static_cast<int>(g.in_per_group());
    p.N = g.kernel_volume() * p.cin_g;
    p.groups = g.groups;
    const int vol = d.out[0] * d.out[1] * d.out[2];
    const int rows = kKBytes / static_cast<int>(sizeof(T));
    p.walk = PositionWalk{vol, static_cast<int>(ceil_div(vol, rows)), rows};
    p.k_tiles = g.batch * p.walk.tiles_per_sample;
    p.div_hw = FastDiv(static_cast<uint32_t>(d.out[1] * d.out[2]));
    p.div_w = FastDiv(static_cast<uint32_t>(d.out[2]));
    p.khw = d.k[1] * d.k[2];
    p.kw = d.k[2];
    static_cast<Dims32&>(p) = d;
    p.gy = gyc.const_data_ptr<T>();
    p.x = xc.const_data_ptr<T>();
    p.head = head_frames<T>(g.head);
    p.gw = gw.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) {
      p.gys[i] = gyc.stride(i);
      p.xs[i] = xc.stride(i);
      p.gws[i] = gw.stride(i);
    }
    p.partial = nullptr;
    if (p.M <= 64)
      grad_weight_with<Tile64x128>(env, p, gy);
    else
      grad_weight_with<Tile128x128>(env, p, gy);
  });
}

}  // namespace torchconv3d::gpu::tc

namespace torchconv3d::gpu::dw {

// One channel per group, multiplier 1, channels in whole 16-byte vectors; float16,
// bfloat16 and float32 (plain FMAs, so TF32 does not apply).
inline bool ok(const Geometry& g, at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16 || t == at::kFloat) && tc::fits_32_bits(g) &&
         g.in_per_group() == 1 && g.out_per_group() == 1 &&
         g.in_channels % tc::chunk_elems(t) == 0;
}

// grad_input as a forward stencil (stride 1, zero padding: the adjoint is a correlation
// with the flipped kernel).
inline bool grad_input_ok(const Geometry& g, at::ScalarType t) {
  return ok(g, t) && tc::masked_gather(g) && g.stride[0] == 1 && g.stride[1] == 1 &&
         g.stride[2] == 1;
}

// Depthwise weights [C][1][kd][kh][kw] as [kd][kh][kw][C].
inline at::Tensor pack_weight(const at::Tensor& w) {
  return tc::aligned(w.reshape({w.size(0), -1}).t().contiguous());
}

// Runs the stencil reading `in` (channels-last; behind a stream's `head`, in place) into
// `out`; a non-channels-last `out` receives a copy.
template <typename Env>
void run(const Env& env, const Dims32& d, const at::Tensor& in, const at::Tensor& wp,
         const at::Tensor& bias, at::Tensor& out, const DepthHead& head = {}) {
  const at::Tensor x = tc::channels_last(in);
  at::Tensor y = out.is_contiguous(at::MemoryFormat::ChannelsLast3d) &&
                         reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0
                     ? out
                     : at::empty_like(out, at::MemoryFormat::ChannelsLast3d);
  const at::Tensor b = bias.defined() ? tc::aligned(bias.contiguous()) : bias;
  tc::dispatch(in.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    Stencil<T> p;
    static_cast<Dims32&>(p) = d;
    p.vecs = static_cast<int>(x.size(1) / Lanes<T>::kCount);
    p.runs = static_cast<int>(ceil_div(d.out[2], kRun));
    p.items = x.size(0) * int64_t(d.out[0]) * d.out[1] * p.runs * p.vecs;
    p.x = x.const_data_ptr<T>();
    p.head = head_frames<T>(head);
    p.w = wp.const_data_ptr<T>();
    p.bias = b.defined() ? b.const_data_ptr<T>() : nullptr;
    p.y = y.mutable_data_ptr<T>();
    for (int i = 0; i < 5; ++i) {
      p.xs[i] = x.stride(i);
      p.ys[i] = y.stride(i);
    }
    if (p.items == 0) return;
    env.launch(stencil_kernel<T>, grid_1d(env, ceil_div(p.items, kThreads)), dim3(kThreads), p);
  });
  if (!y.is_same(out)) out.copy_(y);
}

template <typename Env>
void forward(const Env& env, const Geometry& g, const at::Tensor& x, const at::Tensor& w,
             const at::Tensor& b, at::Tensor& y) {
  run(env, dims32(g), x, pack_weight(w), b, y, g.head);
}

template <typename Env>
void grad_input(const Env& env, const Geometry& g, const at::Tensor& gy, const at::Tensor& w,
                at::Tensor& gx) {
  Dims32 d = dims32(g);
  for (int i = 0; i < 3; ++i) {
    std::swap(d.in[i], d.out[i]);
    d.pad_before[i] = (d.k[i] - 1) * d.dil[i] - d.pad_before[i];
    d.pad_after[i] = 0;  // only zeros: coordinates past grad_output read nothing
  }
  for (PadMode& m : d.mode) m = PadMode::Zeros;
  run(env, d, gy, pack_weight(w.flip({2, 3, 4})), at::Tensor(), gx);
}

// Chunks of positions for grad_weight: enough threads for 4 blocks per SM, chunks of at
// least 64 positions, float partials within tc::kMaxSplitBytes. Shapes and SM count only.
template <typename Env>
void grad_weight(const Env& env, const Geometry& g, const at::Tensor& gy, const at::Tensor& x,
                 at::Tensor& gw) {
  const at::Tensor gyc = tc::channels_last(gy);
  const at::Tensor xc = tc::channels_last(x);
  const Dims32 d = dims32(g);
  tc::dispatch(gy.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    WeightGrad<T> p;
    static_cast<Dims32&>(p) = d;
    p.vecs = static_cast<int>(g.in_channels / Lanes<T>::kCount);
    p.kvol = static_cast<int>(g.kernel_volume());
    p.positions = g.batch * int64_t(d.out[0]) * d.out[1] * d.out[2];
    const int64_t per_chunk = int64_t(p.kvol) * p.vecs;  // threads per chunk
    const int64_t by_threads = ceil_div(4 * env.sm_count * kThreads, per_chunk);
    const int64_t by_length = std::max<int64_t>(1, ceil_div(p.positions, 64));
    const int64_t by_memory = std::max<int64_t>(
        1, tc::kMaxSplitBytes / (per_chunk * Lanes<T>::kCount * int64_t(sizeof(float))));
    p.chunks = std::max<int64_t>(1, std::min({by_threads, by_length, by_memory}));
    p.chunk_len = std::max<int64_t>(1, ceil_div(p.positions, p.chunks));
    p.gy = gyc.const_data_ptr<T>();
    p.x = xc.const_data_ptr<T>();
    p.head = head_frames<T>(g.head);
    for (int i = 0; i < 5; ++i) {
      p.gys[i] = gyc.stride(i);
      p.xs[i] = xc.stride(i);
    }
    const at::Tensor partial =
        at::empty({p.chunks * per_chunk * Lanes<T>::kCount}, gy.options().dtype(at::kFloat));
    p.partial = partial.mutable_data_ptr<float>();
    env.launch(weight_partial_kernel<T>, grid_1d(env, ceil_div(p.chunks * per_chunk, kThreads)),
               dim3(kThreads), p);
    env.launch(weight_finish_kernel<T>,
               grid_1d(env, ceil_div(per_chunk * Lanes<T>::kCount, kThreads)), dim3(kThreads), p,
               gw.mutable_data_ptr<T>(), gw.stride(0), gw.stride(2), gw.stride(3),
               gw.stride(4));
  });
}

}  // namespace torchconv3d::gpu::dw
