// AVX2 + FMA build of the micro-kernels (see microkernel.h), for CPUs without AVX-512.
// Every function here carries the AVX2 target attribute and is only called after the CPU
// reported AVX2 and FMA.
#include "microkernel.h"

#include <algorithm>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TC3D_FN __attribute__((target("avx2,fma")))
#define TC3D_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

namespace torchconv3d::cpu {
namespace {

// One ymm register of A: 8 floats or 4 doubles.
template <typename A>
struct Vec;

template <>
struct Vec<float> {
  using reg = __m256;
  static constexpr int width = 8;
  static TC3D_INLINE reg zero() { return _mm256_setzero_ps(); }
  static TC3D_INLINE reg load(const float* p) { return _mm256_loadu_ps(p); }
  // The first n (< width) lanes from p, the rest zero; nothing past them is read.
  static TC3D_INLINE reg load_first(const float* p, int64_t n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lanes));
  }
  static TC3D_INLINE void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // bfloat16 bits, widened exactly.
  static TC3D_INLINE reg load(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static TC3D_INLINE reg load_first(const uint16_t* p, int64_t n) {
    uint16_t t[width] = {};
    std::copy(p, p + n, t);
    return load(t);
  }
  // Each lane rounded to bfloat16 as bf16_round_bits does, in the low 16 bits.
  static TC3D_INLINE __m256i bf16_bits(reg v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  }
  static TC3D_INLINE void store_bf16(uint16_t* p, reg v) {
    const __m256i r = bf16_bits(v);  // (< 2^16: the unsigned saturating pack is exact)
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static TC3D_INLINE void store_bf16_first(uint16_t* p, reg v, int64_t n) {
    uint16_t t[width];
    store_bf16(t, v);
    std::copy(t, t + n, p);
  }
  static TC3D_INLINE reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static TC3D_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static TC3D_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static TC3D_INLINE float sum(reg v) {  // 4 + 4, 2 + 2, 1 + 1
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_movehdup_ps(e)));
  }
};

template <>
struct Vec<double> {
  using reg = __m256d;
  static constexpr int width = 4;
  static TC3D_INLINE reg zero() { return _mm256_setzero_pd(); }
  static TC3D_INLINE reg load(const double* p) { return _mm256_loadu_pd(p); }
  static TC3D_INLINE reg load_first(const double* p, int64_t n) {
    const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_maskload_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lanes));
  }
  static TC3D_INLINE void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static TC3D_INLINE reg bcast(const double* p) { return _mm256_broadcast_sd(p); }
  static TC3D_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static TC3D_INLINE reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static TC3D_INLINE double sum(reg v) {
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
};

// 16 ymm registers: 4 rows x 3 registers = 12 accumulators, 3 B loads, 1 broadcast.
// dot: 3 x 4 = 12 accumulators, 3 rows of grad_output, 1 window.
constexpr int kGemmRows = 4;
constexpr int kGemmVecs = 3;
constexpr int kDotRows = 3;
constexpr int kDotCols = 4;

// Channels innermost: 12 accumulators of at most 2 registers of output channels.
constexpr int kClVecs = 2;
constexpr int kClAcc = 12;

#include "microkernel_simd.h"

}  // namespace

bool have_avx2_kernels() {
  return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
}

const MicroKernels<float>& avx2_kernels(float) { return kernel_table<float>("avx2"); }

const MicroKernels<double>& avx2_kernels(double) { return kernel_table<double>("avx2"); }

}  // namespace torchconv3d::cpu

#else  // not x86-64 with GCC/Clang: only the generic build exists

namespace torchconv3d::cpu {
bool have_avx2_kernels() { return false; }
const MicroKernels<float>& avx2_kernels(float f) { return generic_kernels(f); }
const MicroKernels<double>& avx2_kernels(double d) { return generic_kernels(d); }
}  // namespace torchconv3d::cpu

#endif
