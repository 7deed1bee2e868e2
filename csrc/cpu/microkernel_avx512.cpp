// AVX-512 build of the micro-kernels (see microkernel.h). Every function here carries
// the AVX-512 target attribute and is only called after the CPU reported every extension
// that attribute names (have_avx512_kernels), so the rest of the library stays baseline
// x86-64.
#include "microkernel.h"

#include <algorithm>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TC3D_FN __attribute__((target("avx512f,avx512dq,fma")))
#define TC3D_INLINE __attribute__((target("avx512f,avx512dq,fma"), always_inline)) inline

namespace torchconv3d::cpu {
namespace {

// One zmm register of A: 16 floats or 8 doubles.
template <typename A>
struct Vec;

template <>
struct Vec<float> {
  using reg = __m512;
  static constexpr int width = 16;
  static TC3D_INLINE reg zero() { return _mm512_setzero_ps(); }
  static TC3D_INLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
  // The first n (< width) lanes from p, the rest zero; nothing past them is read.
  static TC3D_INLINE reg load_first(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  static TC3D_INLINE void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // bfloat16 bits, widened exactly.
  static TC3D_INLINE reg load(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static TC3D_INLINE reg load_first(const uint16_t* p, int64_t n) {
    uint16_t t[width] = {};  // (a masked 16-bit load would need AVX512BW)
    std::copy(p, p + n, t);
    return load(t);
  }
  // Each lane rounded to bfloat16 as bf16_round_bits does, in the low 16 bits.
  static TC3D_INLINE __m512i bf16_bits(reg v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                 _mm512_set1_epi32(0x7fc0));
  }
  static TC3D_INLINE void store_bf16(uint16_t* p, reg v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }
  static TC3D_INLINE void store_bf16_first(uint16_t* p, reg v, int64_t n) {
    _mm512_mask_cvtepi32_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), bf16_bits(v));
  }
  static TC3D_INLINE reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static TC3D_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static TC3D_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  // Pairwise tree over the 16 lanes: 8 + 8, then 4 + 4, 2 + 2, 1 + 1.
  static TC3D_INLINE float sum(reg v) {
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
  static TC3D_INLINE reg zero() { return _mm512_setzero_pd(); }
  static TC3D_INLINE reg load(const double* p) { return _mm512_loadu_pd(p); }
  static TC3D_INLINE reg load_first(const double* p, int64_t n) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p);
  }
  static TC3D_INLINE void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static TC3D_INLINE reg bcast(const double* p) { return _mm512_set1_pd(*p); }
  static TC3D_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static TC3D_INLINE reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static TC3D_INLINE double sum(reg v) {
    const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
};

// R rows x V registers of C held in registers while k runs; 6 x 4 = 24 accumulators
// leave 8 of the 32 zmm registers for the B loads. dot: 4 x 6 = 24 accumulators.
constexpr int kGemmRows = 6;
constexpr int kGemmVecs = 4;
constexpr int kDotRows = 4;
constexpr int kDotCols = 6;

// Channels innermost: 24 accumulators of at most 4 registers of output channels.
constexpr int kClVecs = 4;
constexpr int kClAcc = 24;

#include "microkernel_simd.h"

}  // namespace

// Every extension the target attribute above compiles for: a CPU with AVX-512F but
// without DQ (Knights Landing) would fault on the first DQ instruction.
bool have_avx512_kernels() {
  return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512dq") != 0 &&
         __builtin_cpu_supports("fma") != 0;
}

const MicroKernels<float>& avx512_kernels(float) { return kernel_table<float>("avx512"); }

const MicroKernels<double>& avx512_kernels(double) { return kernel_table<double>("avx512"); }

}  // namespace torchconv3d::cpu

#else  // not x86-64 with GCC/Clang: only the generic build exists

namespace torchconv3d::cpu {
bool have_avx512_kernels() { return false; }
const MicroKernels<float>& avx512_kernels(float f) { return generic_kernels(f); }
const MicroKernels<double>& avx512_kernels(double d) { return generic_kernels(d); }
}  // namespace torchconv3d::cpu

#endif
