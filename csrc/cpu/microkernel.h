// The two inner loops every CPU convolution pass reduces to, over "shifted planes".
//
// The planar passes (tile_layout.h) lay a tile of the input out so that kernel tap k reads, for the
// tile's flattened position f, the element b[offs[k] + f]: a convolution becomes a GEMM
// whose B operand is a different shifted window of one buffer for each k. Both loops
// vectorise along f, which is contiguous in every operand.
//
// They are built three times from one set of templates (microkernel_simd.h): for AVX-512
// (microkernel_avx512.cpp) and AVX2 + FMA (microkernel_avx2.cpp), each compiled for its
// ISA through target attributes, and portably (microkernel_generic.cpp). The widest set
// the CPU runs is chosen at run time; TORCHCONV3D_CPU_ISA=avx2 or =generic asks for a
// narrower one.
#pragma once

#include <cstdint>

namespace torchconv3d::cpu {

// Positions are processed in whole blocks of this many elements; callers round the
// position count up to it and keep the padded tail readable (and finite).
constexpr int64_t kLanes = 16;

// The most inputs a transform row sums.
constexpr int64_t kMaxTransform = 8;

template <typename A>
struct MicroKernels {
  // c[r * ldc + f] = (accumulate ? c[r * ldc + f] : 0) + sum_k a[k * rows + r] * b[offs[k] + f]
  //   for r < rows (1 <= rows <= max_rows), f < n (a multiple of kLanes).
  void (*gemm)(int64_t rows, const A* a, int64_t k, const A* b, const int64_t* offs,
               int64_t n, A* c, int64_t ldc, bool accumulate);
  // out[r * ldo + j] += sum_{f < n} g[r * ldg + f] * b[offs[j] + f]
  //   for r < rows, j < cols (any counts), n a multiple of kLanes.
  // Each out element is one sum in a fixed order: lanes summed along f, then the lanes
  // added pairwise, whatever rows and cols the call covers.
  void (*dot)(int64_t rows, const A* g, int64_t ldg, const A* b, const int64_t* offs,
              int64_t cols, int64_t n, A* out, int64_t ldo);
  // Channels innermost (channels_last tiles, forward_channels_last.cpp): positions f are
  // rows ldb apart, an operand's channels contiguous within a row, and the result's output
  // channels j are the vector lanes:
  //   c[f * ldc + j] = (accumulate ? c[f * ldc + j] : 0)
  //                    + sum_{k < taps} sum_{e < ce} b[offs[k] + f * ldb + e] * a[k * ldk + e * lda + j]
  //   for f < n (any count), j < cols; cols, lda, ldk and ldc multiples of kLanes.
  void (*gemm_cl)(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t ldk, int64_t taps,
                  int64_t ce, const A* b, int64_t ldb, const int64_t* offs, A* c, int64_t ldc,
                  bool accumulate);
  // Depthwise, channels innermost: each channel j reads only itself.
  //   c[f * ldc + j] = sum_{k < taps} b[offs[k] + f * ldb + j] * a[k * lda + j]
  //   for f < n (any count), j < cols (any count); b is read only at channels j < cols,
  //   so it can be the input tensor itself. lda and ldc are multiples of kLanes; a is read
  //   and c written up to the next multiple of kLanes past cols.
  void (*depthwise_cl)(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t taps,
                       const A* b, int64_t ldb, const int64_t* offs, A* c, int64_t ldc);
  // depthwise_cl on a bfloat16 input b (its bits), widened as it is loaded (no float copy
  // of the input). Float table only (nullptr for double).
  void (*depthwise_cl_bf16)(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t taps,
                            const uint16_t* b, int64_t ldb, const int64_t* offs, A* c,
                            int64_t ldc);
  // dst[j] = bits of bfloat16(src[j] + bias[j]) for j < n, rounded as c10::BFloat16 rounds
  // (to nearest even; NaN -> 0x7fc0). Float table only (nullptr for double).
  void (*store_bf16)(int64_t n, const A* src, const A* bias, uint16_t* dst);
  // dst[j] = src[j] + bias[j] for j < n: a row of sums leaving its scratch.
  void (*store_biased)(int64_t n, const A* src, const A* bias, A* dst);
  // Outer products over positions, channels innermost (channels_last grad_weight,
  // grad_weight_channels_last.cpp): with output channels j and input channels e,
  //   out[k * ldk + j * ldo + e] += sum_{r < rows} sum_{f < n} g[r * ldgr + f * ldg + j]
  //                                                   * b[offs[k] + r * ldbr + f * ldb + e]
  //   for k < taps, j < js (any count), e < es (a multiple of kLanes). Each out element's
  //   sum runs over (r, f) in order and is then added to out, whatever the ISA: the input
  //   channels are the vector lanes, so no lanes are summed.
  void (*outer_cl)(int64_t rows, int64_t n, int64_t taps, int64_t js, int64_t es, const A* g,
                   int64_t ldg, int64_t ldgr, const A* b, int64_t ldb, int64_t ldbr,
                   const int64_t* offs, A* out, int64_t ldk, int64_t ldo);
  // A small matrix applied along one axis of a batch (the Winograd weight transforms,
  // forward_winograd.cpp): out[i * ldo + x] = sum_{t < k, m[i * k + t] != 0}
  // m[i * k + t] * in[t][x] for i < rows, x < n (any count), k <= kMaxTransform. in[t] is
  // read below n; out rows are written up to the next multiple of kLanes past n at most.
  void (*transform)(int64_t rows, int64_t k, const A* m, const A* const* in, int64_t n, A* out,
                    int64_t ldo);
  // Winograd's transforms of one tile (forward_winograd.cpp), the axes (d, h, w) each with
  // m[axis] in {1 (a one-tap axis, the identity), 2, 4} outputs per tile from
  // a = m + 2 inputs (1 for m = 1); components c run over (d, h, w), w fastest.
  // winograd_input: out[c * ldo + x] = (B^T_d (x) B^T_h (x) B^T_w) src, channel x < n (any
  // count): src[c] is component c's input position, read below n; out written up to the
  // next multiple of kLanes past n at most.
  void (*winograd_input)(const int64_t* m, const A* const* src, int64_t n, A* out, int64_t ldo);
  void (*winograd_input_bf16)(const int64_t* m, const uint16_t* const* src, int64_t n, A* out,
                              int64_t ldo);
  // winograd_output: out[((i * m_h + j) * m_w + l) * n + x] = (A^T_d (x) A^T_h (x) A^T_w)
  // in[c * ldi + x] for x < n (a multiple of kLanes); false if an output is not finite.
  bool (*winograd_output)(const int64_t* m, const A* in, int64_t ldi, int64_t n, A* out);
  // winograd_output_adjoint (grad_weight): out[c * ldo + x] = (A_d (x) A_h (x) A_w) of the
  // tile's output gradients src[o] (o over (d, h, w), w fastest), x < n (any count; src
  // read below n, out written up to the next multiple of kLanes past n at most).
  void (*winograd_output_adjoint)(const int64_t* m, const A* const* src, int64_t n, A* out,
                                  int64_t ldo);
  void (*winograd_output_adjoint_bf16)(const int64_t* m, const uint16_t* const* src, int64_t n,
                                       A* out, int64_t ldo);
  // dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols: elements of `bytes` bytes,
  // 2 (rows and cols multiples of 16) or 4 (multiples of 8). (transpose_matrices,
  // common.h, takes the ragged edges and other sizes.)
  void (*transpose)(int64_t bytes, const void* src, int64_t lds, void* dst, int64_t ldd,
                    int64_t rows, int64_t cols);
  // (transform, the winograd entries and transpose are float-table entries of the SIMD
  // builds: nullptr for double and in the generic build, where the direct kernels run.)
  int64_t max_rows;
  int64_t block_positions;  // the positions (values of f) one register block of gemm covers
  const char* isa;
};

// bfloat16 with a dot-product instruction (AVX512-BF16's vdpbf16ps): operands hold pairs of
// bfloat16 values (two input channels) in 32-bit lanes, sums are float.
//   c[r * ldc + f] = sum_k dot(a[k * rows + r], b[offs[k] + f])
//   where dot(p, q) = p.lo * q.lo + p.hi * q.hi; same rows, n and layout rules as gemm.
struct Bf16Kernels {
  void (*gemm)(int64_t rows, const uint32_t* a, int64_t k, const uint32_t* b,
               const int64_t* offs, int64_t n, float* c, int64_t ldc);
  // gemm_cl of MicroKernels on pairs: b[offs[k] + f * ldb + e] and a[k * ldk + e * lda + j]
  // hold channels (2e, 2e + 1), ce counts pairs.
  void (*gemm_cl)(int64_t n, int64_t cols, const uint32_t* a, int64_t lda, int64_t ldk,
                  int64_t taps, int64_t ce, const uint32_t* b, int64_t ldb, const int64_t* offs,
                  float* c, int64_t ldc, bool accumulate);
  // dot of MicroKernels on bfloat16 rows (uint16_t bits), float sums: the pairs are
  // positions (f, f + 1), adjacent in both operands whatever the offset. n is a multiple of
  // kLanes; g and b are read up to the next multiple of 2 * kLanes past n (g must hold zeros
  // there).
  void (*dot)(int64_t rows, const uint16_t* g, int64_t ldg, const uint16_t* b,
              const int64_t* offs, int64_t cols, int64_t n, float* out, int64_t ldo);
  // outer_cl of MicroKernels summing positions in pairs (f, f + 1), f even:
  //   g[r * ldgr + (f / 2) * ldg + j] holds (gy[f], gy[f + 1]) of output channel j (zero
  //   past the row's n positions); b[offs[k] + r * ldbr + f * ldb + e] holds input channel
  //   e at that tile position and at the next one (ldb further). es a multiple of kLanes.
  //   With an odd n the last pair of b is read with its upper half cleared.
  void (*outer_cl)(int64_t rows, int64_t n, int64_t taps, int64_t js, int64_t es,
                   const uint32_t* g, int64_t ldg, int64_t ldgr, const uint32_t* b, int64_t ldb,
                   int64_t ldbr, const int64_t* offs, float* out, int64_t ldk, int64_t ldo);
  // The pairs outer_cl reads: out[i] = lo[i] | hi[i] << 16 for i < n (hi nullptr: zeros).
  void (*interleave)(int64_t n, const uint16_t* lo, const uint16_t* hi, uint32_t* out);
  int64_t max_rows;
};

// The bfloat16 set this process uses, or nullptr (no AVX512-BF16, or a narrower
// TORCHCONV3D_CPU_ISA): then bfloat16 runs on the float kernels.
const Bf16Kernels* bf16_kernels();
bool have_avx512_bf16_kernels();
const Bf16Kernels& avx512_bf16_kernels();

// c10::BFloat16's float conversions on bits, for every ISA's build: to nearest even,
// NaN -> 0x7fc0; widening is exact.
inline uint16_t bf16_round_bits(uint32_t u, bool nan) {
  return nan ? uint16_t(0x7fc0) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline uint32_t bf16_widen_bits(uint16_t b) { return uint32_t(b) << 16; }

// The set this process uses.
const MicroKernels<float>& micro_kernels(float);
const MicroKernels<double>& micro_kernels(double);

// Both builds, for the dispatcher.
const MicroKernels<float>& generic_kernels(float);
const MicroKernels<double>& generic_kernels(double);
bool have_avx512_kernels();
const MicroKernels<float>& avx512_kernels(float);
const MicroKernels<double>& avx512_kernels(double);
bool have_avx2_kernels();
const MicroKernels<float>& avx2_kernels(float);
const MicroKernels<double>& avx2_kernels(double);

// Name of the instruction set the CPU kernels run with ("avx512_bf16", "avx512", "avx2" or
// "generic").
const char* cpu_isa();

}  // namespace torchconv3d::cpu
