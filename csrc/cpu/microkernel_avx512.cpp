// AVX-512 build of the micro-kernels (see microkernel.h). Every function here carries
// the AVX-512 target attribute and is only called after the CPU reported AVX-512F, so
// the rest of the library stays baseline x86-64.
#include "microkernel.h"

#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TC3D_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define TC3D_AVX512_INLINE __attribute__((target("avx512f,avx512dq,fma"), always_inline)) inline

namespace torchconv3d::cpu {
namespace {

// One zmm register of A: 16 floats or 8 doubles.
template <typename A>
struct Vec;

template <>
struct Vec<float> {
  using reg = __m512;
  static constexpr int width = 16;
  static TC3D_AVX512_INLINE reg zero() { return _mm512_setzero_ps(); }
  static TC3D_AVX512_INLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
  static TC3D_AVX512_INLINE void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static TC3D_AVX512_INLINE reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static TC3D_AVX512_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static TC3D_AVX512_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  // Pairwise tree over the 16 lanes: 8 + 8, then 4 + 4, 2 + 2, 1 + 1.
  static TC3D_AVX512_INLINE float sum(reg v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)));
  }
};

template <>
struct Vec<double> {
  using reg = __m512d;
  static constexpr int width = 8;
  static TC3D_AVX512_INLINE reg zero() { return _mm512_setzero_pd(); }
  static TC3D_AVX512_INLINE reg load(const double* p) { return _mm512_loadu_pd(p); }
  static TC3D_AVX512_INLINE void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static TC3D_AVX512_INLINE reg bcast(const double* p) { return _mm512_set1_pd(*p); }
  static TC3D_AVX512_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static TC3D_AVX512_INLINE reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static TC3D_AVX512_INLINE double sum(reg v) {
    const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
};

// R rows x V registers of C held in registers while k runs; 6 x 4 = 24 accumulators
// leave 8 of the 32 zmm registers for the B loads.
constexpr int kGemmRows = 6;
constexpr int kGemmVecs = 4;

template <typename A, int R, int V>
TC3D_AVX512_INLINE void gemm_block(const A* a, int64_t k, const A* b, const int64_t* offs,
                                   A* c, int64_t ldc, bool accumulate) {
  using W = Vec<A>;
  typename W::reg acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = W::zero();
  for (int64_t i = 0; i < k; ++i) {
    const A* bp = b + offs[i];
    typename W::reg bv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) bv[v] = W::load(bp + v * W::width);
    const A* ap = a + i * R;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const typename W::reg av = W::bcast(ap + r);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = W::fma(av, bv[v], acc[r][v]);
    }
  }
  if (accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v)
        acc[r][v] = W::add(acc[r][v], W::load(c + r * ldc + v * W::width));
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) W::store(c + r * ldc + v * W::width, acc[r][v]);
}

template <typename A, int R>
TC3D_AVX512 void gemm_rows(const A* a, int64_t k, const A* b, const int64_t* offs, int64_t n,
                           A* c, int64_t ldc, bool acc) {
  constexpr int64_t w = Vec<A>::width;
  for (int64_t f = 0, left = n / w; left > 0;) {
    // 5 or 6 registers left go as 3 + 2 or 3 + 3, not 4 + 1 or 4 + 2: a one-register
    // block does R FMAs for R + 1 loads.
    const int64_t v = (left == 5 || left == 6) ? 3 : std::min<int64_t>(left, kGemmVecs);
    switch (v) {
      case 1: gemm_block<A, R, 1>(a, k, b + f, offs, c + f, ldc, acc); break;
      case 2: gemm_block<A, R, 2>(a, k, b + f, offs, c + f, ldc, acc); break;
      case 3: gemm_block<A, R, 3>(a, k, b + f, offs, c + f, ldc, acc); break;
      default: gemm_block<A, R, kGemmVecs>(a, k, b + f, offs, c + f, ldc, acc); break;
    }
    f += v * w;
    left -= v;
  }
}

template <typename A>
TC3D_AVX512 void gemm(int64_t rows, const A* a, int64_t k, const A* b, const int64_t* offs,
                      int64_t n, A* c, int64_t ldc, bool acc) {
  switch (rows) {
    case 1: return gemm_rows<A, 1>(a, k, b, offs, n, c, ldc, acc);
    case 2: return gemm_rows<A, 2>(a, k, b, offs, n, c, ldc, acc);
    case 3: return gemm_rows<A, 3>(a, k, b, offs, n, c, ldc, acc);
    case 4: return gemm_rows<A, 4>(a, k, b, offs, n, c, ldc, acc);
    case 5: return gemm_rows<A, 5>(a, k, b, offs, n, c, ldc, acc);
    default: return gemm_rows<A, kGemmRows>(a, k, b, offs, n, c, ldc, acc);
  }
}

// R rows of g against T windows of b: R x T accumulators (4 x 6 = 24).
constexpr int kDotRows = 4;
constexpr int kDotCols = 6;

template <typename A, int R, int T>
TC3D_AVX512_INLINE void dot_block(const A* g, int64_t ldg, const A* b, const int64_t* offs,
                                  int64_t n, A* out, int64_t ldo) {
  using W = Vec<A>;
  typename W::reg acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = W::zero();
  const A* bp[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) bp[t] = b + offs[t];
  for (int64_t f = 0; f < n; f += W::width) {
    typename W::reg gv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) gv[r] = W::load(g + r * ldg + f);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const typename W::reg bv = W::load(bp[t] + f);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = W::fma(gv[r], bv, acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) out[r * ldo + t] += W::sum(acc[r][t]);
}

template <typename A, int R>
TC3D_AVX512 void dot_rows(const A* g, int64_t ldg, const A* b, const int64_t* offs,
                          int64_t cols, int64_t n, A* out, int64_t ldo) {
  int64_t j = 0;
  for (; j + kDotCols <= cols; j += kDotCols)
    dot_block<A, R, kDotCols>(g, ldg, b, offs + j, n, out + j, ldo);
  switch (cols - j) {
    case 0: break;
    case 1: dot_block<A, R, 1>(g, ldg, b, offs + j, n, out + j, ldo); break;
    case 2: dot_block<A, R, 2>(g, ldg, b, offs + j, n, out + j, ldo); break;
    case 3: dot_block<A, R, 3>(g, ldg, b, offs + j, n, out + j, ldo); break;
    case 4: dot_block<A, R, 4>(g, ldg, b, offs + j, n, out + j, ldo); break;
    default: dot_block<A, R, 5>(g, ldg, b, offs + j, n, out + j, ldo); break;
  }
}

template <typename A>
TC3D_AVX512 void dot(int64_t rows, const A* g, int64_t ldg, const A* b, const int64_t* offs,
                     int64_t cols, int64_t n, A* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + kDotRows <= rows; r += kDotRows)
    dot_rows<A, kDotRows>(g + r * ldg, ldg, b, offs, cols, n, out + r * ldo, ldo);
  switch (rows - r) {
    case 0: break;
    case 1: dot_rows<A, 1>(g + r * ldg, ldg, b, offs, cols, n, out + r * ldo, ldo); break;
    case 2: dot_rows<A, 2>(g + r * ldg, ldg, b, offs, cols, n, out + r * ldo, ldo); break;
    default: dot_rows<A, 3>(g + r * ldg, ldg, b, offs, cols, n, out + r * ldo, ldo); break;
  }
}

}  // namespace

bool have_avx512_kernels() { return __builtin_cpu_supports("avx512f") != 0; }

const MicroKernels<float>& avx512_kernels(float) {
  static const MicroKernels<float> k{&gemm<float>, &dot<float>, kGemmRows, "avx512"};
  return k;
}

const MicroKernels<double>& avx512_kernels(double) {
  static const MicroKernels<double> k{&gemm<double>, &dot<double>, kGemmRows, "avx512"};
  return k;
}

}  // namespace torchconv3d::cpu

#else  // not x86-64 with GCC/Clang: only the generic build exists

namespace torchconv3d::cpu {
bool have_avx512_kernels() { return false; }
const MicroKernels<float>& avx512_kernels(float f) { return generic_kernels(f); }
const MicroKernels<double>& avx512_kernels(double d) { return generic_kernels(d); }
}  // namespace torchconv3d::cpu

#endif
