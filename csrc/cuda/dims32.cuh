// The spatial geometry the v2 kernels read, in 32 bits (launch.cuh's fits_32_bits decides
// when it fits), (D, H, W) order, with the padding mode; and a stream's head as they read it.
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

// A stream's head (DepthHead, conv3d.h) read in place by the v2 kernels: the volume's first
// `frames` depths are the head's, the rest the input tensor's. The host passes a head only
// when its steps along C, D, H and W are the input's (conv3d_kernels.cuh, v2_input), so a
// depth selects one of two sample origins and every other offset is shared. frames == 0:
// no head, every depth is the input's.
template <typename T>
struct HeadFrames {
  const T* data = nullptr;
  int64_t sample_stride = 0;
  int frames = 0;

  // Element (n, c, 0, 0, 0) of the volume as read for depth `depth`: in the head, or in x
  // shifted back by the head's frames (x's own depth 0 is the volume's depth `frames`), so
  // that adding depth * xs[2] lands on it either way. xs: x's strides, (N, C, D, H, W),
  // channels-last (channel stride 1, as in the head).
  __host__ __device__ const T* head_sample(int64_t n, int64_t c) const {
    return data + n * sample_stride + c;
  }
  __host__ __device__ const T* x_sample(const T* x, const int64_t* xs, int64_t n,
                                        int64_t c) const {
    return x + n * xs[0] - int64_t(frames) * xs[2] + c;
  }
  __host__ __device__ const T* origin(const T* x, const int64_t* xs, int64_t n, int64_t c,
                                      int depth) const {
    // (A padding depth, -1, is never read: without a head it still names x.)
    return frames > 0 && depth < frames ? head_sample(n, c) : x_sample(x, xs, n, c);
  }
};

template <typename T>
HeadFrames<T> head_frames(const DepthHead& head) {
  HeadFrames<T> h;
  h.data = static_cast<const T*>(head.data);
  h.sample_stride = head.stride[0];
  h.frames = static_cast<int>(head.frames);
  return h;
}

}  // namespace torchconv3d::gpu
