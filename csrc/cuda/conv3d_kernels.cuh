// The CUDA passes' entry points (forward_pass, grad_input_pass, grad_weight_pass,
// grad_bias_pass), which hand each layer to the v2 kernels (launch.cuh: tensor-core GEMMs,
// depthwise stencil) when they take it, and the v1 CUDA-core kernels that run the rest
// (float64, float32 with TF32 off, grouped channel tails, depthwise multipliers, grad_input
// with non-zero padding modes), plus grad_bias.
//
// The same source also compiles as plain C++ under tests/cuda_emulation, which runs every
// thread of a block as a fiber on the CPU: that is how CI executes these kernels without a
// GPU. Hence the rules here: warp-level operations only through arch.cuh, shared memory as
// fixed-size __shared__ arrays or arch::dynamic_smem(), every thread of a block reaches
// every __syncthreads, and launches go through the Env parameter (CUDA's <<<>>> in
// conv3d_cuda.cu, the emulator in the tests).
//
// v1 design:
// - layers with several input channels per group: implicit GEMM per group. A block of 256
//   threads owns a 64x64 output tile (4x4 per thread) and walks K in steps of 16 through
//   shared memory. The three passes differ only in where an operand element lives: the
//   *Problem structs below. grad_weight splits K over blocks into a bounded workspace and
//   sums the partials in a fixed order.
// - layers with one input channel per group (depthwise, channel multipliers, C_in = 1):
//   direct kernels, one thread per output or input element, one block per weight element.
// - the padding mode acts only in source_index (forward, grad_weight) and preimage
//   (grad_input): no padded copies anywhere.
// - gradients are gathers, never scatters: each result element is summed by one thread, or
//   by one block in a fixed tree, in an order fixed by the shapes. No atomics, so results
//   are bitwise identical run to run.
// - all element offsets and position counters are 64-bit; grids are capped and every
//   kernel loops over the work (grid-stride), so no size is limited by a grid dimension.
#pragma once

#include "../conv3d.h"
#include "launch.cuh"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace torchconv3d::gpu {

// Sums run in float for the half types and float, in double for double.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

constexpr int kThreads = 256;  // every kernel runs 256-thread blocks
constexpr int kBM = 64, kBN = 64, kBK = 16;

// One spatial dimension.
struct Dim {
  int64_t in, out, k, stride, dil, pad_before, pad_after;
};

// The strides of a 5-D tensor in (N, C, D, H, W) order, whatever its memory format.
struct Strides {
  int64_t v[5];
};

// The input as the v1 kernels read it: element (n, c, d, h, w) of x, or, for the first
// head_frames depths, of a stream's head (DepthHead, conv3d.h), read in place.
template <typename T>
struct Volume {
  const T* x;
  Strides xs;
  const T* head;
  Strides hs;
  int64_t head_frames;
  __device__ T at(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) const {
    return d < head_frames
               ? head[n * hs.v[0] + c * hs.v[1] + d * hs.v[2] + h * hs.v[3] + w * hs.v[4]]
               : x[n * xs.v[0] + c * xs.v[1] + (d - head_frames) * xs.v[2] + h * xs.v[3] +
                   w * xs.v[4]];
  }
};

struct Conv {
  Dim dim[3];  // D, H, W
  PadMode mode[3];  // per dimension
  int64_t batch, groups, cin_g, cout_g;
  int64_t kvol, khw;          // kd*kh*kw, kh*kw
  int64_t out_vol, out_hw;    // per sample and channel
  int64_t in_vol, in_hw;
};

__host__ __device__ inline int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Neither NaN nor Inf (x - x is NaN for both), without <cmath> in device code.
template <typename A>
__host__ __device__ inline bool is_finite(A v) {
  return v - v == A(0);
}

// conv3d.h's source_index along dimension d.
__host__ __device__ inline int64_t source_index(int64_t j, const Dim& d, PadMode mode) {
  return torchconv3d::source_index(j, d.in, d.pad_before, d.pad_after, mode);
}

// The padded coordinates that read input index i (source_index(j) == i), as up to three
// ranges [lo, hi]: i itself, plus its mirror or wrapped images, or the whole replicated
// border. grad_input gathers through these, so every padding mode stays a gather.
struct Preimage {
  int64_t lo[3], hi[3];
  int count;
};

__host__ __device__ inline void preimage_add(Preimage& p, int64_t j, const Dim& d) {
  if (j >= -d.pad_before && j <= d.in - 1 + d.pad_after) {
    p.lo[p.count] = p.hi[p.count] = j;
    ++p.count;
  }
}

__host__ __device__ inline Preimage preimage(int64_t i, const Dim& d, PadMode mode) {
  Preimage p;
  p.count = 1;
  p.lo[0] = p.hi[0] = i;
  switch (mode) {
    case PadMode::Reflect:
      if (i > 0) preimage_add(p, -i, d);
      if (i < d.in - 1) preimage_add(p, 2 * (d.in - 1) - i, d);
      break;
    case PadMode::Replicate:
      if (i == 0) p.lo[0] = -d.pad_before;
      if (i == d.in - 1) p.hi[0] = d.in - 1 + d.pad_after;
      break;
    case PadMode::Circular:
      preimage_add(p, i - d.in, d);
      preimage_add(p, i + d.in, d);
      break;
    default:
      break;
  }
  return p;
}

// Output indices o whose tap t reads a padded coordinate in [lo, hi]:
// o * stride + t * dilation - pad_before in [lo, hi], 0 <= o < out. Empty when first > last.
__host__ __device__ inline void output_range(int64_t lo, int64_t hi, int64_t t, const Dim& d,
                                             int64_t& first, int64_t& last) {
  const int64_t shift = d.pad_before - t * d.dil;
  first = -floor_div(-(lo + shift), d.stride);  // ceil
  last = floor_div(hi + shift, d.stride);
  if (first < 0) first = 0;
  if (last > d.out - 1) last = d.out - 1;
}

// Position p in [0, batch * D * H * W) of a (batch, D, H, W) grid.
struct Pos {
  int64_t n, d, h, w;
};
__host__ __device__ inline Pos decode_pos(int64_t p, int64_t vol, int64_t hw, int64_t w) {
  Pos r;
  r.n = p / vol;
  const int64_t s = p - r.n * vol;
  r.d = s / hw;
  const int64_t t = s - r.d * hw;
  r.h = t / w;
  r.w = t - r.h * w;
  return r;
}

// Kernel tap t in [0, kvol) as (td, th, tw).
struct Tap {
  int64_t d, h, w;
};
__host__ __device__ inline Tap decode_tap(int64_t t, const Conv& c) {
  Tap r;
  r.d = t / c.khw;
  const int64_t s = t - r.d * c.khw;
  r.h = s / c.dim[2].k;
  r.w = s - r.h * c.dim[2].k;
  return r;
}

// ---------------------------------------------------------------------------------------
// Implicit GEMM. Per group, C[m, n] = sum_k A[m, k] B[k, n]; a Problem says where A and B
// elements live and where C goes. Operands are staged in shared memory in the accumulation
// type (half inputs are widened once, on load).
//
// Each thread loads A (and, for kBkFastest problems, B) at k = k0 + tid % 16 and rows
// tid / 16 + 16 j, so that its per-row and per-k index arithmetic is done once per step;
// other problems load B at column tid % 64 (one column per thread, decoded once per tile)
// and k = k0 + tid / 64 + 4 j. The inner product reads rows ty + 16 i and columns
// tx + 16 j: a warp touches 2 rows (broadcast) and 16 consecutive columns (no bank
// conflicts), and writes 16 consecutive columns of C.
//
// In some problems (kSumsTerms: grad_input) B[k, n] is a sum of several terms, or of none
// (a tap that reaches no output position from this input position, or several near a
// reflected border). A * B equals the sum of the A * term products unless A is NaN or Inf
// (Inf * 0 = NaN; Inf * (g1 + g2) = Inf where Inf * g1 + Inf * g2 may be NaN). A K step
// whose A tile holds such a value (a diverged weight: rare, and decided for the whole
// block) therefore forms the products one by one through Problem::terms.
// ---------------------------------------------------------------------------------------
template <typename Problem>
__global__ void __launch_bounds__(kThreads) gemm_kernel(Problem p) {
  using acc_t = typename Problem::acc_t;
  using Row = typename Problem::Row;
  using Col = typename Problem::Col;
  using KState = typename Problem::KState;
  constexpr bool kBkFastest = Problem::kBkFastest;
  constexpr bool kSumsTerms = Problem::kSumsTerms;
  constexpr int kCols = kBkFastest ? 4 : 1;

  __shared__ acc_t a_tile[kBK][kBM];
  __shared__ acc_t b_tile[kBK][kBN];

  if (p.only_if != nullptr && *p.only_if == 0) return;  // the whole grid alike
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int lk = tid % kBK, lr = tid / kBK;
  const int64_t m_tiles = ceil_div(p.M, kBM);
  const int64_t n_tiles = ceil_div(p.N, kBN);
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * p.k_per_split;
  const int64_t k_end = std::min<int64_t>(p.K, k_begin + p.k_per_split);

  for (int64_t tile_n = blockIdx.x; tile_n < n_tiles; tile_n += gridDim.x) {
    for (int64_t tile_m = blockIdx.y; tile_m < m_tiles * p.groups; tile_m += gridDim.y) {
      const int64_t group = tile_m / m_tiles;
      const int64_t m0 = (tile_m - group * m_tiles) * kBM;
      const int64_t n0 = tile_n * kBN;

      Row rows[4];
      bool row_ok[4];
      for (int j = 0; j < 4; ++j) {
        const int64_t m = m0 + lr + 16 * j;
        row_ok[j] = m < p.M;
        rows[j] = p.row(group, row_ok[j] ? m : 0);
      }
      Col cols[kCols];
      bool col_ok[kCols];
      for (int j = 0; j < kCols; ++j) {
        const int64_t n = n0 + (kBkFastest ? lr + 16 * j : tid % kBN);
        col_ok[j] = n < p.N;
        cols[j] = p.col(group, col_ok[j] ? n : 0);
      }

      acc_t acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

      for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
        bool a_nonfinite = false;
        {
          const int64_t k = k0 + lk;
          const bool k_ok = k < k_end;
          const KState ks = p.kstate(k_ok ? k : k_begin);
          for (int j = 0; j < 4; ++j) {
            const acc_t v = (k_ok && row_ok[j]) ? p.a(rows[j], ks) : acc_t(0);
            if constexpr (kSumsTerms) a_nonfinite |= !is_finite(v);
            a_tile[lk][lr + 16 * j] = v;
          }
          if constexpr (kBkFastest) {
            for (int j = 0; j < 4; ++j)
              b_tile[lk][lr + 16 * j] = (k_ok && col_ok[j]) ? p.b(cols[j], ks) : acc_t(0);
          }
        }
        if constexpr (!kBkFastest) {
          for (int j = 0; j < 4; ++j) {
            const int kr = tid / kBN + 4 * j;
            const int64_t k = k0 + kr;
            b_tile[kr][tid % kBN] =
                (k < k_end && col_ok[0]) ? p.b(cols[0], p.kstate(k)) : acc_t(0);
          }
        }
        bool one_by_one = false;
        if constexpr (kSumsTerms) {
          one_by_one = __syncthreads_or(a_nonfinite);
        } else {
          __syncthreads();
        }
        if (!one_by_one) {
          for (int kk = 0; kk < kBK; ++kk) {
            acc_t av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = a_tile[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j) bv[j] = b_tile[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
          }
        } else if constexpr (kSumsTerms) {
          for (int j = 0; j < 4; ++j) {
            const int64_t n = n0 + tx + 16 * j;
            if (n >= p.N) continue;
            const Col q = p.col(group, n);
            for (int i = 0; i < 4; ++i) {
              const int64_t m = m0 + ty + 16 * i;
              if (m >= p.M) continue;
              const Row r = p.row(group, m);
              for (int64_t k = k0; k < std::min<int64_t>(k0 + kBK, k_end); ++k)
                acc[i][j] += p.terms(r, q, p.kstate(k));
            }
          }
        }
        __syncthreads();
      }

      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + ty + 16 * i;
        if (m >= p.M) continue;
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + tx + 16 * j;
          if (n < p.N) p.store(group, m, n, acc[i][j]);
        }
      }
    }
  }
}

// The GEMM every problem solves, per group: M x N results, K terms each, K cut into
// pieces of k_per_split (one per blockIdx.z).
struct GemmShape {
  Conv c;
  int64_t groups, M, N, K, k_per_split;
  const int* only_if = nullptr;  // when set, the kernel runs only if *only_if != 0
};

// Forward: m = output channel in the group, k = (input channel, tap), n = output position.
template <typename T>
struct ForwardProblem : GemmShape {
  using acc_t = typename Acc<T>::type;
  static constexpr bool kBkFastest = false;
  static constexpr bool kSumsTerms = false;  // a padding zero is a term (nn.Conv3d's rule)
  Volume<T> x;
  const T* w;
  const T* bias;  // null without bias
  int64_t bias_stride;
  T* y;
  Strides ws, ys;

  struct Row {
    const T* w;  // this output channel's filter
  };
  struct Col {
    int64_t n, c0;        // sample, the group's first channel
    int64_t jd, jh, jw;   // padded coordinates read by tap 0
  };
  struct KState {
    int64_t ci;
    Tap t;
  };

  __device__ Row row(int64_t group, int64_t m) const {
    return {w + (group * c.cout_g + m) * ws.v[0]};
  }
  __device__ Col col(int64_t group, int64_t n) const {
    const Pos o = decode_pos(n, c.out_vol, c.out_hw, c.dim[2].out);
    return {o.n, group * c.cin_g, o.d * c.dim[0].stride - c.dim[0].pad_before,
            o.h * c.dim[1].stride - c.dim[1].pad_before,
            o.w * c.dim[2].stride - c.dim[2].pad_before};
  }
  __device__ KState kstate(int64_t k) const {
    const int64_t ci = k / c.kvol;
    return {ci, decode_tap(k - ci * c.kvol, c)};
  }
  __device__ acc_t a(const Row& r, const KState& s) const {
    return static_cast<acc_t>(
        r.w[s.ci * ws.v[1] + s.t.d * ws.v[2] + s.t.h * ws.v[3] + s.t.w * ws.v[4]]);
  }
  __device__ acc_t b(const Col& q, const KState& s) const {
    const int64_t id = source_index(q.jd + s.t.d * c.dim[0].dil, c.dim[0], c.mode[0]);
    const int64_t ih = source_index(q.jh + s.t.h * c.dim[1].dil, c.dim[1], c.mode[1]);
    const int64_t iw = source_index(q.jw + s.t.w * c.dim[2].dil, c.dim[2], c.mode[2]);
    if (id < 0 || ih < 0 || iw < 0) return acc_t(0);
    return static_cast<acc_t>(x.at(q.n, q.c0 + s.ci, id, ih, iw));
  }
  __device__ void store(int64_t group, int64_t m, int64_t n, acc_t v) const {
    const int64_t co = group * c.cout_g + m;
    const Pos o = decode_pos(n, c.out_vol, c.out_hw, c.dim[2].out);
    if (bias != nullptr) v += static_cast<acc_t>(bias[co * bias_stride]);
    y[o.n * ys.v[0] + co * ys.v[1] + o.d * ys.v[2] + o.h * ys.v[3] + o.w * ys.v[4]] =
        static_cast<T>(v);
  }
};

// grad_input: m = input channel in the group, k = (output channel in the group, tap),
// n = input position. B gathers grad_output over the preimage of the input position, so
// one tap may collect several output positions near a reflected/replicated/wrapped border.
template <typename T>
struct GradInputProblem : GemmShape {
  using acc_t = typename Acc<T>::type;
  static constexpr bool kBkFastest = false;
  static constexpr bool kSumsTerms = true;
  const T* gy;
  const T* w;
  T* gx;
  Strides gys, ws, gxs;

  struct Row {
    const T* w;  // w[group's first output channel, this input channel]
  };
  struct Col {
    const T* gy;  // this sample, first output channel of the group
    Preimage pd, ph, pw;
  };
  struct KState {
    int64_t co;
    Tap t;
  };

  __device__ Row row(int64_t group, int64_t m) const {
    return {w + group * c.cout_g * ws.v[0] + m * ws.v[1]};
  }
  __device__ Col col(int64_t group, int64_t n) const {
    const Pos i = decode_pos(n, c.in_vol, c.in_hw, c.dim[2].in);
    return {gy + i.n * gys.v[0] + group * c.cout_g * gys.v[1],
            preimage(i.d, c.dim[0], c.mode[0]), preimage(i.h, c.dim[1], c.mode[1]),
            preimage(i.w, c.dim[2], c.mode[2])};
  }
  __device__ KState kstate(int64_t k) const {
    const int64_t co = k / c.kvol;
    return {co, decode_tap(k - co * c.kvol, c)};
  }
  __device__ acc_t a(const Row& r, const KState& s) const {
    return static_cast<acc_t>(
        r.w[s.co * ws.v[0] + s.t.d * ws.v[2] + s.t.h * ws.v[3] + s.t.w * ws.v[4]]);
  }
  // Calls f(grad_output element) for every output position that reads this input
  // position through the tap (several near a reflected/replicated/wrapped border, or none).
  template <typename F>
  __device__ void for_each_term(const Col& q, const KState& s, F&& f) const {
    const T* base = q.gy + s.co * gys.v[1];
    for (int rd = 0; rd < q.pd.count; ++rd) {
      int64_t d0, d1;
      output_range(q.pd.lo[rd], q.pd.hi[rd], s.t.d, c.dim[0], d0, d1);
      for (int64_t od = d0; od <= d1; ++od) {
        for (int rh = 0; rh < q.ph.count; ++rh) {
          int64_t h0, h1;
          output_range(q.ph.lo[rh], q.ph.hi[rh], s.t.h, c.dim[1], h0, h1);
          for (int64_t oh = h0; oh <= h1; ++oh) {
            for (int rw = 0; rw < q.pw.count; ++rw) {
              int64_t w0, w1;
              output_range(q.pw.lo[rw], q.pw.hi[rw], s.t.w, c.dim[2], w0, w1);
              for (int64_t ow = w0; ow <= w1; ++ow)
                f(static_cast<acc_t>(base[od * gys.v[2] + oh * gys.v[3] + ow * gys.v[4]]));
            }
          }
        }
      }
    }
  }
  __device__ acc_t b(const Col& q, const KState& s) const {
    acc_t sum = acc_t(0);
    for_each_term(q, s, [&](acc_t v) { sum += v; });
    return sum;
  }
  // a * b with each term multiplied on its own, as the definition does: differs from it
  // only when a is NaN or Inf.
  __device__ acc_t terms(const Row& r, const Col& q, const KState& s) const {
    const acc_t av = a(r, s);
    acc_t sum = acc_t(0);
    for_each_term(q, s, [&](acc_t v) { sum += av * v; });
    return sum;
  }
  __device__ void store(int64_t group, int64_t m, int64_t n, acc_t v) const {
    const Pos i = decode_pos(n, c.in_vol, c.in_hw, c.dim[2].in);
    gx[i.n * gxs.v[0] + (group * c.cin_g + m) * gxs.v[1] + i.d * gxs.v[2] + i.h * gxs.v[3] +
       i.w * gxs.v[4]] = static_cast<T>(v);
  }
};

// grad_weight: m = output channel in the group, n = (input channel, tap), k = output
// position over the whole batch. With several K splits each block writes its partial tile
// to the workspace (split-major) and reduce_splits_kernel adds them in split order.
template <typename T>
struct GradWeightProblem : GemmShape {
  using acc_t = typename Acc<T>::type;
  static constexpr bool kBkFastest = true;
  static constexpr bool kSumsTerms = false;
  const T* gy;
  Volume<T> x;
  T* gw;
  Strides gys, gws;
  acc_t* partial;  // null when K is not split

  struct Row {
    int64_t gy_offset;  // this output channel
  };
  struct Col {
    int64_t ci;              // this input channel
    int64_t dd, dh, dw;      // tap offsets in padded coordinates
  };
  struct KState {
    const T* gy;             // grad_output at this position, channel 0
    int64_t n;               // this sample
    int64_t jd, jh, jw;      // padded coordinates read by tap 0
  };

  __device__ Row row(int64_t group, int64_t m) const {
    return {(group * c.cout_g + m) * gys.v[1]};
  }
  __device__ Col col(int64_t group, int64_t n) const {
    const int64_t ci = n / c.kvol;
    const Tap t = decode_tap(n - ci * c.kvol, c);
    return {group * c.cin_g + ci, t.d * c.dim[0].dil, t.h * c.dim[1].dil, t.w * c.dim[2].dil};
  }
  __device__ KState kstate(int64_t k) const {
    const Pos o = decode_pos(k, c.out_vol, c.out_hw, c.dim[2].out);
    return {gy + o.n * gys.v[0] + o.d * gys.v[2] + o.h * gys.v[3] + o.w * gys.v[4],
            o.n, o.d * c.dim[0].stride - c.dim[0].pad_before,
            o.h * c.dim[1].stride - c.dim[1].pad_before,
            o.w * c.dim[2].stride - c.dim[2].pad_before};
  }
  __device__ acc_t a(const Row& r, const KState& s) const {
    return static_cast<acc_t>(s.gy[r.gy_offset]);
  }
  __device__ acc_t b(const Col& q, const KState& s) const {
    const int64_t id = source_index(s.jd + q.dd, c.dim[0], c.mode[0]);
    const int64_t ih = source_index(s.jh + q.dh, c.dim[1], c.mode[1]);
    const int64_t iw = source_index(s.jw + q.dw, c.dim[2], c.mode[2]);
    if (id < 0 || ih < 0 || iw < 0) return acc_t(0);
    return static_cast<acc_t>(x.at(s.n, q.ci, id, ih, iw));
  }
  __device__ void store(int64_t group, int64_t m, int64_t n, acc_t v) const {
    if (partial != nullptr) {
      partial[((static_cast<int64_t>(blockIdx.z) * groups + group) * M + m) * N + n] = v;
      return;
    }
    store_weight(gw, gws, c, group * c.cout_g + m, n, v);
  }
  __device__ static void store_weight(T* gw, const Strides& s, const Conv& c,
                                               int64_t co, int64_t n, acc_t v) {
    const int64_t ci = n / c.kvol;
    const Tap t = decode_tap(n - ci * c.kvol, c);
    gw[co * s.v[0] + ci * s.v[1] + t.d * s.v[2] + t.h * s.v[3] + t.w * s.v[4]] =
        static_cast<T>(v);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    reduce_splits_kernel(GradWeightProblem<T> p, int64_t splits) {
  using acc_t = typename Acc<T>::type;
  const int64_t per_split = p.groups * p.M * p.N;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < per_split;
       e += step) {
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) sum += p.partial[s * per_split + e];
    const int64_t mn = p.M * p.N;
    const int64_t group = e / mn, m = (e - group * mn) / p.N, n = e - group * mn - m * p.N;
    GradWeightProblem<T>::store_weight(p.gw, p.gws, p.c, group * p.c.cout_g + m, n, sum);
  }
}

// ---------------------------------------------------------------------------------------
// One input channel per group. Output channel co reads input channel co / cout_g.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_kernel(Conv c, Volume<T> x, const T* w, Strides ws, const T* bias,
                             int64_t bias_stride, T* y, Strides ys) {
  using acc_t = typename Acc<T>::type;
  const int64_t cout = c.groups * c.cout_g;
  const int64_t total = c.batch * cout * c.out_vol;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += step) {
    // e = ((n * cout + co) * D + d) * H * W + ...: consecutive threads, consecutive w.
    const int64_t nc = e / c.out_vol;
    const Pos o = decode_pos(e - nc * c.out_vol, c.out_vol, c.out_hw, c.dim[2].out);
    const int64_t n = nc / cout, co = nc - n * cout;
    const int64_t ci = co / c.cout_g;
    const T* wc = w + co * ws.v[0];
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[co * bias_stride]) : acc_t(0);
    // A padding zero is a term like any input element (nn.Conv3d's rule: a NaN or Inf
    // weight meeting it gives NaN), hence no early exits.
    for (int64_t td = 0; td < c.dim[0].k; ++td) {
      const int64_t id = source_index(
          o.d * c.dim[0].stride - c.dim[0].pad_before + td * c.dim[0].dil, c.dim[0], c.mode[0]);
      for (int64_t th = 0; th < c.dim[1].k; ++th) {
        const int64_t ih = source_index(
            o.h * c.dim[1].stride - c.dim[1].pad_before + th * c.dim[1].dil, c.dim[1], c.mode[1]);
        for (int64_t tw = 0; tw < c.dim[2].k; ++tw) {
          const int64_t iw = source_index(
              o.w * c.dim[2].stride - c.dim[2].pad_before + tw * c.dim[2].dil, c.dim[2],
              c.mode[2]);
          const acc_t xv = (id < 0 || ih < 0 || iw < 0)
                               ? acc_t(0)
                               : static_cast<acc_t>(x.at(n, ci, id, ih, iw));
          acc += static_cast<acc_t>(wc[td * ws.v[2] + th * ws.v[3] + tw * ws.v[4]]) * xv;
        }
      }
    }
    y[n * ys.v[0] + co * ys.v[1] + o.d * ys.v[2] + o.h * ys.v[3] + o.w * ys.v[4]] =
        static_cast<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_input_kernel(Conv c, const T* gy, Strides gys, const T* w, Strides ws,
                                T* gx, Strides gxs, const int* only_if) {
  using acc_t = typename Acc<T>::type;
  if (only_if != nullptr && *only_if == 0) return;  // see grad_input_pass
  const int64_t cin = c.groups;
  const int64_t total = c.batch * cin * c.in_vol;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += step) {
    const int64_t nc = e / c.in_vol;
    const Pos i = decode_pos(e - nc * c.in_vol, c.in_vol, c.in_hw, c.dim[2].in);
    const int64_t n = nc / cin, ci = nc - n * cin;
    const Preimage pd = preimage(i.d, c.dim[0], c.mode[0]);
    const Preimage ph = preimage(i.h, c.dim[1], c.mode[1]);
    const Preimage pw = preimage(i.w, c.dim[2], c.mode[2]);
    acc_t acc = acc_t(0);
    for (int64_t co = ci * c.cout_g; co < (ci + 1) * c.cout_g; ++co) {
      const T* gyc = gy + n * gys.v[0] + co * gys.v[1];
      const T* wc = w + co * ws.v[0];
      for (int64_t td = 0; td < c.dim[0].k; ++td)
        for (int rd = 0; rd < pd.count; ++rd) {
          int64_t d0, d1;
          output_range(pd.lo[rd], pd.hi[rd], td, c.dim[0], d0, d1);
          for (int64_t od = d0; od <= d1; ++od)
            for (int64_t th = 0; th < c.dim[1].k; ++th)
              for (int rh = 0; rh < ph.count; ++rh) {
                int64_t h0, h1;
                output_range(ph.lo[rh], ph.hi[rh], th, c.dim[1], h0, h1);
                for (int64_t oh = h0; oh <= h1; ++oh)
                  for (int64_t tw = 0; tw < c.dim[2].k; ++tw)
                    for (int rw = 0; rw < pw.count; ++rw) {
                      int64_t w0, w1;
                      output_range(pw.lo[rw], pw.hi[rw], tw, c.dim[2], w0, w1);
                      for (int64_t ow = w0; ow <= w1; ++ow)
                        acc += static_cast<acc_t>(
                                   wc[td * ws.v[2] + th * ws.v[3] + tw * ws.v[4]]) *
                               static_cast<acc_t>(
                                   gyc[od * gys.v[2] + oh * gys.v[3] + ow * gys.v[4]]);
                    }
              }
        }
    }
    gx[n * gxs.v[0] + ci * gxs.v[1] + i.d * gxs.v[2] + i.h * gxs.v[3] + i.w * gxs.v[4]] =
        static_cast<T>(acc);
  }
}

// Sum of v over the block in a fixed tree; every thread gets the total.
template <typename A>
__device__ A block_sum(A v, A* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  const A total = smem[0];
  __syncthreads();
  return total;
}

// One block per weight element (co, tap), summing over batch and output positions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_grad_weight_kernel(Conv c, const T* gy, Strides gys, Volume<T> x, T* gw,
                                 Strides gws) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t smem[kThreads];
  const int64_t cout = c.groups * c.cout_g;
  const int64_t positions = c.batch * c.out_vol;
  for (int64_t e = blockIdx.x; e < cout * c.kvol; e += gridDim.x) {
    const int64_t co = e / c.kvol;
    const Tap t = decode_tap(e - co * c.kvol, c);
    const T* gyc = gy + co * gys.v[1];
    const int64_t ci = co / c.cout_g;
    acc_t sum = acc_t(0);
    for (int64_t q = threadIdx.x; q < positions; q += kThreads) {
      const Pos o = decode_pos(q, c.out_vol, c.out_hw, c.dim[2].out);
      const int64_t id = source_index(
          o.d * c.dim[0].stride - c.dim[0].pad_before + t.d * c.dim[0].dil, c.dim[0], c.mode[0]);
      const int64_t ih = source_index(
          o.h * c.dim[1].stride - c.dim[1].pad_before + t.h * c.dim[1].dil, c.dim[1], c.mode[1]);
      const int64_t iw = source_index(
          o.w * c.dim[2].stride - c.dim[2].pad_before + t.w * c.dim[2].dil, c.dim[2], c.mode[2]);
      // A padding zero is a term (see the forward kernel).
      const acc_t xv =
          (id < 0 || ih < 0 || iw < 0)
              ? acc_t(0)
              : static_cast<acc_t>(x.at(o.n, ci, id, ih, iw));
      sum += static_cast<acc_t>(
                 gyc[o.n * gys.v[0] + o.d * gys.v[2] + o.h * gys.v[3] + o.w * gys.v[4]]) *
             xv;
    }
    sum = block_sum(sum, smem);
    if (threadIdx.x == 0)
      gw[co * gws.v[0] + t.d * gws.v[2] + t.h * gws.v[3] + t.w * gws.v[4]] =
          static_cast<T>(sum);
  }
}

// grad_bias in two deterministic steps, summed in double like the CPU side (so the result
// does not depend on how the terms are grouped, to within double rounding):
// partial[chunk][co] = sum of grad_output over the chunk's positions, one thread per
// (chunk, channel) with channels fastest (coalesced for channels-last grad_output), enough
// chunks for at least 4 x SMs blocks; then one thread per channel adds its chunks in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_bias_partial_kernel(Conv c, const T* gy, Strides gys, int64_t chunk_len,
                             int64_t chunks, double* partial) {
  const int64_t cout = c.groups * c.cout_g;
  const int64_t positions = c.batch * c.out_vol;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < chunks * cout; e += step) {
    const int64_t chunk = e / cout, co = e - chunk * cout;
    const int64_t first = chunk * chunk_len;
    const int64_t count = std::min(chunk_len, positions - first);
    Pos o = decode_pos(first, c.out_vol, c.out_hw, c.dim[2].out);
    const T* base = gy + co * gys.v[1];
    double sum = 0;
    for (int64_t q = 0; q < count; ++q) {
      sum += static_cast<double>(
          base[o.n * gys.v[0] + o.d * gys.v[2] + o.h * gys.v[3] + o.w * gys.v[4]]);
      if (++o.w == c.dim[2].out) {  // next position without a division
        o.w = 0;
        if (++o.h == c.dim[1].out) {
          o.h = 0;
          if (++o.d == c.dim[0].out) {
            o.d = 0;
            ++o.n;
          }
        }
      }
    }
    partial[e] = sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_bias_finish_kernel(const double* partial, int64_t chunks, int64_t cout, T* gb,
                            int64_t gb_stride) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t co = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; co < cout;
       co += step) {
    double sum = 0;
    for (int64_t k = 0; k < chunks; ++k) sum += partial[k * cout + co];
    gb[co * gb_stride] = static_cast<T>(sum);
  }
}

// Sets *flag when any of n contiguous values is NaN or Inf (every thread that finds one
// writes the same 1).
template <typename T>
__global__ void __launch_bounds__(kThreads) nonfinite_kernel(const T* v, int64_t n, int* flag) {
  using acc_t = typename Acc<T>::type;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  bool found = false;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step)
    found |= !is_finite(static_cast<acc_t>(v[e]));
  if (found) *flag = 1;
}

// ---------------------------------------------------------------------------------------
// Host side. Env supplies launch(kernel, grid, block, args...),
// launch_dynamic(kernel, grid, block, shared_bytes, args...), the grid caps max_grid_x,
// max_grid_y, max_blocks (for 1-D grids), sm_count, and allow_tf32 (torch's setting).
// ---------------------------------------------------------------------------------------
inline Conv make_conv(const Geometry& g) {
  Conv c;
  for (int i = 0; i < 3; ++i)
    c.dim[i] = {g.in[i], g.out[i], g.kernel[i], g.stride[i], g.dilation[i], g.pad_before[i],
                g.pad_after[i]};
  for (int i = 0; i < 3; ++i) c.mode[i] = g.mode[i];
  c.batch = g.batch;
  c.groups = g.groups;
  c.cin_g = g.in_per_group();
  c.cout_g = g.out_per_group();
  c.kvol = g.kernel_volume();
  c.khw = g.kernel[1] * g.kernel[2];
  c.out_hw = g.out[1] * g.out[2];
  c.out_vol = g.out[0] * c.out_hw;
  c.in_hw = g.in[1] * g.in[2];
  c.in_vol = g.in[0] * c.in_hw;
  return c;
}

inline Strides strides_of(const at::Tensor& t) {
  Strides s;
  for (int i = 0; i < 5; ++i) s.v[i] = t.stride(i);
  return s;
}

template <typename T>
Volume<T> volume_of(const Geometry& g, const at::Tensor& x) {
  Volume<T> v{x.const_data_ptr<T>(), strides_of(x), static_cast<const T*>(g.head.data), {},
              g.head.frames};
  for (int i = 0; i < 5; ++i) v.hs.v[i] = g.head.stride[i];
  return v;
}

// Whether the v2 kernels read a stream's head in place (HeadFrames, dims32.cuh): x is the
// tensor they read without a copy (dense channels-last, 16-byte aligned, no padded
// channels) and the head steps along C, D, H and W as x does, from an aligned start.
inline bool head_in_place(const Geometry& g, const at::Tensor& x) {
  if (tc::padded_in_channels(g, x.scalar_type()) != g.in_per_group() ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast3d) ||
      reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(g.head.data) % 16 != 0)
    return false;
  for (int i = 1; i < 5; ++i)
    if (g.head.stride[i] != x.stride(i)) return false;
  return true;
}

// A stream's volume (g.head's frames, then x's) as one channels_last tensor, for the v2
// kernels when they cannot read the head in place: they would copy such an x (planar, a
// view, padded channels) to channels-last anyway, and this copy takes its place.
inline at::Tensor stream_volume(const Geometry& g, const at::Tensor& x) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[2] = g.head.frames;
  const std::vector<int64_t> strides(g.head.stride.begin(), g.head.stride.end());
  const at::Tensor head = at::from_blob(const_cast<void*>(g.head.data), sizes, strides,
                                        x.options());
  sizes[2] += x.size(2);
  at::Tensor v = at::empty(sizes, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  v.narrow(2, 0, g.head.frames).copy_(head);
  v.narrow(2, g.head.frames, x.size(2)).copy_(x);
  return v;
}

// What the v2 kernels read, with its geometry: x behind a head they read in place, or a
// stream's volume as one tensor.
struct V2Input {
  Geometry g;
  at::Tensor x;
};
inline V2Input v2_input(const Geometry& g, const at::Tensor& x) {
  if (g.head.frames == 0 || head_in_place(g, x)) return {g, x};
  V2Input in{g, stream_volume(g, x)};
  in.g.head = {};
  return in;
}

#define TC3D_CUDA_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

inline GemmShape gemm_shape(const Conv& c, int64_t M, int64_t N, int64_t K) {
  return {c, c.groups, M, N, K, K};
}

// Depthwise kernels also serve C_in = 1 convolutions: one input channel per group.
inline bool one_input_channel_per_group(const Geometry& g) { return g.in_per_group() == 1; }

template <typename Env, typename Problem>
void launch_gemm(const Env& env, const Problem& p, int64_t splits) {
  const int64_t n_tiles = ceil_div(p.N, kBN);
  const int64_t m_tiles = ceil_div(p.M, kBM) * p.groups;
  if (n_tiles == 0 || m_tiles == 0) return;  // C_in or C_out per group is 0
  const dim3 grid(static_cast<unsigned>(std::min(n_tiles, env.max_grid_x)),
                  static_cast<unsigned>(std::min(m_tiles, env.max_grid_y)),
                  static_cast<unsigned>(splits));
  env.launch(gemm_kernel<Problem>, grid, dim3(kThreads), p);
}

template <typename Env>
void forward_pass(const Env& env, const Geometry& g, const at::Tensor& x,
                  const at::Tensor& w, const at::Tensor& b, at::Tensor& y) {
  const bool dw_ok = dw::ok(g, x.scalar_type());
  if (dw_ok || tc::forward_ok(g, x.scalar_type(), env.allow_tf32)) {
    const V2Input in = v2_input(g, x);
    if (dw_ok)
      dw::forward(env, in.g, in.x, w, b, y);
    else
      tc::forward(env, in.g, in.x, w, b, y);
    return;
  }
  const Conv c = make_conv(g);
  TC3D_CUDA_DISPATCH(x.scalar_type(), "torchconv3d_cuda_forward", [&] {
    const scalar_t* bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const int64_t bias_stride = b.defined() ? b.stride(0) : 0;
    if (one_input_channel_per_group(g)) {
      const int64_t total = g.batch * g.out_channels * c.out_vol;
      env.launch(depthwise_forward_kernel<scalar_t>, grid_1d(env, ceil_div(total, kThreads)),
                 dim3(kThreads), c, volume_of<scalar_t>(g, x), w.const_data_ptr<scalar_t>(),
                 strides_of(w), bias, bias_stride, y.mutable_data_ptr<scalar_t>(),
                 strides_of(y));
      return;
    }
    const ForwardProblem<scalar_t> p{
        gemm_shape(c, c.cout_g, c.batch * c.out_vol, c.cin_g * c.kvol),
        volume_of<scalar_t>(g, x), w.const_data_ptr<scalar_t>(), bias, bias_stride,
        y.mutable_data_ptr<scalar_t>(), strides_of(w), strides_of(y)};
    launch_gemm(env, p, 1);
  });
}

template <typename Env>
void grad_input_pass(const Env& env, const Geometry& g, const at::Tensor& gy,
                     const at::Tensor& w, at::Tensor& gx) {
  // The v2 kernels multiply the zero-filled grad_output past the output's border (no term
  // of nn.Conv3d's definition) by every weight: a NaN or Inf weight would give NaN there.
  // Such weights are rare, so a flag found on the device (no host sync) reruns the pass
  // below with v1's exact-terms kernels only when there is one.
  at::Tensor nonfinite;
  const bool stencil = dw::grad_input_ok(g, gy.scalar_type());
  if (stencil || tc::grad_input_ok(g, gy.scalar_type(), env.allow_tf32)) {
    if (stencil)
      dw::grad_input(env, g, gy, w, gx);
    else
      tc::grad_input(env, g, gy, w, gx);
    nonfinite = at::zeros({1}, w.options().dtype(at::kInt));
    const at::Tensor wc = w.contiguous();
    TC3D_CUDA_DISPATCH(w.scalar_type(), "torchconv3d_cuda_nonfinite", [&] {
      env.launch(nonfinite_kernel<scalar_t>, grid_1d(env, ceil_div(wc.numel(), kThreads)),
                 dim3(kThreads), wc.const_data_ptr<scalar_t>(), wc.numel(),
                 nonfinite.mutable_data_ptr<int>());
    });
  }
  const Conv c = make_conv(g);
  TC3D_CUDA_DISPATCH(gy.scalar_type(), "torchconv3d_cuda_grad_input", [&] {
    if (one_input_channel_per_group(g)) {
      const int64_t total = g.batch * g.in_channels * c.in_vol;
      env.launch(depthwise_grad_input_kernel<scalar_t>,
                 grid_1d(env, ceil_div(total, kThreads)), dim3(kThreads), c,
                 gy.const_data_ptr<scalar_t>(), strides_of(gy), w.const_data_ptr<scalar_t>(),
                 strides_of(w), gx.mutable_data_ptr<scalar_t>(), strides_of(gx),
                 nonfinite.defined() ? nonfinite.const_data_ptr<int>() : nullptr);
      return;
    }
    GradInputProblem<scalar_t> p{
        gemm_shape(c, c.cin_g, c.batch * c.in_vol, c.cout_g * c.kvol),
        gy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        gx.mutable_data_ptr<scalar_t>(), strides_of(gy), strides_of(w), strides_of(gx)};
    if (nonfinite.defined()) p.only_if = nonfinite.const_data_ptr<int>();
    launch_gemm(env, p, 1);
  });
}

// v1's GEMM kernel: 256 threads, ~128 registers, so two blocks per SM.
constexpr int64_t kV1BlocksPerSM = 2;

template <typename Env>
void grad_weight_pass(const Env& env, const Geometry& g, const at::Tensor& gy,
                      const at::Tensor& x, at::Tensor& gw) {
  if (gw.numel() == 0) return;
  const bool dw_ok = dw::ok(g, gy.scalar_type());
  if (dw_ok || tc::grad_weight_ok(g, gy.scalar_type(), env.allow_tf32)) {
    const V2Input in = v2_input(g, x);
    if (dw_ok)
      dw::grad_weight(env, in.g, gy, in.x, gw);
    else
      tc::grad_weight(env, in.g, gy, in.x, gw);
    return;
  }
  const Conv c = make_conv(g);
  TC3D_CUDA_DISPATCH(gy.scalar_type(), "torchconv3d_cuda_grad_weight", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    if (one_input_channel_per_group(g)) {
      env.launch(depthwise_grad_weight_kernel<scalar_t>,
                 grid_1d(env, g.out_channels * c.kvol), dim3(kThreads), c,
                 gy.const_data_ptr<scalar_t>(), strides_of(gy), volume_of<scalar_t>(g, x),
                 gw.mutable_data_ptr<scalar_t>(), strides_of(gw));
      return;
    }
    GradWeightProblem<scalar_t> p{
        gemm_shape(c, c.cout_g, c.cin_g * c.kvol, c.batch * c.out_vol),
        gy.const_data_ptr<scalar_t>(), volume_of<scalar_t>(g, x),
        gw.mutable_data_ptr<scalar_t>(), strides_of(gy), strides_of(gw), nullptr};
    const int64_t tiles = ceil_div(p.M, kBM) * ceil_div(p.N, kBN) * p.groups;
    int64_t splits = tc::grad_weight_splits(tiles, ceil_div(p.K, kBK),
                                            gw.numel() * static_cast<int64_t>(sizeof(acc_t)),
                                            env.sm_count * kV1BlocksPerSM);
    p.k_per_split = ceil_div(ceil_div(p.K, kBK), splits) * kBK;
    splits = ceil_div(p.K, p.k_per_split);  // no empty split
    at::Tensor workspace;
    if (splits > 1) {
      workspace = at::empty({splits * gw.numel() * static_cast<int64_t>(sizeof(acc_t))},
                            gy.options().dtype(at::kByte));
      p.partial = reinterpret_cast<acc_t*>(workspace.mutable_data_ptr());
    }
    launch_gemm(env, p, splits);
    if (splits > 1)
      env.launch(reduce_splits_kernel<scalar_t>, grid_1d(env, ceil_div(gw.numel(), kThreads)),
                 dim3(kThreads), p, splits);
  });
}

template <typename Env>
void grad_bias_pass(const Env& env, const Geometry& g, const at::Tensor& gy, at::Tensor& gb) {
  const Conv c = make_conv(g);
  const int64_t cout = g.out_channels, positions = g.batch * c.out_vol;
  if (cout == 0) return;
  // A function of the shapes and SM count only: the summation order never changes.
  const int64_t want = ceil_div(4 * env.sm_count * kThreads, cout);
  const int64_t chunks = std::max<int64_t>(1, std::min(want, ceil_div(positions, 16)));
  const int64_t chunk_len = std::max<int64_t>(1, ceil_div(positions, chunks));
  const at::Tensor partial = at::empty({chunks * cout}, gy.options().dtype(at::kDouble));
  TC3D_CUDA_DISPATCH(gy.scalar_type(), "torchconv3d_cuda_grad_bias", [&] {
    env.launch(grad_bias_partial_kernel<scalar_t>,
               grid_1d(env, ceil_div(chunks * cout, kThreads)), dim3(kThreads), c,
               gy.const_data_ptr<scalar_t>(), strides_of(gy), chunk_len, chunks,
               partial.mutable_data_ptr<double>());
    env.launch(grad_bias_finish_kernel<scalar_t>, grid_1d(env, ceil_div(cout, kThreads)),
               dim3(kThreads), partial.const_data_ptr<double>(), chunks, cout,
               gb.mutable_data_ptr<scalar_t>(), gb.stride(0));
  });
}

}  // namespace torchconv3d::gpu
