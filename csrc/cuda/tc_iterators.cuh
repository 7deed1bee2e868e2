// Per-pass operand iterators of the tensor-core GEMM (tc_gemm.cuh): the only place a pass
// says where its operands live, how a K tile maps to taps and channels, and how a padding
// mode turns a padded coordinate into an input element or a zero (source_index). The main
// loop only sees 16-byte chunks landing in shared memory.
//
// Layouts: activations channels-last (NDHWC, channel stride 1, the native layout; the host
// transposes NCDHW once), weights packed once per call so that a GEMM row's K is contiguous.
// K runs over a box of taps (q0, q1, q2), channels innermost, so one K tile is kKBytes of
// channels at one tap: contiguous in both operands. Channel counts must be multiples of a
// 16-byte chunk; a chunk past the last channel, a padding zero or a row past the GEMM edge
// is a zero-filled copy.
//
// Two iterators serve every K-contiguous pass:
// - GatherIterator (A): GEMM rows are positions of a channels-last tensor; at tap q a row
//   with origin j reads coordinate j + q * coef along each dimension, through source_index
//   (forward: the input, coef = dilation, the layer's padding mode; grad_input: grad_output,
//   coef = -(output step per tap), zeros outside the output).
// - PackedIterator (B): GEMM columns are rows of a packed [rows][kd][kh][kw][channels]
//   tensor; box tap q is kernel tap t0 + q * step along each dimension.
#pragma once

#include "../conv3d.h"
#include "tc_gemm.cuh"

#include <cstdint>

namespace torchconv3d::gpu::tc {

// Which 16-byte chunks of a (Rows x kChunks) stage tile this thread copies:
// rows row(i) = first + i * kRowStep, chunk column chunk().
template <int Rows, int Threads>
struct ChunkMap {
  static constexpr int kPerThread = Rows * kChunks / Threads;
  static constexpr int kRowStep = Threads / kChunks;
  __device__ static int row(int i) {
    return static_cast<int>(threadIdx.x) / kChunks + i * kRowStep;
  }
  __device__ static int chunk() { return static_cast<int>(threadIdx.x) % kChunks; }
  __device__ static unsigned char* dst(unsigned char* stage, int i) {
    return stage + row(i) * kRowBytes + chunk() * 16;
  }
};

// The walk over K: tile -> (box tap q[3], first channel c0), channels innermost.
template <typename T>
struct KWalk {
  static constexpr int kTileElems = kKBytes / sizeof(T);  // channels per K tile
  int channels, c_tiles, taps[3];

  KWalk() = default;
  __host__ KWalk(int channels_, const int (&box)[3])
      : channels(channels_), c_tiles((channels_ + kTileElems - 1) / kTileElems) {
    for (int i = 0; i < 3; ++i) taps[i] = box[i];
  }
  __host__ __device__ int64_t k_tiles() const {
    return int64_t(taps[0]) * taps[1] * taps[2] * c_tiles;
  }
  __device__ void start(int64_t k_tile, int& c0, int (&q)[3]) const {
    c0 = q[0] = q[1] = q[2] = 0;
    if (k_tiles() == 0) return;  // an empty box: nothing will be loaded
    const int tap = static_cast<int>(k_tile / c_tiles);
    c0 = static_cast<int>(k_tile - int64_t(tap) * c_tiles) * kTileElems;
    q[0] = tap / (taps[1] * taps[2]);
    q[1] = tap / taps[2] - q[0] * taps[1];
    q[2] = tap % taps[2];
  }
  // Returns whether the tap changed.
  __device__ bool next(int& c0, int (&q)[3]) const {
    c0 += kTileElems;
    if (c0 < channels) return false;
    c0 = 0;
    if (++q[2] < taps[2]) return true;
    q[2] = 0;
    if (++q[1] < taps[1]) return true;
    q[1] = 0;
    ++q[0];
    return true;
  }
};

// A channels-last tensor read at coordinate origin + q * coef per dimension.
template <typename T>
struct Gather {
  const T* data;
  int64_t stride[5];  // N, C, D, H, W in elements; C is 1
  int extent[3], pad_before[3], pad_after[3], coef[3];
  PadMode mode;
};

template <typename T, int Rows, int Threads>
struct GatherIterator {
  using Map = ChunkMap<Rows, Threads>;
  static constexpr int P = Map::kPerThread;
  static constexpr int kChunkElems = 16 / sizeof(T);
  const Gather<T>& g;
  const KWalk<T>& walk;
  const T* base[P];  // sample + group's first channel; null for rows past M
  int j[P][3];       // origin
  int c0, q[3];

  __device__ void load(unsigned char* stage) const {
    const int ce = c0 + Map::chunk() * kChunkElems;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      int at[3];
#pragma unroll
      for (int d = 0; d < 3; ++d)
        at[d] = source_index<int>(j[i][d] + q[d] * g.coef[d], g.extent[d], g.pad_before[d],
                                  g.pad_after[d], g.mode);
      const bool ok = base[i] != nullptr && ce < walk.channels && (at[0] | at[1] | at[2]) >= 0;
      const T* src = ok ? base[i] + at[0] * g.stride[2] + at[1] * g.stride[3] +
                              at[2] * g.stride[4] + ce
                        : g.data;
      arch::cp_async_16(Map::dst(stage, i), src, ok);
    }
  }
  __device__ void advance() { walk.next(c0, q); }
};

// A packed tensor [rows][kd][kh][kw][channels]; box tap q is kernel tap t0 + q * step.
template <typename T>
struct Packed {
  const T* data;
  int kernel[3], t0[3], step[3];

  __device__ int64_t tap_offset(const int (&q)[3], int channels) const {
    const int td = t0[0] + q[0] * step[0], th = t0[1] + q[1] * step[1];
    const int tw = t0[2] + q[2] * step[2];
    return int64_t((td * kernel[1] + th) * kernel[2] + tw) * channels;
  }
};

template <typename T, int Rows, int Threads>
struct PackedIterator {
  using Map = ChunkMap<Rows, Threads>;
  static constexpr int P = Map::kPerThread;
  static constexpr int kChunkElems = 16 / sizeof(T);
  const Packed<T>& w;
  const KWalk<T>& walk;
  const T* row[P];  // null for rows past N
  int c0, q[3];
  int64_t tap;      // offset of the current tap within a row

  __device__ void load(unsigned char* stage) const {
    const int ce = c0 + Map::chunk() * kChunkElems;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const bool ok = row[i] != nullptr && ce < walk.channels;
      arch::cp_async_16(Map::dst(stage, i), ok ? row[i] + tap + ce : w.data, ok);
    }
  }
  __device__ void advance() {
    if (walk.next(c0, q)) tap = w.tap_offset(q, walk.channels);
  }
};

// Iterators of a Problem with members walk, gather (A), packed (B), M, N, packed_rows()
// (packed rows per group) and row_origin(group, m, base, j).
template <typename Problem, int Rows, int Threads, typename T>
__device__ GatherIterator<T, Rows, Threads> gather_iterator(const Problem& p, int64_t group,
                                                            int64_t m0, int64_t k_first) {
  GatherIterator<T, Rows, Threads> it{p.gather, p.walk};
#pragma unroll
  for (int i = 0; i < ChunkMap<Rows, Threads>::kPerThread; ++i) {
    const int64_t m = m0 + ChunkMap<Rows, Threads>::row(i);
    p.row_origin(group, m < p.M ? m : 0, it.base[i], it.j[i]);
    if (m >= p.M) it.base[i] = nullptr;
  }
  p.walk.start(k_first, it.c0, it.q);
  return it;
}

template <typename Problem, int Rows, int Threads, typename T>
__device__ PackedIterator<T, Rows, Threads> packed_iterator(const Problem& p, int64_t group,
                                                            int64_t n0, int64_t k_first) {
  PackedIterator<T, Rows, Threads> it{p.packed, p.walk};
  const int64_t row_elems = int64_t(p.packed.kernel[0]) * p.packed.kernel[1] *
                            p.packed.kernel[2] * p.walk.channels;
#pragma unroll
  for (int i = 0; i < ChunkMap<Rows, Threads>::kPerThread; ++i) {
    const int64_t n = n0 + ChunkMap<Rows, Threads>::row(i);
    it.row[i] = n < p.N ? p.packed.data + (group * p.N + n) * row_elems : nullptr;
  }
  p.walk.start(k_first, it.c0, it.q);
  it.tap = p.packed.tap_offset(it.q, p.walk.channels);
  return it;
}

// (n, a, b, c) of index m in a batch of (A x B x C) boxes, divisions once per tile row.
struct BoxIndex {
  int64_t n;
  int v[3];
};
__device__ inline BoxIndex box_index(int64_t m, const int (&box)[3]) {
  const int64_t vol = int64_t(box[0]) * box[1] * box[2];
  BoxIndex r;
  r.n = m / vol;
  const int s = static_cast<int>(m - r.n * vol);
  r.v[0] = s / (box[1] * box[2]);
  const int t = s - r.v[0] * box[1] * box[2];
  r.v[1] = t / box[2];
  r.v[2] = t - r.v[1] * box[2];
  return r;
}

// Members shared by the K-contiguous passes.
template <typename T>
struct TcProblem {
  static constexpr arch::MmaKind kMma = MmaFor<T>::kind;
  int64_t M, N, groups, k_tiles, k_tiles_per_split;
  KWalk<T> walk;
  Gather<T> gather;
  Packed<T> packed;
};

// Forward: GEMM row m = output position over the batch, column n = output channel in the
// group, K = (kernel tap, input channel in the group). Packed = weights as
// [C_out][kd][kh][kw][C_in/groups].
template <typename T>
struct ForwardTc : TcProblem<T> {
  static constexpr const char* kPass = "forward";
  int out[3], stride[3];
  const T* bias;
  int64_t bias_stride;
  T* y;
  int64_t ys[5];

  __device__ void row_origin(int64_t group, int64_t m, const T*& base, int (&j)[3]) const {
    const BoxIndex o = box_index(m, out);
    base = this->gather.data + o.n * this->gather.stride[0] +
           group * this->walk.channels * this->gather.stride[1];
#pragma unroll
    for (int i = 0; i < 3; ++i) j[i] = o.v[i] * stride[i] - this->gather.pad_before[i];
  }
  template <int Rows, int Threads>
  __device__ auto a_iterator(int64_t group, int64_t m0, int64_t k_first) const {
    return gather_iterator<ForwardTc, Rows, Threads, T>(*this, group, m0, k_first);
  }
  template <int Rows, int Threads>
  __device__ auto b_iterator(int64_t group, int64_t n0, int64_t k_first) const {
    return packed_iterator<ForwardTc, Rows, Threads, T>(*this, group, n0, k_first);
  }

  struct Store {
    const ForwardTc& p;
    int64_t group;
    __device__ int64_t row(int64_t m) const {
      const BoxIndex o = box_index(m, p.out);
      return o.n * p.ys[0] + o.v[0] * p.ys[2] + o.v[1] * p.ys[3] + o.v[2] * p.ys[4];
    }
    __device__ void store(int64_t offset, int64_t n, float v) const {
      const int64_t co = group * p.N + n;
      if (p.bias != nullptr) v += static_cast<float>(p.bias[co * p.bias_stride]);
      p.y[offset + co * p.ys[1]] = static_cast<T>(v);
    }
  };
  __device__ Store store(int64_t group, unsigned /*split*/) const { return {*this, group}; }
};

// grad_input with zero padding, one residue class of input positions at a time (the
// strided-dgrad decomposition): along each dimension the class holds input indices
// i = first + stride * j, j < count, and only kernel taps t = t0 + step * q, q < taps,
// reach them, from output index o = o_first + j - o_step * q. So no tap is multiplied by
// a zero that the stride put between outputs. GEMM row m = (sample, j), column n = input
// channel in the group, K = (box tap, output channel in the group). Gather = grad_output,
// Packed = weights as [C_in][kd][kh][kw][C_out/groups].
template <typename T>
struct GradInputTc : TcProblem<T> {
  static constexpr const char* kPass = "grad_input";
  int count[3], first[3], stride[3], o_first[3];
  T* gx;
  int64_t gxs[5];

  __device__ void row_origin(int64_t group, int64_t m, const T*& base, int (&j)[3]) const {
    const BoxIndex r = box_index(m, count);
    base = this->gather.data + r.n * this->gather.stride[0] +
           group * this->walk.channels * this->gather.stride[1];
#pragma unroll
    for (int i = 0; i < 3; ++i) j[i] = o_first[i] + r.v[i];
  }
  template <int Rows, int Threads>
  __device__ auto a_iterator(int64_t group, int64_t m0, int64_t k_first) const {
    return gather_iterator<GradInputTc, Rows, Threads, T>(*this, group, m0, k_first);
  }
  template <int Rows, int Threads>
  __device__ auto b_iterator(int64_t group, int64_t n0, int64_t k_first) const {
    return packed_iterator<GradInputTc, Rows, Threads, T>(*this, group, n0, k_first);
  }

  struct Store {
    const GradInputTc& p;
    int64_t group;
    __device__ int64_t row(int64_t m) const {
      const BoxIndex r = box_index(m, p.count);
      int64_t offset = r.n * p.gxs[0];
#pragma unroll
      for (int i = 0; i < 3; ++i) offset += int64_t(p.first[i] + p.stride[i] * r.v[i]) * p.gxs[2 + i];
      return offset;
    }
    __device__ void store(int64_t offset, int64_t n, float v) const {
      p.gx[offset + (group * p.N + n) * p.gxs[1]] = static_cast<T>(v);
    }
  };
  __device__ Store store(int64_t group, unsigned /*split*/) const { return {*this, group}; }
};

}  // namespace torchconv3d::gpu::tc
