// Portable build of the micro-kernels (see microkernel.h), the fallback without AVX2,
// and the run-time choice between the builds. Same arithmetic as the SIMD builds, in
// plain loops over kLanes-wide arrays the compiler vectorises for the baseline ISA.
#include "microkernel.h"

#include <c10/util/Exception.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <string>

namespace torchconv3d::cpu {
namespace {

constexpr int kRows = 6;

template <typename A, int R>
void gemm_rows(const A* a, int64_t k, const A* b, const int64_t* offs, int64_t n, A* c,
               int64_t ldc, bool accumulate) {
  for (int64_t f = 0; f < n; f += kLanes) {
    A acc[R][kLanes] = {};
    for (int64_t i = 0; i < k; ++i) {
      const A* bp = b + offs[i] + f;
      for (int r = 0; r < R; ++r) {
        const A av = a[i * R + r];
        for (int l = 0; l < kLanes; ++l) acc[r][l] += av * bp[l];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < kLanes; ++l)
        c[r * ldc + f + l] = accumulate ? c[r * ldc + f + l] + acc[r][l] : acc[r][l];
  }
}

template <typename A>
void gemm(int64_t rows, const A* a, int64_t k, const A* b, const int64_t* offs, int64_t n, A* c,
          int64_t ldc, bool acc) {
  switch (rows) {
    case 1: return gemm_rows<A, 1>(a, k, b, offs, n, c, ldc, acc);
    case 2: return gemm_rows<A, 2>(a, k, b, offs, n, c, ldc, acc);
    case 3: return gemm_rows<A, 3>(a, k, b, offs, n, c, ldc, acc);
    case 4: return gemm_rows<A, 4>(a, k, b, offs, n, c, ldc, acc);
    case 5: return gemm_rows<A, 5>(a, k, b, offs, n, c, ldc, acc);
    default: return gemm_rows<A, kRows>(a, k, b, offs, n, c, ldc, acc);
  }
}

template <typename A>
void dot(int64_t rows, const A* g, int64_t ldg, const A* b, const int64_t* offs, int64_t cols,
         int64_t n, A* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const A* gr = g + r * ldg;
    for (int64_t j = 0; j < cols; ++j) {
      const A* bj = b + offs[j];
      A acc[kLanes] = {};
      for (int64_t f = 0; f < n; f += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += gr[f + l] * bj[f + l];
      for (int w = kLanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
      out[r * ldo + j] += acc[0];
    }
  }
}

template <typename A>
void gemm_cl(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t ldk, int64_t taps,
             int64_t ce, const A* b, int64_t ldb, const int64_t* offs, A* c, int64_t ldc,
             bool accumulate) {
  for (int64_t f = 0; f < n; ++f)
    for (int64_t j0 = 0; j0 < cols; j0 += kLanes) {
      A acc[kLanes] = {};
      for (int64_t k = 0; k < taps; ++k)
        for (int64_t e = 0; e < ce; ++e) {
          const A bv = b[offs[k] + f * ldb + e];
          const A* ar = a + k * ldk + e * lda + j0;
          for (int l = 0; l < kLanes; ++l) acc[l] += bv * ar[l];
        }
      for (int l = 0; l < kLanes; ++l)
        c[f * ldc + j0 + l] = accumulate ? c[f * ldc + j0 + l] + acc[l] : acc[l];
    }
}

template <typename A>
A widen(A x) {
  return x;
}
float widen(uint16_t bits) {
  const uint32_t u = bf16_widen_bits(bits);
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename A, typename B>
void depthwise_cl(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t taps, const B* b,
                  int64_t ldb, const int64_t* offs, A* c, int64_t ldc) {
  for (int64_t f = 0; f < n; ++f)
    for (int64_t j0 = 0; j0 < cols; j0 += kLanes) {
      A acc[kLanes] = {};
      for (int64_t k = 0; k < taps; ++k) {
        const B* br = b + offs[k] + f * ldb + j0;
        const A* ar = a + k * lda + j0;
        for (int l = 0; l < kLanes && j0 + l < cols; ++l) acc[l] += widen(br[l]) * ar[l];
      }
      for (int l = 0; l < kLanes; ++l) c[f * ldc + j0 + l] = acc[l];
    }
}

template <typename A>
void store_biased(int64_t n, const A* src, const A* bias, A* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j] + bias[j];
}

void store_bf16(int64_t n, const float* src, const float* bias, uint16_t* dst) {
  for (int64_t j = 0; j < n; ++j) {
    const float v = src[j] + bias[j];
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    dst[j] = bf16_round_bits(u, std::isnan(v));
  }
}

template <typename A>
void outer_cl(int64_t rows, int64_t n, int64_t taps, int64_t js, int64_t es, const A* g,
              int64_t ldg, int64_t ldgr, const A* b, int64_t ldb, int64_t ldbr,
              const int64_t* offs, A* out, int64_t ldk, int64_t ldo) {
  for (int64_t k = 0; k < taps; ++k)
    for (int64_t j = 0; j < js; ++j)
      for (int64_t e0 = 0; e0 < es; e0 += kLanes) {
        A acc[kLanes] = {};
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t f = 0; f < n; ++f) {
            const A gv = g[r * ldgr + f * ldg + j];
            const A* br = b + offs[k] + r * ldbr + f * ldb + e0;
            for (int l = 0; l < kLanes; ++l) acc[l] += gv * br[l];
          }
        A* o = out + k * ldk + j * ldo + e0;
        for (int l = 0; l < kLanes; ++l) o[l] += acc[l];
      }
}

// TORCHCONV3D_CPU_ISA caps the instruction set (for tests and comparisons): avx512_bf16,
// avx512, avx2 or generic, in any case; unset or empty means the widest. A value the CPU
// cannot run falls back to what it can; an unknown value is warned about and ignored.
const std::string& isa_cap() {
  static const std::string cap = [] {
    const char* v = std::getenv("TORCHCONV3D_CPU_ISA");
    std::string c = v ? v : "";
    for (char& ch : c) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (c != "avx512_bf16" && c != "avx512" && c != "avx2" && c != "generic") {
      if (!c.empty())
        TORCH_WARN("TORCHCONV3D_CPU_ISA='", v,
                   "' is not avx512_bf16, avx512, avx2 or generic; ignored");
      c = "avx512_bf16";
    }
    return c;
  }();
  return cap;
}

template <typename A>
const MicroKernels<A>& choose() {
  static const MicroKernels<A>& k = [] () -> const MicroKernels<A>& {
    const std::string& cap = isa_cap();
    const bool avx512 = cap == "avx512_bf16" || cap == "avx512";
    if (avx512 && have_avx512_kernels()) return avx512_kernels(A{});
    if ((avx512 || cap == "avx2") && have_avx2_kernels()) return avx2_kernels(A{});
    return generic_kernels(A{});
  }();
  return k;
}

}  // namespace

const MicroKernels<float>& generic_kernels(float) {
  static const MicroKernels<float> k{&gemm<float>,
                                     &dot<float>,
                                     &gemm_cl<float>,
                                     &depthwise_cl<float, float>,
                                     &depthwise_cl<float, uint16_t>,
                                     &store_bf16,
                                     &store_biased<float>,
                                     &outer_cl<float>,
                                     nullptr,
                                     nullptr,
                                     nullptr,
                                     nullptr,
                                     nullptr,
                                     nullptr,
                                     nullptr,
                                     kRows,
                                     kLanes,
                                     "generic"};
  return k;
}

const MicroKernels<double>& generic_kernels(double) {
  static const MicroKernels<double> k{&gemm<double>, &dot<double>, &gemm_cl<double>,
                                      &depthwise_cl<double, double>, nullptr, nullptr,
                                      &store_biased<double>, &outer_cl<double>, nullptr,
                                      nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                      kRows, kLanes, "generic"};
  return k;
}

const MicroKernels<float>& micro_kernels(float) { return choose<float>(); }
const MicroKernels<double>& micro_kernels(double) { return choose<double>(); }
const Bf16Kernels* bf16_kernels() {
  static const Bf16Kernels* k = isa_cap() == "avx512_bf16" && have_avx512_kernels() &&
                                        have_avx512_bf16_kernels()
                                    ? &avx512_bf16_kernels()
                                    : nullptr;
  return k;
}
const char* cpu_isa() { return bf16_kernels() ? "avx512_bf16" : micro_kernels(float{}).isa; }

}  // namespace torchconv3d::cpu
