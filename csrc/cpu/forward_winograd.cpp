// Forward by Winograd's minimal filtering, F(m, 3), for layers whose every dimension has
// either 3 taps at stride 1 (any dilation) or 1 tap, channels innermost.
//
// Along a 3-tap dimension, m outputs of a tile are computed from its a = m + 2 inputs as
//   y = A^T [(G w) . (B^T d)]
// (Lavin & Gray 2016): a products per tile instead of 3 m. Applied along each dimension
// in turn, a tile of m_d x m_h x m_w outputs becomes a_d a_h a_w independent "components",
// and each component is a plain GEMM over channels: the tiles' transformed inputs
// V[comp][tile][C_in] times the transformed weights U[comp][C_in][C_out]. A 3x3x3 layer
// then multiplies 27 m^3 / (m + 2)^3 times less: 3.4x for F(2, 3), 8x for F(4, 3).
//
// Accuracy decides m. F(2, 3)'s transforms add and halve; in float its error is that of
// the direct sum (~5e-7 of the largest output on 128-channel 3x3x3 layers). F(4, 3)'s
// coefficients reach 8 and 1/24 and its error is ~3e-5 in float: far below bfloat16's
// rounding (4e-3), not below float's. So float32 takes F(2, 3) and bfloat16 F(4, 3), both
// summed in float (bfloat16 operands are exact in float; the products then run on the
// float GEMM at half vdpbf16ps's rate, 4x fewer cycles than the direct bfloat16 pass).
//
// Non-finite values: Winograd mixes inputs, so an Inf meets -Inf or 0 where the direct sum
// would not and gives NaN where torch gives Inf. Every coefficient column of B^T, G and
// A^T has a nonzero entry, so a non-finite input or weight (or an overflow) always shows
// as a non-finite value in the tile's outputs; the output transform reports it and the
// layer is then recomputed by the direct kernels, which give torch's values.
#include "kernels.h"
#include "packing.h"
#include "winograd.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

namespace torchconv3d::cpu {
namespace {

using namespace winograd;

template <typename T>
bool winograd_forward(const Geometry& g, int64_t m, const at::Tensor& input,
                      const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output) {
  using B = std::conditional_t<std::is_same_v<T, float>, float, uint16_t>;
  const MicroKernels<float>& mk = micro_kernels(float{});
  const std::array<Axis, 3> ax{make_axis(g, 0, m), make_axis(g, 1, m), make_axis(g, 2, m)};
  const int64_t ms[3] = {ax[0].t.m, ax[1].t.m, ax[2].t.m};
  const int64_t ad = ax[0].t.a, ah = ax[1].t.a, aw = ax[2].t.a, hws = ah * aw;
  const int64_t comps = ad * hws;
  const int64_t cin = g.in_channels, cout = g.out_channels;
  const int64_t cp = round_up(cin, kLanes), cols = round_up(cout, kLanes);
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2], kvol = kd * kh * kw;
  const TileGrid grid(ax);
  const int64_t tiles = grid.count(g.batch);
  if (tiles == 0) return true;

  // The weights transformed along w and h: per (kernel depth, h and w component) a slice
  // of C_in x C_out in panels of kPanel output channels, [panel][C_in][panel width] (the
  // weights one GEMM call reads contiguous). The d transform (finish_weights) comes after:
  // once for all components, or per component just before its GEMMs where all of them
  // would not stay in cache. A task per (panel, block of 16 input channels).
  constexpr int64_t kPanel = 64, kBlock = 16;
  const int64_t slice = cin * cols;
  const int64_t panels = ceil_div(cols, kPanel), blocks = ceil_div(cin, kBlock);
  float* t2 = kept_buffer(kWeights, kd * hws * slice);
  const at::Tensor w = weight_as<float>(weight);
  const float* wp = w.const_data_ptr<float>();
  at::parallel_for(0, panels * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> src(kvol * kBlock * kPanel), t1(kd * kh * aw * kBlock * kPanel);
    const float* in[kMaxTransform];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j0 = task / blocks * kPanel, e0 = task % blocks * kBlock;
      const int64_t pw = std::min(kPanel, cols - j0), eb = std::min(kBlock, cin - e0);
      const int64_t n = eb * pw;  // the batch: [channel][panel width]
      // [tap][channel][panel width]; per channel, the panel's runs of taps (pw lines) stay
      // in L1 while every tap is taken from them.
      const int64_t live = std::min(pw, cout - j0);
      for (int64_t e = 0; e < eb; ++e) {
        const float* taps = wp + (j0 * cin + e0 + e) * kvol;
        for (int64_t k = 0; k < kvol; ++k) {
          float* d = src.data() + (k * eb + e) * pw;
          for (int64_t j = 0; j < live; ++j) d[j] = taps[j * cin * kvol + k];
          std::fill(d + live, d + pw, 0.f);
        }
      }
      for (int64_t r = 0; r < kd * kh; ++r) {  // along w: [kd][kh][aw][batch]
        for (int64_t t = 0; t < kw; ++t) in[t] = src.data() + (r * kw + t) * n;
        mk.transform(aw, kw, ax[2].t.g.data(), in, n, t1.data() + r * aw * n, n);
      }
      for (int64_t i = 0; i < kd; ++i)  // along h, into the kept slices
        for (int64_t z = 0; z < aw; ++z) {
          for (int64_t t = 0; t < kh; ++t) in[t] = t1.data() + ((i * kh + t) * aw + z) * n;
          mk.transform(ah, kh, ax[1].t.g.data(), in, n,
                       t2 + (i * hws + z) * slice + j0 * cin + e0 * pw, aw * slice);
        }
    }
  });

  const std::vector<float> bvec = bias_or_zeros<float>(g, bias);

  T* yp = output.mutable_data_ptr<T>();
  const auto xs = spatial_strides(input), ys = spatial_strides(output);
  const int64_t ysn = output.stride(0), ysc = output.stride(1);

  // The three steps of a chunk of tiles from tile0, on the chunk's tiles or components
  // [begin, end); v [comp][tile][C_in] and prod [comp][tile][C_out] hold `cap` tiles.
  // Each tile's inputs, read where they lie (a padding zero reads a row of zeros).
  const auto inputs = [&](int64_t tile0, int64_t cap, float* v, int64_t begin, int64_t end) {
    std::vector<B> zeros(cp, B(0));
    std::vector<const B*> src(comps);
    for (int64_t i = begin; i < end; ++i) {
      const auto [n, id, ih, iw] = grid.coords(tile0 + i);
      input_sources(g, ax, id, ih, iw, input_frames<B>(g, input, n, 0), xs, zeros.data(),
                      src.data());
      if constexpr (std::is_same_v<B, float>) {
        mk.winograd_input(ms, src.data(), cin, v + i * cp, cap * cp);
      } else {
        mk.winograd_input_bf16(ms, src.data(), cin, v + i * cp, cap * cp);
      }
    }
  };
  // One GEMM per component, [tiles x C_in] x [C_in x C_out], its weights finished from the
  // slices first (into ubuf); components with the same (h, w) run in a row, sharing slices.
  // The weights of component k = x * hws + hw: its d transform from the slices.
  const auto finish_weights = [&](int64_t x, int64_t hw, float* u) {
    const float* in[kMaxTransform];
    for (int64_t t = 0; t < kd; ++t) in[t] = t2 + (t * hws + hw) * slice;
    mk.transform(1, kd, ax[0].t.g.data() + x * kd, in, slice, u, slice);
  };
  // u_all: every component's weights, or nullptr: finished here into ubuf.
  const auto gemms = [&](int64_t count, int64_t cap, const float* v, float* prod,
                         const float* u_all, float* ubuf, int64_t begin, int64_t end) {
    const int64_t offs = 0;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t hw = r / ad, x = r % ad, k = x * hws + hw;
      const float* u = kd == 1 ? t2 + hw * slice : u_all ? u_all + k * slice : ubuf;
      if (kd != 1 && !u_all) finish_weights(x, hw, ubuf);
      for (int64_t j0 = 0; j0 < cols; j0 += kPanel) {
        const int64_t pw = std::min(kPanel, cols - j0);
        for (int64_t e0 = 0; e0 < cin; e0 += 128)  // (128 channels x a panel stay in L1)
          mk.gemm_cl(count, pw, u + j0 * cin + e0 * pw, pw, cin * pw, 1,
                     std::min<int64_t>(128, cin - e0), v + k * cap * cp + e0, cp, &offs,
                     prod + k * cap * cols + j0, cols, e0 > 0);
      }
    }
  };
  // Each tile's outputs, stored with the bias; false at an output that is not finite.
  const auto outputs = [&](int64_t tile0, int64_t cap, const float* prod, int64_t begin,
                           int64_t end) {
    std::vector<float> out(ms[0] * ms[1] * ms[2] * cols);
    for (int64_t i = begin; i < end; ++i) {
      if (!mk.winograd_output(ms, prod + i * cols, cap * cols, cols, out.data())) return false;
      const auto [n, id, ih, iw] = grid.coords(tile0 + i);
      T* yn = yp + n * ysn;
      for (int64_t x = 0; x < ms[0]; ++x) {
        const int64_t od = ax[0].origin[id] + x * ax[0].step;
        if (od >= g.out[0]) break;
        for (int64_t y = 0; y < ms[1]; ++y) {
          const int64_t oh = ax[1].origin[ih] + y * ax[1].step;
          if (oh >= g.out[1]) break;
          for (int64_t z = 0; z < ms[2]; ++z) {
            const int64_t ow = ax[2].origin[iw] + z * ax[2].step;
            if (ow >= g.out[2]) break;
            store_run(yn + od * ys[0] + oh * ys[1] + ow * ys[2], ysc,
                      out.data() + ((x * ms[1] + y) * ms[2] + z) * cols, bvec.data(), cout);
          }
        }
      }
    }
    return true;
  };

  const WinogradPlan p = plan_winograd(g, m, at::get_num_threads());
  const bool shared = p.shared;
  const int64_t chunk = p.chunk, chunks = p.chunks;
  std::atomic<bool> finite{true};
  if (shared) {
    // The threads share each chunk: its tiles, then its components, then its tiles.
    float* v = kept_buffer(kInputs, comps * chunk * cp);
    float* prod = kept_buffer(kProducts, comps * chunk * cols);
    for (int64_t tile0 = 0; tile0 < tiles && finite.load(); tile0 += chunk) {
      const int64_t count = std::min(chunk, tiles - tile0);
      at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
        inputs(tile0, chunk, v, begin, end);
      });
      at::parallel_for(0, comps, 1, [&](int64_t begin, int64_t end) {
        gemms(count, chunk, v, prod, nullptr,
              kd == 1 ? nullptr : kept_buffer(kComponentWeights, slice), begin, end);
      });
      at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
        if (!outputs(tile0, chunk, prod, begin, end)) finite.store(false);
      });
    }
  } else {
    // A thread takes whole chunks, small enough for its caches; every chunk reads all the
    // weights, finished once here.
    float* u_all = kd == 1 ? nullptr : kept_buffer(kAllWeights, comps * slice);
    if (u_all)
      at::parallel_for(0, comps, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) finish_weights(k / hws, k % hws, u_all + k * slice);
      });
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      float* v = kept_buffer(kInputs, comps * chunk * cp);
      float* prod = kept_buffer(kProducts, comps * chunk * cols);
      for (int64_t c = begin; c < end && finite.load(std::memory_order_relaxed); ++c) {
        const int64_t tile0 = c * chunk, count = std::min(chunk, tiles - tile0);
        inputs(tile0, chunk, v, 0, count);
        gemms(count, chunk, v, prod, u_all, nullptr, 0, comps);
        if (!outputs(tile0, chunk, prod, 0, count)) finite.store(false);
      }
    });
  }
  return finite.load();
}

}  // namespace

namespace winograd {

// How chunks of tiles are run. Every chunk's GEMMs read all the transformed weights U
// (comps x C_in x C_out floats: 8x the weights for F(4, 3) in 3-D), while its transformed
// inputs and products (V and M) are cheap to read from L2 and costly from memory. With
// U up to kSharedWeights, each thread runs whole chunks of about max(kChunkBytes, U / 2)
// of V and M (at most 4x that): more tiles per read of U as U grows. Past it (C3D's
// 128 -> 256 channels in bfloat16: 28 MB), U is read once per chunk of kSharedChunkBytes,
// the threads sharing its tiles and then its components. Measured on Zen 5, 2 threads
// (ms, bfloat16): 3D U-Net 32 channels 1.7 at 1 MB per chunk vs 3.0 at 4 MB; R3D-18 128
// channels 2.6 shared vs 3.6; C3D 8.3 shared vs 12.1.
constexpr int64_t kChunkBytes = int64_t(1) << 20;
constexpr int64_t kSharedWeights = int64_t(12) << 20;
constexpr int64_t kSharedChunkBytes = int64_t(32) << 20;

WinogradPlan plan_winograd(const Geometry& g, int64_t m, int64_t threads) {
  WinogradPlan p;
  p.m = m;
  if (m == 0) return p;
  const std::array<Axis, 3> ax{make_axis(g, 0, m), make_axis(g, 1, m), make_axis(g, 2, m)};
  const int64_t hws = ax[1].t.a * ax[2].t.a;
  p.comps = ax[0].t.a * hws;
  p.tiles = TileGrid(ax).count(g.batch);
  const int64_t cp = round_up(g.in_channels, kLanes), cols = round_up(g.out_channels, kLanes);
  const int64_t f = sizeof(float), slice = g.in_channels * cols * f;
  const int64_t per_tile = p.comps * (cp + cols) * f, u_bytes = p.comps * slice;
  p.shared = u_bytes > kSharedWeights;
  const int64_t budget =
      p.shared ? kSharedChunkBytes : std::clamp(u_bytes / 2, kChunkBytes, 4 * kChunkBytes);
  p.chunks = ceil_div(p.tiles, std::max<int64_t>(1, budget / per_tile));
  if (!p.shared) p.chunks = std::min(p.tiles, round_up(p.chunks, threads));
  p.chunk = p.tiles == 0 ? 0 : ceil_div(p.tiles, p.chunks);
  p.chunks = p.tiles == 0 ? 0 : ceil_div(p.tiles, p.chunk);
  // The kept buffers (kept_buffer): the weights along w and h, then either a chunk's V and M
  // on the calling thread and a component's weights per thread (shared), or every
  // component's weights on the calling thread and a chunk per thread.
  const int64_t slices = g.kernel[0] * hws * slice, chunk_bytes = p.chunk * per_tile;
  const int64_t finished = g.kernel[0] == 1 ? 0 : p.shared ? slice : u_bytes;
  p.caller_bytes = slices + (p.shared ? chunk_bytes : finished);
  p.thread_bytes = p.shared ? finished : chunk_bytes;
  return p;
}

}  // namespace winograd

bool grad_input_through_winograd(const Geometry& g, const at::Tensor& grad_output) {
  // A stride-1 layer's grad_input is one forward with the same kernel, dilation and
  // channel counts (swapped), so the forward's rule answers for it.
  return grad_output.scalar_type() == at::kFloat && grad_output.stride(1) != 1 &&
         g.stride[0] == 1 && g.stride[1] == 1 && g.stride[2] == 1 &&
         winograd::tile_outputs(g, at::kFloat) != 0;
}

bool forward_winograd(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                      const at::Tensor& bias, at::Tensor& output) {
  const int64_t m = winograd::tile_outputs(g, input.scalar_type());
  if (m == 0 || micro_kernels(float{}).winograd_input == nullptr) return false;
  // The transforms read and write runs of channels: planar tensors go through channels_last
  // copies (a store per element into a planar output cost more than the layer's GEMMs).
  // A copy would hold the input tensor alone: a stream's head is read in place, so a
  // planar stream takes the direct kernels.
  if (g.head.frames > 0 && input.stride(1) != 1) return false;
  const at::Tensor x = input.stride(1) == 1 ? input : to_channels_last(input, kCopy);
  at::Tensor y = output.stride(1) == 1
                     ? output
                     : layout_scratch(output, at::MemoryFormat::ChannelsLast3d, kCopy2);
  const bool done = input.scalar_type() == at::kFloat
                        ? winograd_forward<float>(g, m, x, weight, bias, y)
                        : winograd_forward<c10::BFloat16>(g, m, x, weight, bias, y);
  if (done && !y.is_same(output)) copy_layout(output, y);
  return done;
}

}  // namespace torchconv3d::cpu
