// Per-pass operand iterators of the tensor-core GEMM (tc_gemm.cuh): the only place a pass
// says where its operands live, how a K tile maps to taps and channels (its walk: one
// state, advanced once per K tile, that both iterators read), and how a padding mode turns
// a padded coordinate into an input element or a zero (source_index). The main loop only
// sees 16-byte chunks landing in shared memory.
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
//   tensor; box tap q is kernel tap t0 + q * step along each dimension (KWalk).
#pragma once

#include "../conv3d.h"
#include "dims32.cuh"
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

// The walk over K of the K-contiguous passes: tile -> (box tap q, first channel c0),
// channels innermost; box tap q is kernel tap t0 + q * step along each dimension, whose
// offset in a packed row is `tap`. One state serves both operands' iterators.
struct TapState {
  int c0, q[3];
  int64_t tap;   // offset of the box tap in a packed row
  int64_t gtap;  // the box tap's offset in the gathered tensor (masked gathers only)
};

template <typename T>
struct KWalk {
  static constexpr int kTileElems = kKBytes / sizeof(T);  // channels per K tile
  int channels, c_tiles, taps[3], kernel[3], t0[3], step[3];
  int64_t gstep[3];  // gathered-tensor offset of one box tap step: coef * stride

  __host__ __device__ int64_t k_tiles() const {
    return int64_t(taps[0]) * taps[1] * taps[2] * c_tiles;
  }
  __device__ int64_t tap_offset(const int (&q)[3]) const {
    const int td = t0[0] + q[0] * step[0], th = t0[1] + q[1] * step[1];
    const int tw = t0[2] + q[2] * step[2];
    return int64_t((td * kernel[1] + th) * kernel[2] + tw) * channels;
  }
  __device__ void set_tap(TapState& s) const {
    s.tap = tap_offset(s.q);
    s.gtap = s.q[0] * gstep[0] + s.q[1] * gstep[1] + s.q[2] * gstep[2];
  }
  __device__ TapState start(int64_t k_tile) const {
    TapState s{0, {0, 0, 0}, 0, 0};
    if (k_tiles() == 0) return s;  // an empty box: nothing will be loaded
    const int tap = static_cast<int>(k_tile / c_tiles);
    s.c0 = static_cast<int>(k_tile - int64_t(tap) * c_tiles) * kTileElems;
    s.q[0] = tap / (taps[1] * taps[2]);
    s.q[1] = tap / taps[2] - s.q[0] * taps[1];
    s.q[2] = tap % taps[2];
    set_tap(s);
    return s;
  }
  __device__ void next(TapState& s) const {
    s.c0 += kTileElems;
    if (s.c0 < channels) return;
    s.c0 = 0;
    if (++s.q[2] == taps[2]) {
      s.q[2] = 0;
      if (++s.q[1] == taps[1]) {
        s.q[1] = 0;
        ++s.q[0];
      }
    }
    set_tap(s);
  }
};

// A channels-last tensor read at coordinate origin + q * coef per dimension (forward: behind
// a stream's head, whose frames it reads in place).
template <typename T>
struct Gather {
  const T* data;
  int64_t stride[5];  // N, C, D, H, W in elements; C is 1
  int extent[3], pad_before[3], pad_after[3], coef[3];
  PadMode mode[3];  // per dimension
  HeadFrames<T> head;  // frames == 0: none
};

// Masked (zero padding, kernel extents up to 10): a row keeps one offset and a validity
// bit per box tap and dimension, set once per tile, so a K tile costs a shift-and-test and
// an add per row. General (reflect, replicate, circular): source_index per row and tap.
// With a stream's head a row keeps a second origin, in the head, taken by the box taps
// whose depth lies there (masked: a bit per depth tap).
template <typename T, int Rows, int Threads, bool kMasked>
struct GatherIterator {
  static constexpr bool kKMajor = true;
  using Map = ChunkMap<Rows, Threads>;
  static constexpr int P = Map::kPerThread;
  static constexpr int kChunkElems = 16 / sizeof(T);
  const Gather<T>& g;
  int channels;
  const T* base[P];   // sample + group's first channel (masked: + the origin's offset)
  const T* hbase[P];  // the same in the stream's head (unused without one)
  int j[P][3];        // origin
  uint32_t mask[P];   // bit q + 10 d: box tap q is inside the tensor along dimension d
  uint32_t hmask[P];  // bit q: depth box tap q lies in the head

  __device__ void set_masks(const int (&taps)[3]) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t offset = j[i][0] * g.stride[2] + j[i][1] * g.stride[3] + j[i][2] * g.stride[4];
      base[i] += offset;
      hbase[i] += offset;
      uint32_t bits = 0, head_bits = 0;
      for (int d = 0; d < 3; ++d)
        for (int q = 0; q < taps[d]; ++q) {
          const int at = j[i][d] + q * g.coef[d];
          if (at >= 0 && at < g.extent[d]) bits |= 1u << (q + 10 * d);
          if (d == 0 && at < g.head.frames) head_bits |= 1u << q;
        }
      mask[i] = mask[i] != 0 ? bits : 0u;
      hmask[i] = head_bits;
    }
  }

  __device__ void load(unsigned char* stage, const TapState& s) const {
    const int ce = s.c0 + Map::chunk() * kChunkElems;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      bool ok;
      const T* src;
      if constexpr (kMasked) {
        ok = ce < channels &&
             ((mask[i] >> s.q[0]) & (mask[i] >> (10 + s.q[1])) & (mask[i] >> (20 + s.q[2])) & 1);
        src = ((hmask[i] >> s.q[0]) & 1 ? hbase[i] : base[i]) + s.gtap + ce;
      } else {
        int at[3];
#pragma unroll
        for (int d = 0; d < 3; ++d)
          at[d] = source_index<int>(j[i][d] + s.q[d] * g.coef[d], g.extent[d],
                                    g.pad_before[d], g.pad_after[d], g.mode[d]);
        ok = base[i] != nullptr && ce < channels && (at[0] | at[1] | at[2]) >= 0;
        src = (at[0] < g.head.frames ? hbase[i] : base[i]) + at[0] * g.stride[2] +
              at[1] * g.stride[3] + at[2] * g.stride[4] + ce;
      }
      arch::cp_async_16(Map::dst(stage, i), ok ? src : g.data, ok);
    }
  }
};

// A packed tensor [rows][kd][kh][kw][channels]: K-contiguous rows.
template <typename T, int Rows, int Threads>
struct PackedIterator {
  static constexpr bool kKMajor = true;
  using Map = ChunkMap<Rows, Threads>;
  static constexpr int P = Map::kPerThread;
  static constexpr int kChunkElems = 16 / sizeof(T);
  const T* data;
  int channels;
  const T* row[P];  // null for rows past N

  __device__ void load(unsigned char* stage, const TapState& s) const {
    const int ce = s.c0 + Map::chunk() * kChunkElems;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const bool ok = row[i] != nullptr && ce < channels;
      arch::cp_async_16(Map::dst(stage, i), ok ? row[i] + s.tap + ce : data, ok);
    }
  }
};

// Iterators of a Problem with members walk, gather (A), packed (B data), M, N, kMasked
// and row_origin(m, n, j): GEMM row m's sample and origin.
template <typename Problem, int Rows, int Threads, typename T>
__device__ GatherIterator<T, Rows, Threads, Problem::kMasked> gather_iterator(
    const Problem& p, int64_t group, int64_t m0) {
  GatherIterator<T, Rows, Threads, Problem::kMasked> it{p.gather, p.walk.channels};
  const Gather<T>& g = p.gather;
  const int64_t c0 = group * p.walk.channels;
#pragma unroll
  for (int i = 0; i < ChunkMap<Rows, Threads>::kPerThread; ++i) {
    const int64_t m = m0 + ChunkMap<Rows, Threads>::row(i);
    int64_t n;
    p.row_origin(m < p.M ? m : 0, n, it.j[i]);
    it.base[i] = g.head.x_sample(g.data, g.stride, n, c0);
    it.hbase[i] = g.head.frames > 0 ? g.head.head_sample(n, c0) : it.base[i];
    it.mask[i] = m < p.M;  // set_masks keeps rows past M empty
    if constexpr (!Problem::kMasked)
      if (m >= p.M) it.base[i] = nullptr;
  }
  if constexpr (Problem::kMasked) it.set_masks(p.walk.taps);
  return it;
}

template <typename Problem, int Rows, int Threads, typename T>
__device__ PackedIterator<T, Rows, Threads> packed_iterator(const Problem& p, int64_t group,
                                                            int64_t n0) {
  PackedIterator<T, Rows, Threads> it{p.packed, p.walk.channels};
  const int64_t row_elems =
      int64_t(p.walk.kernel[0]) * p.walk.kernel[1] * p.walk.kernel[2] * p.walk.channels;
#pragma unroll
  for (int i = 0; i < ChunkMap<Rows, Threads>::kPerThread; ++i) {
    const int64_t n = n0 + ChunkMap<Rows, Threads>::row(i);
    it.row[i] = n < p.N ? p.packed + (group * p.N + n) * row_elems : nullptr;
  }
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

// Members shared by the K-contiguous passes; Pass supplies kMasked and row_origin.
template <typename T, typename Pass>
struct TcProblem {
  using Element = T;
  static constexpr bool kAKMajor = true, kBKMajor = true;
  int64_t M, N, groups, k_tiles, k_tiles_per_split;
  KWalk<T> walk;
  Gather<T> gather;
  const T* packed;  // B: packed weights

  template <int Rows, int Threads>
  __device__ auto a_iterator(int64_t group, int64_t m0) const {
    return gather_iterator<Pass, Rows, Threads, T>(static_cast<const Pass&>(*this), group, m0);
  }
  template <int Rows, int Threads>
  __device__ auto b_iterator(int64_t group, int64_t n0) const {
    return packed_iterator<Pass, Rows, Threads, T>(static_cast<const Pass&>(*this), group, n0);
  }
};

// Forward: GEMM row m = output position over the batch, column n = output channel in the
// group, K = (kernel tap, input channel in the group). Packed = weights as
// [C_out][kd][kh][kw][C_in/groups].
template <typename T, bool Masked>
struct ForwardTc : TcProblem<T, ForwardTc<T, Masked>> {
  static constexpr const char* kPass = "forward";
  static constexpr bool kMasked = Masked;  // zero padding (or none), kernel extents <= 10
  int out[3], stride[3];
  const T* bias;
  int64_t bias_stride;
  T* y;
  int64_t ys[5];

  __device__ void row_origin(int64_t m, int64_t& n, int (&j)[3]) const {
    const BoxIndex o = box_index(m, out);
    n = o.n;
#pragma unroll
    for (int i = 0; i < 3; ++i) j[i] = o.v[i] * stride[i] - this->gather.pad_before[i];
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
struct GradInputTc : TcProblem<T, GradInputTc<T>> {
  static constexpr const char* kPass = "grad_input";
  static constexpr bool kMasked = true;  // zeros outside grad_output
  int count[3], first[3], stride[3], o_first[3];
  T* gx;
  int64_t gxs[5];

  __device__ void row_origin(int64_t m, int64_t& n, int (&j)[3]) const {
    const BoxIndex r = box_index(m, count);
    n = r.n;
#pragma unroll
    for (int i = 0; i < 3; ++i) j[i] = o_first[i] + r.v[i];
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

// n / d for 0 <= n < 2^31 by a multiply-high and a shift (Granlund-Montgomery): the
// per-row position decode of grad_weight runs once per K tile, so no division there.
struct FastDiv {
  uint32_t d, mul, shift;
  FastDiv() = default;
  __host__ explicit FastDiv(uint32_t divisor) : d(divisor), shift(0) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  __host__ __device__ uint32_t operator()(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(n, mul);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(n) * mul) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

// Which 16-byte chunks of an MN-major (K rows x Width) stage tile this thread copies:
// rows row(i) = first + i * kRowStep, always the same chunk column.
template <typename T, int Width, int Threads>
struct ChunkMapMN {
  static constexpr int kPerRow = Width * static_cast<int>(sizeof(T)) / 16;
  static constexpr int kRows = kKBytes / static_cast<int>(sizeof(T));
  static constexpr int kPerThread = kRows * kPerRow / Threads;
  static constexpr int kRowStep = Threads / kPerRow;
  static constexpr int kChunkElems = 16 / static_cast<int>(sizeof(T));
  static_assert(Threads % kPerRow == 0 && kPerThread >= 1);
  __device__ static int row(int i) {
    return static_cast<int>(threadIdx.x) / kPerRow + i * kRowStep;
  }
  // The first GEMM row/column of this thread's chunk, relative to the tile.
  __device__ static int column() {
    return static_cast<int>(threadIdx.x) % kPerRow * kChunkElems;
  }
  __device__ static unsigned char* dst(unsigned char* stage, int i) {
    return stage + row(i) * OperandTile<T, false, Width>::kPitch + column() * sizeof(T);
  }
};

// The walk over grad_weight's K, output positions: K tiles never straddle two samples, so
// a tile is (sample n, positions s0 .. s0 + kRows - 1 of its volume), the last ones of a
// sample zero-filled past its end.
struct PositionState {
  int64_t n;
  int s0;
};
struct PositionWalk {
  int vol, tiles_per_sample, rows;
  __device__ PositionState start(int64_t k_tile) const {
    PositionState s;
    s.n = k_tile / tiles_per_sample;
    s.s0 = static_cast<int>(k_tile - s.n * tiles_per_sample) * rows;
    return s;
  }
  __device__ void next(PositionState& s) const {
    s.s0 += rows;
    if (s.s0 >= vol) {
      s.s0 = 0;
      ++s.n;
    }
  }
};

// grad_weight: GEMM row m = output channel in the group, column n = (kernel tap, input
// channel in the group) as in the packed forward weights, K = output positions over the
// batch. Both operands are stored K-outermost (channels-last grad_output and input), so
// both tiles are MN-major. With split K each split writes its partial tile to `partial`
// ([split][group][m][n]) and reduce_splits_kernel sums them in split order.
template <typename T>
struct GradWeightTc : Dims32 {
  static constexpr const char* kPass = "grad_weight";
  using Element = T;
  static constexpr bool kAKMajor = false, kBKMajor = false;
  int64_t M, N, groups, k_tiles, k_tiles_per_split;
  PositionWalk walk;
  FastDiv div_hw, div_w;  // by out H * W and out W
  int cin_g, cin_real, khw, kw;  // cin_g: padded (GEMM) input channels, cin_real: the layer's
  const T* gy;  // channels-last: position s of sample n at n * gys[0] + s * gys[4]
  int64_t gys[5];
  const T* x;  // channels-last
  int64_t xs[5];
  HeadFrames<T> head;  // a stream's first frames, read in place (none: frames == 0)
  T* gw;
  int64_t gws[5];
  float* partial;  // null without split K

  template <int Width, int Threads>
  struct GradOutputIterator {
    static constexpr bool kKMajor = false;
    using Map = ChunkMapMN<T, Width, Threads>;
    const GradWeightTc& p;
    const T* col;  // this chunk's first channel; null past M
    __device__ void load(unsigned char* stage, const PositionState& k) const {
#pragma unroll
      for (int i = 0; i < Map::kPerThread; ++i) {
        const int s = k.s0 + Map::row(i);
        const bool ok = col != nullptr && s < p.walk.vol;
        arch::cp_async_16(Map::dst(stage, i), ok ? col + k.n * p.gys[0] + s * p.gys[4] : p.gy,
                          ok);
      }
    }
  };

  template <int Width, int Threads>
  struct InputIterator {
    static constexpr bool kKMajor = false;
    using Map = ChunkMapMN<T, Width, Threads>;
    const GradWeightTc& p;
    int64_t channel;  // this chunk's first input channel; -1 past N
    int tap[3];       // its tap's offsets, tap * dilation
    __device__ void load(unsigned char* stage, const PositionState& k) const {
#pragma unroll
      for (int i = 0; i < Map::kPerThread; ++i) {
        const int s = k.s0 + Map::row(i);
        const int od = static_cast<int>(p.div_hw(s));
        const int rest = s - od * static_cast<int>(p.div_hw.d);
        const int oh = static_cast<int>(p.div_w(rest));
        const int o[3] = {od, oh, rest - oh * static_cast<int>(p.div_w.d)};
        int at[3];
#pragma unroll
        for (int d = 0; d < 3; ++d)
          at[d] = p.source(d, o[d] * p.stride[d] - p.pad_before[d] + tap[d]);
        const bool ok = channel >= 0 && s < p.walk.vol && (at[0] | at[1] | at[2]) >= 0;
        const T* src = ok ? p.head.origin(p.x, p.xs, k.n, channel, at[0]) + at[0] * p.xs[2] +
                                at[1] * p.xs[3] + at[2] * p.xs[4]
                          : p.x;
        arch::cp_async_16(Map::dst(stage, i), src, ok);
      }
    }
  };

  template <int Rows, int Threads>
  __device__ GradOutputIterator<Rows, Threads> a_iterator(int64_t group, int64_t m0) const {
    GradOutputIterator<Rows, Threads> it{*this};
    const int64_t m = m0 + ChunkMapMN<T, Rows, Threads>::column();
    it.col = m < M ? gy + (group * M + m) * gys[1] : nullptr;
    return it;
  }
  template <int Rows, int Threads>
  __device__ InputIterator<Rows, Threads> b_iterator(int64_t group, int64_t n0) const {
    InputIterator<Rows, Threads> it{*this};
    const int64_t n = n0 + ChunkMapMN<T, Rows, Threads>::column();
    const int t = static_cast<int>(n / cin_g);
    const int ci = static_cast<int>(n - int64_t(t) * cin_g);
    it.channel = n < N ? group * cin_g + ci : -1;
    it.tap[0] = t / khw * dil[0];
    it.tap[1] = t % khw / kw * dil[1];
    it.tap[2] = t % kw * dil[2];
    return it;
  }

  // grad_weight element (output channel co, GEMM column n); padding channels are dropped.
  __device__ void store_weight(int64_t co, int64_t n, float v) const {
    const int t = static_cast<int>(n / cin_g);
    const int64_t ci = n - int64_t(t) * cin_g;
    if (ci >= cin_real) return;
    gw[co * gws[0] + ci * gws[1] + (t / khw) * gws[2] + (t % khw / kw) * gws[3] +
       (t % kw) * gws[4]] = static_cast<T>(v);
  }

  struct Store {
    const GradWeightTc& p;
    int64_t group;
    unsigned split;
    __device__ int64_t row(int64_t m) const { return m; }
    __device__ void store(int64_t m, int64_t n, float v) const {
      if (p.partial != nullptr)
        p.partial[((int64_t(split) * p.groups + group) * p.M + m) * p.N + n] = v;
      else
        p.store_weight(group * p.M + m, n, v);
    }
  };
  __device__ Store store(int64_t group, unsigned split) const { return {*this, group, split}; }
};

// Sums grad_weight's split-K partials in split order: the same order on every run.
template <typename T>
__global__ void __launch_bounds__(256) reduce_splits_kernel(GradWeightTc<T> p, int64_t splits) {
  const int64_t per_split = p.groups * p.M * p.N;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < per_split;
       e += step) {
    float sum = 0.0f;
    for (int64_t s = 0; s < splits; ++s) sum += p.partial[s * per_split + e];
    const int64_t gm = e / p.N;
    p.store_weight(gm, e - gm * p.N, sum);
  }
}

}  // namespace torchconv3d::gpu::tc
