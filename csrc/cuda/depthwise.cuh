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
// kernel flipped (stencil_for_grad_input in the host code).
#pragma once

#include "../conv3d.h"
#include "arch.cuh"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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
struct Stencil {
  static constexpr const char* kPass = "depthwise";
  int in[3], out[3], k[3], stride[3], dil[3], pad_before[3], pad_after[3];
  PadMode mode;
  int vecs;       // channel vectors per position
  int runs;       // kRun-long runs per output row
  int64_t items;  // batch * out D * out H * runs * vecs
  const T* x;     // channels-last, 16-byte aligned rows
  int64_t xs[5];
  const T* w;  // packed [kd][kh][kw][C]
  const T* bias;  // null without bias; contiguous
  T* y;           // channels-last
  int64_t ys[5];

  __device__ int source(int dim, int q) const {
    return source_index<int>(q, in[dim], pad_before[dim], pad_after[dim], mode);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) stencil_kernel(Stencil<T> p) {
  using L = Lanes<T>;
  constexpr int V = L::kCount;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       item < p.items; item += step) {
    // item = (((n * outD + od) * outH + oh) * runs + run) * vecs + cv: channels fastest.
    int64_t rest = item / p.vecs;
    const int cv = static_cast<int>(item - rest * p.vecs);
    int64_t next = rest / p.runs;
    const int ow0 = static_cast<int>(rest - next * p.runs) * kRun;
    rest = next / p.out[1];
    const int oh = static_cast<int>(next - rest * p.out[1]);
    const int64_t n = rest / p.out[0];
    const int od = static_cast<int>(rest - n * p.out[0]);

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

    const T* xn = p.x + n * p.xs[0] + cv * V;
    const T* wt = p.w + cv * V;
    const int64_t wstep = int64_t(p.vecs) * V;
    for (int td = 0; td < p.k[0]; ++td) {
      const int id = p.source(0, od * p.stride[0] + td * p.dil[0] - p.pad_before[0]);
      for (int th = 0; th < p.k[1]; ++th) {
        const int ih = p.source(1, oh * p.stride[1] + th * p.dil[1] - p.pad_before[1]);
        const T* row = xn + id * p.xs[2] + ih * p.xs[3];
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

}  // namespace torchconv3d::gpu::dw
