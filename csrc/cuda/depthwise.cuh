// Depthwise layers (one input and one output channel per group) as a memory-bound stencil
// on channels-last data: y[n, o, c] = bias[c] + sum over taps t of w[c, t] x[n, o s + t d, c].
//
// A thread owns one 16-byte vector of channels (8 halves or 4 floats) at kRun consecutive
// output positions along W: every load and store is 16 bytes, consecutive threads take
// consecutive channel vectors of one position (coalesced), and each weight vector loaded
// serves kRun outputs. Neighbouring threads' input windows overlap; those re-reads are
// served by L1 (on Hopper the same SRAM as shared memory), so no halo is staged by hand and
// every padding mode stays a source_index per coordinate. Sums run in float; a padding
// zero is multiplied like any input element (nn.Conv3d's rule for NaN/Inf weights).
//
// grad_input of a stride-1 zero-padded layer is the same stencil over grad_output with the
// kernel flipped (dw::grad_input in launch.cuh). grad_weight is a deterministic two-step
// reduction: float partial sums per (position chunk, tap, channel vector), then per weight
// the chunks in order.
#pragma once

#include "../conv3d.h"
#include "arch.cuh"
#include "dims32.cuh"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace torchconv3d::gpu::dw {

constexpr int kThreads = 256;
constexpr int kRun = 4;  // outputs along W per thread

using arch::Vec16;

// The lanes of a Vec16 as floats, and back (bit operations, so the 16-byte load and store
// stay single instructions).
template <typename T>
struct Lanes {
  static constexpr int kCount = 16 / sizeof(T);
  __device__ static void unpack(const Vec16& v, float (&f)[kCount]) {
#pragma unroll
    for (int i = 0; i < kCount; ++i) {
      if constexpr (sizeof(T) == 2)
        f[i] = static_cast<float>(
            T(static_cast<uint16_t>(v.u[i / 2] >> (16 * (i % 2))), T::from_bits()));
      else
        f[i] = arch::bits_to_float(v.u[i]);
    }
  }
  __device__ static Vec16 pack(const float (&f)[kCount]) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (sizeof(T) == 2)
        v.u[i] = uint32_t(T(f[2 * i]).x) | (uint32_t(T(f[2 * i + 1]).x) << 16);
      else
        v.u[i] = arch::float_to_bits(f[i]);
    }
    return v;
  }
};

template <typename T>
struct Stencil : Dims32 {
  static constexpr const char* kPass = "depthwise";
  int vecs;       // channel vectors per position
  int runs;       // kRun-long runs per output row
  int64_t items;  // batch * out D * out H * runs * vecs
  const T* x;     // channels-last, 16-byte aligned rows
  int64_t xs[5];
  HeadFrames<T> head;  // a stream's first frames, read in place (none: frames == 0)
  const T* w;  // packed [kd][kh][kw][C]
  const T* bias;  // null without bias; contiguous
  T* y;           // channels-last
  int64_t ys[5];
};

template <typename T>
__global__ void __launch_bounds__(kThreads) stencil_kernel(Stencil<T> p) {
  using L = Lanes<T>;
  constexpr int V = L::kCount;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       item < p.items; item += step) {
    // item = (((n * outD + od) * outH + oh) * runs + run) * vecs + cv: channels fastest.
    // One 64-bit division splits off the row (n, od, oh); the rest is 32-bit.
    const int per_row = p.runs * p.vecs;
    const int64_t row = item / per_row;
    const int within = static_cast<int>(item - row * per_row);
    const int cv = within % p.vecs;
    const int ow0 = within / p.vecs * kRun;
    const int64_t n = row / (int64_t(p.out[0]) * p.out[1]);
    const int dh = static_cast<int>(row - n * p.out[0] * p.out[1]);
    const int od = dh / p.out[1], oh = dh % p.out[1];

    float acc[kRun][V];
    float b[V];
    if (p.bias != nullptr) {
      L::unpack(arch::load16(p.bias + cv * V), b);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) b[v] = 0.0f;
    }
#pragma unroll
    for (int r = 0; r < kRun; ++r)
#pragma unroll
      for (int v = 0; v < V; ++v) acc[r][v] = b[v];

    const T* wt = p.w + cv * V;
    const int64_t wstep = int64_t(p.vecs) * V;
    for (int td = 0; td < p.k[0]; ++td) {
      const int id = p.source(0, od * p.stride[0] + td * p.dil[0] - p.pad_before[0]);
      const T* plane = p.head.origin(p.x, p.xs, n, cv * V, id) + id * p.xs[2];
      for (int th = 0; th < p.k[1]; ++th) {
        const int ih = p.source(1, oh * p.stride[1] + th * p.dil[1] - p.pad_before[1]);
        const T* row = plane + ih * p.xs[3];
        const bool row_ok = (id | ih) >= 0;
        for (int tw = 0; tw < p.k[2]; ++tw, wt += wstep) {
          float wv[V];
          L::unpack(arch::load16(wt), wv);
#pragma unroll
          for (int r = 0; r < kRun; ++r) {
            const int iw = p.source(2, (ow0 + r) * p.stride[2] + tw * p.dil[2] - p.pad_before[2]);
            float xv[V];
            if (row_ok && iw >= 0 && ow0 + r < p.out[2]) {
              L::unpack(arch::load16(row + iw * p.xs[4]), xv);
            } else {
#pragma unroll
              for (int v = 0; v < V; ++v) xv[v] = 0.0f;  // a padding zero is a term
            }
#pragma unroll
            for (int v = 0; v < V; ++v) acc[r][v] += wv[v] * xv[v];
          }
        }
      }
    }
    T* yo = p.y + n * p.ys[0] + od * p.ys[2] + oh * p.ys[3] + cv * V;
#pragma unroll
    for (int r = 0; r < kRun; ++r)
      if (ow0 + r < p.out[2])
        arch::store16(yo + (ow0 + r) * p.ys[4], L::pack(acc[r]));
  }
}

// grad_weight, step 1: partial[chunk][tap][c] = sum over the chunk's positions p (over the
// batch) of grad_output[p, c] x input[p s + tap d, c]. Threads take (chunk, tap, channel
// vector) with the channel vector fastest, so a block's threads read the same positions
// (their re-reads hit L1).
template <typename T>
struct WeightGrad : Dims32 {
  static constexpr const char* kPass = "depthwise";
  int vecs, kvol;
  int64_t positions, chunk_len, chunks;
  const T* gy;  // channels-last
  int64_t gys[5];
  const T* x;  // channels-last
  int64_t xs[5];
  HeadFrames<T> head;  // a stream's first frames, read in place (none: frames == 0)
  float* partial;  // [chunks][kvol][C]
};

template <typename T>
__global__ void __launch_bounds__(kThreads) weight_partial_kernel(WeightGrad<T> p) {
  using L = Lanes<T>;
  constexpr int V = L::kCount;
  const int64_t items = p.chunks * p.kvol * p.vecs;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < items;
       e += step) {
    const int64_t rest = e / p.vecs;
    const int cv = static_cast<int>(e - rest * p.vecs);
    const int64_t chunk = rest / p.kvol;
    const int tap = static_cast<int>(rest - chunk * p.kvol);
    const int t[3] = {tap / (p.k[1] * p.k[2]), tap / p.k[2] % p.k[1], tap % p.k[2]};
    const int64_t first = chunk * p.chunk_len;
    const int64_t count = first < p.positions ? std::min(p.chunk_len, p.positions - first) : 0;
    // (n, od, oh, ow) of the first position, then stepped without divisions.
    const int64_t hw = int64_t(p.out[1]) * p.out[2], vol = p.out[0] * hw;
    int64_t n = first / vol;
    int o[3];
    int64_t r = first - n * vol;
    o[0] = static_cast<int>(r / hw);
    r -= o[0] * hw;
    o[1] = static_cast<int>(r / p.out[2]);
    o[2] = static_cast<int>(r - int64_t(o[1]) * p.out[2]);
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0.0f;
    for (int64_t q = 0; q < count; ++q) {
      int at[3];
#pragma unroll
      for (int d = 0; d < 3; ++d)
        at[d] = p.source(d, o[d] * p.stride[d] + t[d] * p.dil[d] - p.pad_before[d]);
      float g[V], xv[V];
      L::unpack(arch::load16(p.gy + n * p.gys[0] + o[0] * p.gys[2] + o[1] * p.gys[3] +
                             o[2] * p.gys[4] + cv * V),
                g);
      if ((at[0] | at[1] | at[2]) >= 0) {
        L::unpack(arch::load16(p.head.origin(p.x, p.xs, n, cv * V, at[0]) + at[0] * p.xs[2] +
                               at[1] * p.xs[3] + at[2] * p.xs[4]),
                  xv);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) xv[v] = 0.0f;  // a padding zero is a term
      }
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] += g[v] * xv[v];
      if (++o[2] == p.out[2]) {
        o[2] = 0;
        if (++o[1] == p.out[1]) {
          o[1] = 0;
          if (++o[0] == p.out[0]) {
            o[0] = 0;
            ++n;
          }
        }
      }
    }
    float* out = p.partial + (chunk * p.kvol + tap) * int64_t(p.vecs) * V + cv * V;
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = acc[v];
  }
}

// grad_weight, step 2: one thread per weight element adds its chunks in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    weight_finish_kernel(WeightGrad<T> p, T* gw, int64_t gw_c, int64_t gw_d, int64_t gw_h,
                         int64_t gw_w) {
  const int64_t channels = int64_t(p.vecs) * Lanes<T>::kCount;
  const int64_t per_chunk = p.kvol * channels;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < per_chunk;
       e += step) {
    float sum = 0.0f;
    for (int64_t k = 0; k < p.chunks; ++k) sum += p.partial[k * per_chunk + e];
    const int tap = static_cast<int>(e / channels);
    const int64_t c = e - tap * channels;
    gw[c * gw_c + (tap / (p.k[1] * p.k[2])) * gw_d + (tap / p.k[2] % p.k[1]) * gw_h +
       (tap % p.k[2]) * gw_w] = static_cast<T>(sum);
  }
}

}  // namespace torchconv3d::gpu::dw
