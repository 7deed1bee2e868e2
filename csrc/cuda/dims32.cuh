// The spatial geometry the v2 kernels read, in 32 bits (launch.cuh's fits_32_bits decides
// when it fits), (D, H, W) order, with the padding mode.
#pragma once

#include "../conv3d.h"

namespace torchconv3d::gpu {

struct Dims32 {
  int in[3], out[3], k[3], stride[3], dil[3], pad_before[3], pad_after[3];
  PadMode mode[3];  // per dimension

  // The input index a padded coordinate q along dimension `dim` reads, or -1 (a zero).
  __host__ __device__ int source(int dim, int q) const {
    return source_index<int>(q, in[dim], pad_before[dim], pad_after[dim], mode[dim]);
  }
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
  for (int i = 0; i < 3; ++i) d.mode[i] = g.mode[i];
  return d;
}

}  // namespace torchconv3d::gpu
