// The tensor-core GEMM shared by every pass: tile shapes, the pipelined main loop and the
// epilogue walk. A pass supplies a Problem (see tc_iterators.cuh) with two operand
// iterators, which own every address and every padding decision, and a store.
//
// A pipeline stage holds 64 bytes of K (32 halves or 16 floats: two mma k-steps) of each
// operand, K-major or MN-major as the operand is stored in memory (OperandTile).
//
// Pipeline (Stages deep): the iterators' cp.async copies for K tile t go to stage t % Stages
// as one commit group. Each iteration waits until tile t has landed (at most Stages - 2
// younger groups in flight), passes one barrier (so every warp sees it, and every warp has
// finished reading the stage refilled next), issues the loads of tile t + Stages - 1, then
// multiplies tile t from shared memory with ldmatrix + mma.
#pragma once

#include "../conv3d.h"
#include "arch.cuh"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace torchconv3d::gpu::tc {

template <typename T>
struct MmaFor;
template <>
struct MmaFor<c10::Half> {
  static constexpr arch::MmaKind kind = arch::MmaKind::F16;
};
template <>
struct MmaFor<c10::BFloat16> {
  static constexpr arch::MmaKind kind = arch::MmaKind::BF16;
};
template <>
struct MmaFor<float> {  // only when TF32 is allowed (cudnn.allow_tf32)
  static constexpr arch::MmaKind kind = arch::MmaKind::TF32;
};

constexpr int kKBytes = 64;              // bytes of K per stage row
constexpr int kRowBytes = kKBytes + 16;  // padded row pitch in shared memory
constexpr int kChunks = kKBytes / 16;    // 16-byte chunks per row
constexpr int kMmaKBytes = 32;           // bytes of K per mma

template <int BM_, int BN_, int WarpsM_, int WarpsN_, int Stages_, int MinBlocks_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, WarpsM = WarpsM_, WarpsN = WarpsN_;
  static constexpr int Stages = Stages_;
  static constexpr int MinBlocks = MinBlocks_;  // resident blocks per SM: caps registers
  static constexpr int kThreads = 32 * WarpsM * WarpsN;
  static constexpr int WM = BM / WarpsM, WN = BN / WarpsN;  // one warp's tile
  static constexpr int MI = WM / 16, NI = WN / 8;            // mma tiles per warp
  static_assert(WM % 16 == 0 && WN % 16 == 0, "B fragments are loaded two n8 tiles at a time");
  static_assert((BM * kChunks) % kThreads == 0 && (BN * kChunks) % kThreads == 0,
                "every thread copies the same number of 16-byte chunks");
  static_assert(Stages >= 2);
};

// 256 threads, 128x128 tiles, 4 stages: up to 80 KB of shared memory; two blocks per SM
// hold 16 warps and cap registers at 128 a thread.
using Tile128x128 = TileConfig<128, 128, 2, 4, 4, 2>;
// For GEMMs whose N is at most 64 (forward, grad_input) or M is (grad_weight): 61 KB,
// two blocks per SM (three would cap registers at 80, where the gathers spill).
using Tile128x64 = TileConfig<128, 64, 4, 2, 4, 2>;
using Tile64x128 = TileConfig<64, 128, 2, 4, 4, 2>;

// One operand's tile in a pipeline stage, for `Width` GEMM rows (A) or columns (B):
// - K-major: a row per GEMM row/column holding kKBytes of K, rows kRowBytes apart (the
//   padding puts ldmatrix's 8 rows in distinct bank groups); fragments by ldmatrix.
// - MN-major: a row per K index holding Width elements (for operands stored with K
//   outermost, as grad_weight's are). Rows are padded so that the 8 rows an ldmatrix.trans
//   matrix reads (16-bit types), or the 4 K rows x 8 columns a TF32 fragment reads
//   word by word, fall in distinct banks.
template <typename T, bool KMajor, int Width>
struct OperandTile {
  static constexpr int kKRows = kKBytes / sizeof(T);  // MN-major: K indices per stage
  static constexpr int kPitch =
      KMajor ? kRowBytes : Width * static_cast<int>(sizeof(T)) + (sizeof(T) == 2 ? 16 : 32);
  static constexpr int kBytes = KMajor ? Width * kRowBytes : kKRows * kPitch;

  // The A fragment of rows [r0, r0 + 16) at K bytes [kk, kk + 32).
  __device__ static void load_a(uint32_t (&f)[4], const unsigned char* s, int r0, int kk) {
    const int lane = threadIdx.x % 32;
    if constexpr (KMajor) {
      arch::ldmatrix_x4(f, s + (r0 + lane % 8 + 8 * ((lane / 8) % 2)) * kPitch + kk +
                               16 * (lane / 16));
    } else if constexpr (sizeof(T) == 2) {
      const int k = kk / 2 + lane % 8 + 8 * (lane / 16);
      arch::ldmatrix_x4_trans(f, s + k * kPitch + (r0 + 8 * ((lane / 8) % 2)) * 2);
    } else {
      const int k = kk / 4 + lane % 4, r = r0 + lane / 4;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        f[i] = *reinterpret_cast<const uint32_t*>(s + (k + 4 * (i / 2)) * kPitch +
                                                  (r + 8 * (i % 2)) * 4);
    }
  }
  // The B fragments of columns [c0, c0 + 8) and [c0 + 8, c0 + 16) at K bytes [kk, kk + 32).
  __device__ static void load_b(uint32_t (&f0)[2], uint32_t (&f1)[2], const unsigned char* s,
                                int c0, int kk) {
    const int lane = threadIdx.x % 32;
    uint32_t r[4];
    if constexpr (KMajor) {
      arch::ldmatrix_x4(r, s + (c0 + lane % 8 + 8 * (lane / 16)) * kPitch + kk +
                               16 * ((lane / 8) % 2));
    } else if constexpr (sizeof(T) == 2) {
      const int k = kk / 2 + lane % 8 + 8 * ((lane / 8) % 2);
      arch::ldmatrix_x4_trans(r, s + k * kPitch + (c0 + 8 * (lane / 16)) * 2);
    } else {
      const int k = kk / 4 + lane % 4, c = c0 + lane / 4;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        r[i] = *reinterpret_cast<const uint32_t*>(s + (k + 4 * (i % 2)) * kPitch +
                                                  (c + 8 * (i / 2)) * 4);
    }
    f0[0] = r[0];
    f0[1] = r[1];
    f1[0] = r[2];
    f1[1] = r[3];
  }
};

// Shared memory of a pipeline: Stages x (A tile, B tile).
template <typename Cfg, typename T, bool AKMajor, bool BKMajor>
struct Pipeline {
  using A = OperandTile<T, AKMajor, Cfg::BM>;
  using B = OperandTile<T, BKMajor, Cfg::BN>;
  static constexpr int kStageBytes = A::kBytes + B::kBytes;
  static constexpr int kSmemBytes = Cfg::Stages * kStageBytes;
};

template <typename Cfg>
using Accumulators = float[Cfg::MI][Cfg::NI][4];

// Multiplies k_tiles K tiles of the iterators' operands into acc, from walk state k on.
// Iterator: kKMajor (its shared-memory layout) and load(tile, k), which issues this
// thread's cp.async copies of K tile k into its tile of a stage; walk.next(k) moves on.
template <typename Cfg, typename T, typename IterA, typename IterB, typename Walk,
          typename KState>
__device__ __forceinline__ void mainloop(const IterA& ia, const IterB& ib, const Walk& walk,
                                         KState k, int64_t k_tiles, unsigned char* smem,
                                         Accumulators<Cfg>& acc) {
  using Pipe = Pipeline<Cfg, T, IterA::kKMajor, IterB::kKMajor>;
  constexpr arch::MmaKind kKind = MmaFor<T>::kind;
  const int warp = threadIdx.x / 32;
  const int wm = (warp % Cfg::WarpsM) * Cfg::WM, wn = (warp / Cfg::WarpsM) * Cfg::WN;

  auto stage = [&](int s) { return smem + s * Pipe::kStageBytes; };
  auto load = [&](int s) {
    ia.load(stage(s), k);
    ib.load(stage(s) + Pipe::A::kBytes, k);
    walk.next(k);
  };
  for (int s = 0; s < Cfg::Stages - 1; ++s) {
    if (s < k_tiles) load(s);
    arch::cp_async_commit();  // empty groups keep the count uniform
  }
  int read = 0, write = Cfg::Stages - 1;
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    arch::cp_async_wait<Cfg::Stages - 2>();
    __syncthreads();
    if (kt + Cfg::Stages - 1 < k_tiles) load(write);
    arch::cp_async_commit();

    const unsigned char* a = stage(read);
    const unsigned char* b = a + Pipe::A::kBytes;
#pragma unroll
    for (int kk = 0; kk < kKBytes; kk += kMmaKBytes) {
      // All of the warp's A fragments, then B two n8 tiles at a time: fewer live registers.
      uint32_t af[Cfg::MI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi) {
        Pipe::A::load_a(af[mi], a, wm + 16 * mi, kk);
        if constexpr (kKind == arch::MmaKind::TF32)
#pragma unroll
          for (int r = 0; r < 4; ++r) af[mi][r] = arch::to_tf32(af[mi][r]);
      }
#pragma unroll
      for (int nj = 0; nj < Cfg::NI / 2; ++nj) {
        uint32_t bf[2][2];
        Pipe::B::load_b(bf[0], bf[1], b, wn + 16 * nj, kk);
        if constexpr (kKind == arch::MmaKind::TF32)
#pragma unroll
          for (int r = 0; r < 4; ++r) bf[r / 2][r % 2] = arch::to_tf32(bf[r / 2][r % 2]);
#pragma unroll
        for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) arch::mma<kKind>(acc[mi][2 * nj + h], af[mi], bf[h]);
      }
    }
    read = read + 1 == Cfg::Stages ? 0 : read + 1;
    write = write + 1 == Cfg::Stages ? 0 : write + 1;
  }
  arch::cp_async_wait<0>();
  __syncthreads();  // the next tile's first copies overwrite stages still being read
}

// Hands every accumulator of this thread to the store: row(m) once per GEMM row, then
// store(row, n, value) for each column.
template <typename Cfg, typename Store>
__device__ __forceinline__ void epilogue(const Accumulators<Cfg>& acc, int64_t m0, int64_t n0,
                                         int64_t M, int64_t N, const Store& st) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t wm = m0 + (warp % Cfg::WarpsM) * Cfg::WM + lane / 4;
  const int64_t wn = n0 + (warp / Cfg::WarpsM) * Cfg::WN + 2 * (lane % 4);
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = wm + 16 * mi + 8 * h;
      if (m >= M) continue;
      const auto row = st.row(m);
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t n = wn + 8 * ni + e;
          if (n < N) st.store(row, n, acc[mi][ni][2 * h + e]);
        }
    }
}

// One pass = one Problem: per group a GEMM of M x N, K in k_tiles tiles of kKBytes, cut
// into splits of k_tiles_per_split (one per blockIdx.z). Problem supplies its K walk,
// a_iterator / b_iterator(group, m0 or n0) and store(group, split).
template <typename Cfg, typename Problem>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MinBlocks)
    tc_gemm_kernel(Problem p) {
  unsigned char* smem = arch::dynamic_smem();
  const int64_t m_tiles = ceil_div(p.M, Cfg::BM);
  const int64_t n_tiles = ceil_div(p.N, Cfg::BN);
  const int64_t k_first = static_cast<int64_t>(blockIdx.z) * p.k_tiles_per_split;
  const int64_t k_tiles = std::min(p.k_tiles, k_first + p.k_tiles_per_split) - k_first;
  for (int64_t tm = blockIdx.x; tm < m_tiles; tm += gridDim.x)
    for (int64_t tn = blockIdx.y; tn < n_tiles * p.groups; tn += gridDim.y) {
      const int64_t group = tn / n_tiles;
      const int64_t m0 = tm * Cfg::BM, n0 = (tn - group * n_tiles) * Cfg::BN;
      Accumulators<Cfg> acc;
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;
      const auto ia = p.template a_iterator<Cfg::BM, Cfg::kThreads>(group, m0);
      const auto ib = p.template b_iterator<Cfg::BN, Cfg::kThreads>(group, n0);
      mainloop<Cfg, typename Problem::Element>(ia, ib, p.walk, p.walk.start(k_first), k_tiles,
                                               smem, acc);
      epilogue<Cfg>(acc, m0, n0, p.M, p.N, p.store(group, blockIdx.z));
    }
}

}  // namespace torchconv3d::gpu::tc
