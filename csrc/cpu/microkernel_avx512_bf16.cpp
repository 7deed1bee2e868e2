// AVX512-BF16 build of the GEMM micro-kernel (see microkernel.h, Bf16Kernels): bfloat16
// operands in pairs, one vdpbf16ps per 16 positions x 2 input channels, float sums.
// Called only after the CPU reported every extension the target attribute names.
#include "microkernel.h"

#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TC3D_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TC3D_INLINE \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline

namespace torchconv3d::cpu {
namespace {

// Register block as the float kernel's: 6 rows x 4 registers of 16 positions = 24
// accumulators, 4 registers for the B loads, 1 for the broadcast weight pair.
constexpr int kRows = 6;
constexpr int kVecs = 4;

template <int R, int V>
TC3D_INLINE void block(const uint32_t* a, int64_t k, const uint32_t* b, const int64_t* offs,
                       float* c, int64_t ldc) {
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const uint32_t* bp = b + offs[i];
    __m512bh bv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bp + v * 16);
    const uint32_t* ap = a + i * R;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[r]));
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + r * ldc + v * 16, acc[r][v]);
}

template <int R, int V>
TC3D_INLINE void block_v(int64_t v, const uint32_t* a, int64_t k, const uint32_t* b,
                         const int64_t* offs, float* c, int64_t ldc) {
  if constexpr (V > 1) {
    if (v < V) return block_v<R, V - 1>(v, a, k, b, offs, c, ldc);
  }
  block<R, V>(a, k, b, offs, c, ldc);
}

template <int R>
TC3D_FN void rows_fixed(const uint32_t* a, int64_t k, const uint32_t* b, const int64_t* offs,
                        int64_t n, float* c, int64_t ldc) {
  for (int64_t f = 0, left = n / 16; left > 0;) {
    const int64_t v = (left == 5 || left == 6) ? 3 : std::min<int64_t>(left, kVecs);
    block_v<R, kVecs>(v, a, k, b + f, offs, c + f, ldc);
    f += v * 16;
    left -= v;
  }
}

template <int R>
TC3D_INLINE void rows_r(int64_t r, const uint32_t* a, int64_t k, const uint32_t* b,
                        const int64_t* offs, int64_t n, float* c, int64_t ldc) {
  if constexpr (R > 1) {
    if (r < R) return rows_r<R - 1>(r, a, k, b, offs, n, c, ldc);
  }
  rows_fixed<R>(a, k, b, offs, n, c, ldc);
}

TC3D_FN void gemm(int64_t rows, const uint32_t* a, int64_t k, const uint32_t* b,
                  const int64_t* offs, int64_t n, float* c, int64_t ldc) {
  rows_r<kRows>(std::min<int64_t>(rows, kRows), a, k, b, offs, n, c, ldc);
}

// Channels innermost (gemm_cl): NF positions x V registers of 16 output channels from
// position f0 and channel j; per (tap, channel pair): V weight loads, NF pair broadcasts,
// NF * V dot products.
struct ClArgs {
  const uint32_t* a;
  int64_t lda, ldk, taps, ce;
  const uint32_t* b;
  int64_t ldb;
  const int64_t* offs;
  float* c;
  int64_t ldc;
  bool accumulate;
};

template <int V, int NF>
TC3D_INLINE void cl_block(const ClArgs& p, int64_t f0, int64_t j) {
  __m512 acc[NF][V];
  float* c = p.c + f0 * p.ldc + j;
#pragma GCC unroll 12
  for (int f = 0; f < NF; ++f)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[f][v] = p.accumulate ? _mm512_loadu_ps(c + f * p.ldc + v * 16) : _mm512_setzero_ps();
  const uint32_t* b = p.b + f0 * p.ldb;
  for (int64_t k = 0; k < p.taps; ++k) {
    const uint32_t* bk = b + p.offs[k];
    const uint32_t* ak = p.a + k * p.ldk + j;
    if (p.ce == 1) {  // one pair per tap: no pair loop
      __m512bh av[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) av[v] = (__m512bh)_mm512_loadu_si512(ak + v * 16);
#pragma GCC unroll 12
      for (int f = 0; f < NF; ++f) {
        const __m512bh bv = (__m512bh)_mm512_set1_epi32(static_cast<int>(bk[f * p.ldb]));
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[f][v] = _mm512_dpbf16_ps(acc[f][v], bv, av[v]);
      }
      continue;
    }
    for (int64_t e = 0; e < p.ce; ++e) {
      __m512bh av[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v)
        av[v] = (__m512bh)_mm512_loadu_si512(ak + e * p.lda + v * 16);
#pragma GCC unroll 12
      for (int f = 0; f < NF; ++f) {
        const __m512bh bv = (__m512bh)_mm512_set1_epi32(static_cast<int>(bk[f * p.ldb + e]));
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[f][v] = _mm512_dpbf16_ps(acc[f][v], bv, av[v]);
      }
    }
  }
#pragma GCC unroll 12
  for (int f = 0; f < NF; ++f)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + f * p.ldc + v * 16, acc[f][v]);
}

template <int V, int NF>
TC3D_INLINE void cl_block_f(int64_t nf, const ClArgs& p, int64_t f0, int64_t j) {
  if constexpr (NF > 1) {
    if (nf < NF) return cl_block_f<V, NF - 1>(nf, p, f0, j);
  }
  cl_block<V, NF>(p, f0, j);
}

template <int V>
TC3D_INLINE void cl_sweep(int64_t n, const ClArgs& p, int64_t j) {
  constexpr int NF = std::min(12, 24 / V);
  int64_t f = 0;
  for (; f + NF <= n; f += NF) cl_block<V, NF>(p, f, j);
  if (f < n) cl_block_f<V, NF>(n - f, p, f, j);
}

template <int V>
TC3D_INLINE void cl_sweep_v(int64_t v, int64_t n, const ClArgs& p, int64_t j) {
  if constexpr (V > 1) {
    if (v < V) return cl_sweep_v<V - 1>(v, n, p, j);
  }
  cl_sweep<V>(n, p, j);
}

TC3D_FN void gemm_cl(int64_t n, int64_t cols, const uint32_t* a, int64_t lda, int64_t ldk,
                     int64_t taps, int64_t ce, const uint32_t* b, int64_t ldb,
                     const int64_t* offs, float* c, int64_t ldc, bool accumulate) {
  const ClArgs p{a, lda, ldk, taps, ce, b, ldb, offs, c, ldc, accumulate};
  for (int64_t j = 0, left = cols / 16; left > 0;) {
    const int64_t v = (left == 5 || left == 6) ? 3 : std::min<int64_t>(left, kVecs);
    cl_sweep_v<kVecs>(v, n, p, j);
    j += v * 16;
    left -= v;
  }
}

// dot: R grad_output rows x T taps, 32 positions (16 pairs) per vdpbf16ps; the lanes are
// added once at the end (_mm512_reduce_add_ps: a fixed tree).
template <int R, int T>
TC3D_INLINE void dot_block(const uint16_t* g, int64_t ldg, const uint16_t* b,
                           const int64_t* offs, int64_t n, float* out, int64_t ldo) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const uint16_t* bp[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) bp[t] = b + offs[t];
  for (int64_t f = 0; f < n; f += 32) {
    __m512bh gv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) gv[r] = (__m512bh)_mm512_loadu_si512(g + r * ldg + f);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512bh bv = (__m512bh)_mm512_loadu_si512(bp[t] + f);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], gv[r], bv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * ldo + t] += _mm512_reduce_add_ps(acc[r][t]);
}

// The float kernel's dot block: 4 rows x 6 taps.
constexpr int kDotRows = 4;
constexpr int kDotCols = 6;

template <int R, int T>
TC3D_INLINE void dot_block_t(int64_t t, const uint16_t* g, int64_t ldg, const uint16_t* b,
                             const int64_t* offs, int64_t n, float* out, int64_t ldo) {
  if constexpr (T > 1) {
    if (t < T) return dot_block_t<R, T - 1>(t, g, ldg, b, offs, n, out, ldo);
  }
  dot_block<R, T>(g, ldg, b, offs, n, out, ldo);
}

template <int R>
TC3D_INLINE void dot_rows(int64_t r, const uint16_t* g, int64_t ldg, const uint16_t* b,
                          const int64_t* offs, int64_t cols, int64_t n, float* out,
                          int64_t ldo) {
  if constexpr (R > 1) {
    if (r < R) return dot_rows<R - 1>(r, g, ldg, b, offs, cols, n, out, ldo);
  }
  for (int64_t j = 0; j < cols; j += kDotCols)
    dot_block_t<R, kDotCols>(std::min<int64_t>(kDotCols, cols - j), g, ldg, b, offs + j, n,
                             out + j, ldo);
}

TC3D_FN void dot(int64_t rows, const uint16_t* g, int64_t ldg, const uint16_t* b,
                 const int64_t* offs, int64_t cols, int64_t n, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; r += kDotRows)
    dot_rows<kDotRows>(std::min<int64_t>(kDotRows, rows - r), g + r * ldg, ldg, b, offs, cols,
                       n, out + r * ldo, ldo);
}

// outer_cl on pairs of positions (microkernel.h): an R x V block of sums for one tap in
// registers over every row and pair, then added to out. b holds (x[q], x[q + 1]) per lane
// at position q, so any tap offset pairs positions (f, f + 1) for even f; with an odd n
// the last pair's upper half is cleared (its g is zero, its x may be any value).
struct OuterArgs {
  int64_t rows, n;
  const uint32_t* g;
  int64_t ldg, ldgr;
  int64_t ldb, ldbr;
  float* out;
  int64_t ldo;
};

template <int R, int V>
TC3D_INLINE void outer_block(const OuterArgs& p, const uint32_t* b, const uint32_t* g, float* out) {
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  const int64_t pairs = p.n / 2;
  const __m512i low = _mm512_set1_epi32(0xffff);
  for (int64_t r = 0; r < p.rows; ++r) {
    const uint32_t* br = b + r * p.ldbr;
    const uint32_t* gr = g + r * p.ldgr;
    for (int64_t q = 0; q <= pairs; ++q) {
      if (q == pairs && p.n % 2 == 0) break;
      __m512i xv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) xv[v] = _mm512_loadu_si512(br + 2 * q * p.ldb + v * 16);
      if (q == pairs) {  // the odd last position, alone
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) xv[v] = _mm512_and_si512(xv[v], low);
      }
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) {
        const __m512bh gv = (__m512bh)_mm512_set1_epi32(static_cast<int>(gr[q * p.ldg + j]));
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], gv, (__m512bh)xv[v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* o = out + j * p.ldo + v * 16;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[j][v]));
    }
}

template <int R, int V>
TC3D_INLINE void outer_block_r(int64_t r, const OuterArgs& p, const uint32_t* b,
                               const uint32_t* g, float* out) {
  if constexpr (R > 1) {
    if (r < R) return outer_block_r<R - 1, V>(r, p, b, g, out);
  }
  outer_block<R, V>(p, b, g, out);
}

// Blocks of 8 output channels x 2 registers of input channels (as the float kernel: 12 x 2
// spills), the taps outermost.
constexpr int kOuterRows = 8;
constexpr int kOuterVecs = 2;

template <int V>
TC3D_INLINE void outer_columns(const OuterArgs& p, int64_t taps, int64_t js, const uint32_t* b,
                               const int64_t* offs, int64_t ldk, int64_t e) {
  for (int64_t k = 0; k < taps; ++k)
    for (int64_t j = 0; j < js; j += kOuterRows)
      outer_block_r<kOuterRows, V>(std::min<int64_t>(kOuterRows, js - j), p, b + offs[k] + e,
                                   p.g + j, p.out + k * ldk + j * p.ldo + e);
}

TC3D_FN void outer_cl(int64_t rows, int64_t n, int64_t taps, int64_t js, int64_t es,
                      const uint32_t* g, int64_t ldg, int64_t ldgr, const uint32_t* b,
                      int64_t ldb, int64_t ldbr, const int64_t* offs, float* out, int64_t ldk,
                      int64_t ldo) {
  const OuterArgs p{rows, n, g, ldg, ldgr, ldb, ldbr, out, ldo};
  for (int64_t e = 0; e < es; e += kOuterVecs * 16) {
    if (es - e >= kOuterVecs * 16) {
      outer_columns<kOuterVecs>(p, taps, js, b, offs, ldk, e);
    } else {
      outer_columns<1>(p, taps, js, b, offs, ldk, e);
    }
  }
}

TC3D_FN void interleave(int64_t n, const uint16_t* lo, const uint16_t* hi, uint32_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512i l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo + i));
    const __m512i h =
        hi ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi + i)) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(out + i, m, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
  }
}

}  // namespace

bool have_avx512_bf16_kernels() {
  return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
         __builtin_cpu_supports("avx512vl") != 0 && __builtin_cpu_supports("avx512bf16") != 0;
}

const Bf16Kernels& avx512_bf16_kernels() {
  static const Bf16Kernels k{&gemm, &gemm_cl, &dot, &outer_cl, &interleave, kRows};
  return k;
}

}  // namespace torchconv3d::cpu

#else  // not x86-64 with GCC/Clang

namespace torchconv3d::cpu {
bool have_avx512_bf16_kernels() { return false; }
const Bf16Kernels& avx512_bf16_kernels() {
  static const Bf16Kernels k{nullptr, nullptr, nullptr, nullptr, nullptr, 0};
  return k;
}
}  // namespace torchconv3d::cpu

#endif
