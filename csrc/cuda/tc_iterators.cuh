// Per-pass operand iterators of the tensor-core GEMM (tc_gemm.cuh): the only place a pass
// says where its operands live, how a K tile maps to taps and channels, and how a padding
// mode turns a padded coordinate into an input element or a zero (source_index). The main
// loop only sees 16-byte chunks landing in shared memory.
//
// Layouts: activations channels-last (NDHWC, channel stride 1, the native layout; the host
// transposes NCDHW once), weights packed once per call to [C_out][kd][kh][kw][C_in/groups].
// K runs tap-major, channels innermost, so one K tile is kKBytes of channels of one tap:
// contiguous in both operands. Channel counts must be multiples of a 16-byte chunk; a chunk
// past the last channel, a padding zero or a row past the GEMM edge is a zero-filled copy.
#pragma once

#include "../conv3d.h"
#include "tc_gemm.cuh"

#include <cstdint>

namespace torchconv3d::gpu::tc {

// Which 16-byte chunks of a (Rows x kChunks) stage tile this thread copies:
// rows first_row() + i * kRowStep, chunk column chunk().
template <int Rows, int Threads>
struct ChunkMap {
  static constexpr int kPerThread = Rows * kChunks / Threads;
  static constexpr int kRowStep = Threads / kChunks;
  __device__ static int row(int i) { return static_cast<int>(threadIdx.x) / kChunks + i * kRowStep; }
  __device__ static int chunk() { return static_cast<int>(threadIdx.x) % kChunks; }
  __device__ static unsigned char* dst(unsigned char* stage, int i) {
    return stage + row(i) * kRowBytes + chunk() * 16;
  }
};

// Spatial geometry in 32 bits (the host checks that it fits), (D, H, W) order.
struct Dims32 {
  int in[3], out[3], k[3], stride[3], dil[3], pad_before[3], pad_after[3];
  PadMode mode;

  __device__ int source(int dim, int q) const {
    return source_index<int>(q, in[dim], pad_before[dim], pad_after[dim], mode);
  }
};

// Forward: GEMM row m = output position (n, od, oh, ow) over the batch, column n = output
// channel in the group, k = (tap, input channel in the group).
template <typename T>
struct ForwardTc {
  static constexpr arch::MmaKind kMma = MmaFor<T>::kind;
  static constexpr int kTileElems = kKBytes / sizeof(T);  // channels per K tile
  static constexpr int kChunkElems = 16 / sizeof(T);

  int64_t M, N, groups, k_tiles, k_tiles_per_split;
  Dims32 d;
  int cin_g, cout_g, c_tiles;  // c_tiles: K tiles per tap
  int64_t out_vol, out_hw;
  const T* x;  // channels-last
  int64_t xs[5];
  const T* wp;  // packed
  const T* bias;
  int64_t bias_stride;
  T* y;
  int64_t ys[5];

  // Output position m, decoded once per tile row.
  struct Position {
    int64_t n;
    int od, oh, ow;
  };
  __device__ Position position(int64_t m) const {
    Position q;
    q.n = m / out_vol;
    const int64_t s = m - q.n * out_vol;
    q.od = static_cast<int>(s / out_hw);
    const int t = static_cast<int>(s - q.od * out_hw);
    q.oh = t / d.out[2];
    q.ow = t - q.oh * d.out[2];
    return q;
  }

  template <int Rows, int Threads>
  struct ActivationIterator {
    using Map = ChunkMap<Rows, Threads>;
    const ForwardTc& p;
    const T* base[Map::kPerThread];  // sample + group's first channel; null past M
    int jd[Map::kPerThread], jh[Map::kPerThread], jw[Map::kPerThread];  // tap (0,0,0)
    int c0, td, th, tw;

    __device__ void load(unsigned char* stage) const {
      const int ce = c0 + Map::chunk() * kChunkElems;
#pragma unroll
      for (int i = 0; i < Map::kPerThread; ++i) {
        const int id = p.d.source(0, jd[i] + td * p.d.dil[0]);
        const int ih = p.d.source(1, jh[i] + th * p.d.dil[1]);
        const int iw = p.d.source(2, jw[i] + tw * p.d.dil[2]);
        const bool ok = base[i] != nullptr && ce < p.cin_g && (id | ih | iw) >= 0;
        const T* src = ok ? base[i] + id * p.xs[2] + ih * p.xs[3] + iw * p.xs[4] + ce : p.x;
        arch::cp_async_16(Map::dst(stage, i), src, ok);
      }
    }
    __device__ void advance() {
      c0 += kTileElems;
      if (c0 < p.cin_g) return;
      c0 = 0;
      if (++tw < p.d.k[2]) return;
      tw = 0;
      if (++th < p.d.k[1]) return;
      th = 0;
      ++td;
    }
  };

  template <int Rows, int Threads>
  __device__ ActivationIterator<Rows, Threads> a_iterator(int64_t group, int64_t m0,
                                                          int64_t k_first) const {
    using Map = ChunkMap<Rows, Threads>;
    ActivationIterator<Rows, Threads> it{*this};
#pragma unroll
    for (int i = 0; i < Map::kPerThread; ++i) {
      const int64_t m = m0 + Map::row(i);
      const Position q = position(m < M ? m : 0);
      it.base[i] = m < M ? x + q.n * xs[0] + group * cin_g * xs[1] : nullptr;
      it.jd[i] = q.od * d.stride[0] - d.pad_before[0];
      it.jh[i] = q.oh * d.stride[1] - d.pad_before[1];
      it.jw[i] = q.ow * d.stride[2] - d.pad_before[2];
    }
    const int tap = static_cast<int>(k_first / c_tiles);
    it.c0 = static_cast<int>(k_first - int64_t(tap) * c_tiles) * kTileElems;
    it.td = tap / (d.k[1] * d.k[2]);
    it.th = tap / d.k[2] - it.td * d.k[1];
    it.tw = tap % d.k[2];
    return it;
  }

  template <int Rows, int Threads>
  struct WeightIterator {
    using Map = ChunkMap<Rows, Threads>;
    const ForwardTc& p;
    const T* row[Map::kPerThread];  // this output channel's packed filter; null past N
    int c0;
    int64_t tap_offset;

    __device__ void load(unsigned char* stage) const {
      const int ce = c0 + Map::chunk() * kChunkElems;
#pragma unroll
      for (int i = 0; i < Map::kPerThread; ++i) {
        const bool ok = row[i] != nullptr && ce < p.cin_g;
        arch::cp_async_16(Map::dst(stage, i), ok ? row[i] + tap_offset + ce : p.wp, ok);
      }
    }
    __device__ void advance() {
      c0 += kTileElems;
      if (c0 < p.cin_g) return;
      c0 = 0;
      tap_offset += p.cin_g;
    }
  };

  template <int Rows, int Threads>
  __device__ WeightIterator<Rows, Threads> b_iterator(int64_t group, int64_t n0,
                                                      int64_t k_first) const {
    using Map = ChunkMap<Rows, Threads>;
    WeightIterator<Rows, Threads> it{*this};
    const int64_t filter = int64_t(d.k[0]) * d.k[1] * d.k[2] * cin_g;
#pragma unroll
    for (int i = 0; i < Map::kPerThread; ++i) {
      const int64_t n = n0 + Map::row(i);
      it.row[i] = n < N ? wp + (group * cout_g + n) * filter : nullptr;
    }
    const int64_t tap = k_first / c_tiles;
    it.c0 = static_cast<int>(k_first - tap * c_tiles) * kTileElems;
    it.tap_offset = tap * cin_g;
    return it;
  }

  struct Store {
    const ForwardTc& p;
    int64_t group;
    __device__ int64_t row(int64_t m) const {
      const Position q = p.position(m);
      return q.n * p.ys[0] + q.od * p.ys[2] + q.oh * p.ys[3] + q.ow * p.ys[4];
    }
    __device__ void store(int64_t offset, int64_t n, float v) const {
      const int64_t co = group * p.cout_g + n;
      if (p.bias != nullptr) v += static_cast<float>(p.bias[co * p.bias_stride]);
      p.y[offset + co * p.ys[1]] = static_cast<T>(v);
    }
  };
  __device__ Store store(int64_t group, unsigned /*split*/) const { return {*this, group}; }
};

}  // namespace torchconv3d::gpu::tc
