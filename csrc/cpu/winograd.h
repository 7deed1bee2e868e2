// Winograd's minimal filtering F(m, 3) on the CPU: the pieces the forward
// (forward_winograd.cpp, where the method is described) and grad_weight
// (grad_weight_winograd.cpp) share — each axis's transform and tiles, which layers take it,
// and the buffers kept between calls.
#pragma once

#include "common.h"
#include "microkernel.h"

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace torchconv3d::cpu::winograd {

// One axis's transform: m outputs per tile from a inputs, and G (a x taps, row-major),
// the weight transform (B^T and A^T are the micro-kernels' winograd_input and _output).
struct Transform {
  int64_t m, a;
  std::vector<float> g;
};

inline Transform identity() { return {1, 1, {1.f}}; }

inline Transform make_transform(int64_t m) {
  if (m == 2) return {2, 4, {1, 0, 0, .5f, .5f, .5f, .5f, -.5f, .5f, 0, 0, 1}};
  return {4, 6,
          {1.f / 4, 0, 0, -1.f / 6, -1.f / 6, -1.f / 6, -1.f / 6, 1.f / 6, -1.f / 6,
           1.f / 24, 1.f / 12, 1.f / 6, 1.f / 24, -1.f / 12, 1.f / 6, 0, 0, 1}};
}

// One spatial dimension: its transform and its tiles. A tile's outputs are
// origin + i * step (i < m, those below the output size real); it reads input coordinates
// origin * stride - pad + j * step (j < a). With dilation, tiles run along each residue
// class of the outputs (step = dilation).
struct Axis {
  Transform t;
  int64_t step;
  std::vector<int64_t> origin;
};

inline Axis make_axis(const Geometry& g, int d, int64_t m) {
  const bool one_tap = g.kernel[d] == 1;
  Axis ax{one_tap ? identity() : make_transform(m), one_tap ? 1 : g.dilation[d], {}};
  const int64_t out = g.out[d];
  for (int64_t r = 0; r < std::min(ax.step, out); ++r)
    for (int64_t o = r; o < out; o += ax.t.m * ax.step) ax.origin.push_back(o);
  return ax;
}

// The transformed weights past this many bytes (a 512 -> 512 channel layer's would be
// 226 MB in bfloat16) leave the layer to the direct kernels.
constexpr int64_t kMaxWeightBytes = int64_t(64) << 20;

// The F(m, 3) tile edge for a dtype, or 0 where Winograd does not pay.
inline int64_t tile_outputs(const Geometry& g, at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) return 0;
  // Few channels: the transforms (per channel) outweigh the GEMMs (per channel pair).
  // Float32 at 32 channels (3D U-Net) lost 15%, at 64 (MedicalNet, R(2+1)D) it won
  // 17-20%; bfloat16 at 32 won 33%.
  const int64_t m = dtype == at::kFloat ? 2 : 4;
  const int64_t min_channels = dtype == at::kFloat ? 64 : 32;
  if (g.groups != 1 || std::min(g.in_channels, g.out_channels) < min_channels) return 0;
  int64_t products = 1, outputs = 1;  // per tile, against kvol * outputs direct
  for (int d = 0; d < 3; ++d) {
    if (g.kernel[d] == 1) continue;
    if (g.kernel[d] != 3 || g.stride[d] != 1) return 0;
    products *= m + 2;
    outputs *= m;
  }
  // Direct over Winograd products: float runs both on the float GEMM; bfloat16's direct
  // pass runs at twice that rate (vdpbf16ps), so it needs twice the saving.
  const double saving = double(g.kernel_volume() * outputs) / double(products);
  if (saving < (dtype == at::kFloat ? 2.0 : 3.5)) return 0;
  const int64_t weight_bytes = products * g.in_channels * round_up(g.out_channels, kLanes) * 4;
  return weight_bytes <= kMaxWeightBytes ? m : 0;
}

// The input coordinates (or -1: a padding zero) that a tile's a inputs read along axis d.
inline void tile_sources(const Geometry& g, int d, const Axis& ax, int64_t tile, int64_t* src) {
  const int64_t q0 = ax.origin[tile] * g.stride[d] - g.pad_before[d];
  for (int64_t j = 0; j < ax.t.a; ++j)
    src[j] = source_index(q0 + j * ax.step, g.in[d], g.pad_before[d], g.pad_after[d], g.mode[d]);
}

// How the forward runs a layer (forward_winograd.cpp), from its Geometry, m (0: the direct
// kernels take it) and the thread count; describe_plan prints it.
struct WinogradPlan {
  int64_t m = 0;
  int64_t comps = 0, tiles = 0;
  int64_t chunk = 0, chunks = 0;  // tiles per chunk, chunks
  bool shared = false;            // the threads share each chunk; else a chunk per thread
  int64_t caller_bytes = 0;       // kept by the calling thread
  int64_t thread_bytes = 0;       // kept by each thread that runs tasks
};
WinogradPlan plan_winograd(const Geometry& g, int64_t m, int64_t threads);

// The tiles of a layer in (sample, d, h, w) order.
struct TileGrid {
  int64_t td, th, tw;
  explicit TileGrid(const std::array<Axis, 3>& ax)
      : td(ax[0].origin.size()), th(ax[1].origin.size()), tw(ax[2].origin.size()) {}
  int64_t count(int64_t batch) const { return batch * td * th * tw; }
  // (sample, d, h, w) tile indices of tile q.
  std::array<int64_t, 4> coords(int64_t q) const {
    return {q / (tw * th * td), q / (tw * th) % td, q / tw % th, q % tw};
  }
};

// Where each input component of tile (id, ih, iw) reads its run of channels: in the
// sample's frames xn (height and width strides xs[1], xs[2]), or `zeros` for a padding zero.
template <typename B>
void input_sources(const Geometry& g, const std::array<Axis, 3>& ax, int64_t id, int64_t ih,
                   int64_t iw, const InputFrames<B>& xn, const std::array<int64_t, 3>& xs,
                   const B* zeros, const B** src) {
  int64_t sd[6], sh[6], sw[6];
  tile_sources(g, 0, ax[0], id, sd);
  tile_sources(g, 1, ax[1], ih, sh);
  tile_sources(g, 2, ax[2], iw, sw);
  const int64_t ah = ax[1].t.a, aw = ax[2].t.a;
  for (int64_t x = 0; x < ax[0].t.a; ++x)
    for (int64_t y = 0; y < ah; ++y)
      for (int64_t z = 0; z < aw; ++z)
        src[(x * ah + y) * aw + z] = sd[x] < 0 || sh[y] < 0 || sw[z] < 0
                                         ? zeros
                                         : xn.frame(0, sd[x]) + sh[y] * xs[1] + sw[z] * xs[2];
}

}  // namespace torchconv3d::cpu::winograd
