// The micro-kernel templates (see microkernel.h), written once for every SIMD build.
// Included by microkernel_<isa>.cpp inside an anonymous namespace after it defines:
//   TC3D_FN, TC3D_INLINE   the target attribute of its ISA (and always_inline)
//   Vec<float>, Vec<double> one register of that ISA: width, zero, load, load_first
//                           (masked), store, bcast, fma, add, sum (lanes added in a fixed
//                           pairwise tree)
//   kGemmRows, kGemmVecs    gemm register block: rows x registers of accumulators
//   kDotRows, kDotCols      dot register block
//   kClVecs, kClAcc         gemm_cl / depthwise_cl: at most kClVecs registers of output
//                           channels, kClAcc accumulators
// No include guard: each ISA's file includes it once.

template <typename A, int R, int V>
TC3D_INLINE void gemm_block(const A* a, int64_t k, const A* b, const int64_t* offs,
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

// gemm_block<A, R, v> for a run-time v in [1, V].
template <typename A, int R, int V>
TC3D_INLINE void gemm_block_v(int64_t v, const A* a, int64_t k, const A* b, const int64_t* offs,
                              A* c, int64_t ldc, bool acc) {
  if constexpr (V > 1) {
    if (v < V) return gemm_block_v<A, R, V - 1>(v, a, k, b, offs, c, ldc, acc);
  }
  gemm_block<A, R, V>(a, k, b, offs, c, ldc, acc);
}

template <typename A, int R>
TC3D_FN void gemm_rows(const A* a, int64_t k, const A* b, const int64_t* offs, int64_t n,
                       A* c, int64_t ldc, bool acc) {
  constexpr int64_t w = Vec<A>::width;
  for (int64_t f = 0, left = n / w; left > 0;) {
    // With 4-register blocks, 5 or 6 registers left go as 3 + 2 or 3 + 3, not 4 + 1 or
    // 4 + 2: a one-register block does R FMAs for R + 1 loads.
    const int64_t v = (kGemmVecs == 4 && (left == 5 || left == 6))
                          ? 3
                          : std::min<int64_t>(left, kGemmVecs);
    gemm_block_v<A, R, kGemmVecs>(v, a, k, b + f, offs, c + f, ldc, acc);
    f += v * w;
    left -= v;
  }
}

// gemm_rows<A, r> for a run-time r in [1, R].
template <typename A, int R>
TC3D_INLINE void gemm_rows_r(int64_t r, const A* a, int64_t k, const A* b, const int64_t* offs,
                             int64_t n, A* c, int64_t ldc, bool acc) {
  if constexpr (R > 1) {
    if (r < R) return gemm_rows_r<A, R - 1>(r, a, k, b, offs, n, c, ldc, acc);
  }
  gemm_rows<A, R>(a, k, b, offs, n, c, ldc, acc);
}

template <typename A>
TC3D_FN void gemm(int64_t rows, const A* a, int64_t k, const A* b, const int64_t* offs,
                  int64_t n, A* c, int64_t ldc, bool acc) {
  gemm_rows_r<A, kGemmRows>(std::min<int64_t>(rows, kGemmRows), a, k, b, offs, n, c, ldc, acc);
}

template <typename A, int R, int T>
TC3D_INLINE void dot_block(const A* g, int64_t ldg, const A* b, const int64_t* offs,
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

// dot_block<A, R, t> for a run-time t in [1, T].
template <typename A, int R, int T>
TC3D_INLINE void dot_block_t(int64_t t, const A* g, int64_t ldg, const A* b, const int64_t* offs,
                             int64_t n, A* out, int64_t ldo) {
  if constexpr (T > 1) {
    if (t < T) return dot_block_t<A, R, T - 1>(t, g, ldg, b, offs, n, out, ldo);
  }
  dot_block<A, R, T>(g, ldg, b, offs, n, out, ldo);
}

template <typename A, int R>
TC3D_FN void dot_rows(const A* g, int64_t ldg, const A* b, const int64_t* offs, int64_t cols,
                      int64_t n, A* out, int64_t ldo) {
  for (int64_t j = 0; j < cols; j += kDotCols)
    dot_block_t<A, R, kDotCols>(std::min<int64_t>(kDotCols, cols - j), g, ldg, b, offs + j, n,
                                out + j, ldo);
}

// dot_rows<A, r> for a run-time r in [1, R].
template <typename A, int R>
TC3D_INLINE void dot_rows_r(int64_t r, const A* g, int64_t ldg, const A* b, const int64_t* offs,
                            int64_t cols, int64_t n, A* out, int64_t ldo) {
  if constexpr (R > 1) {
    if (r < R) return dot_rows_r<A, R - 1>(r, g, ldg, b, offs, cols, n, out, ldo);
  }
  dot_rows<A, R>(g, ldg, b, offs, cols, n, out, ldo);
}

template <typename A>
TC3D_FN void dot(int64_t rows, const A* g, int64_t ldg, const A* b, const int64_t* offs,
                 int64_t cols, int64_t n, A* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; r += kDotRows)
    dot_rows_r<A, kDotRows>(std::min<int64_t>(kDotRows, rows - r), g + r * ldg, ldg, b, offs,
                            cols, n, out + r * ldo, ldo);
}

// Positions per channels-innermost block of V registers: as many as the accumulators
// allow, at most 12 (enough independent sums to cover the FMA latency, and few enough
// row addresses to keep in general registers).
template <int V>
constexpr int cl_positions() {
  return std::min(12, kClAcc / V);
}

// The operands of gemm_cl / depthwise_cl (microkernel.h); depthwise ignores ldk and ce.
// B: the element of b, A or (depthwise on bfloat16) uint16_t bits, widened by Vec::load.
template <typename A, typename B = A>
struct ClArgs {
  int64_t cols;
  const A* a;
  int64_t lda, ldk, taps, ce;
  const B* b;
  int64_t ldb;
  const int64_t* offs;
  A* c;
  int64_t ldc;
  bool accumulate;
};

// NF positions x V registers of output channels, from position f and channel j.
// Dense: per (tap, channel) V weight loads and NF broadcasts for NF * V FMAs.
// Depthwise: per tap V weight loads, NF * V loads and FMAs. Ragged: the last register
// holds the last cols % width channels, and b is read only there.
template <bool Depthwise, bool Ragged, typename A, typename B, int V, int NF>
TC3D_INLINE void cl_block(const ClArgs<A, B>& p, int64_t f0, int64_t j) {
  using W = Vec<A>;
  typename W::reg acc[NF][V];
  A* c = p.c + f0 * p.ldc + j;
#pragma GCC unroll 12
  for (int f = 0; f < NF; ++f)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[f][v] = p.accumulate ? W::load(c + f * p.ldc + v * W::width) : W::zero();
  const B* b = p.b + f0 * p.ldb;
  for (int64_t k = 0; k < p.taps; ++k) {
    const B* bk = b + p.offs[k];
    typename W::reg av[V];
    if constexpr (Depthwise) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) av[v] = W::load(p.a + k * p.lda + j + v * W::width);
      [[maybe_unused]] const int64_t last = p.cols - j - (V - 1) * W::width;
      // One pointer stepped by ldb per position. Left to itself the compiler hoists every
      // f * ldb + v * width out of the tap loop as its own invariant and, short of general
      // registers, reloads them from the stack: two extra instructions per FMA (`perf
      // annotate`; NOTES.md "CPU v9.1"). The empty asm hides the pointer's value from it.
      const B* bf = bk + j;
#pragma GCC unroll 12
      for (int f = 0; f < NF; ++f) {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          const B* bv = bf + v * W::width;
          typename W::reg x;
          if constexpr (Ragged) {
            x = v == V - 1 ? W::load_first(bv, last) : W::load(bv);
          } else {
            x = W::load(bv);
          }
          acc[f][v] = W::fma(x, av[v], acc[f][v]);
        }
        asm("" : "+r"(bf));
        bf += p.ldb;
      }
    } else if (p.ce == 1) {  // one channel per tap: no channel loop
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) av[v] = W::load(p.a + k * p.ldk + j + v * W::width);
#pragma GCC unroll 12
      for (int f = 0; f < NF; ++f) {
        const typename W::reg bv = W::bcast(bk + f * p.ldb);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[f][v] = W::fma(bv, av[v], acc[f][v]);
      }
    } else {
      const A* ak = p.a + k * p.ldk + j;
      for (int64_t e = 0; e < p.ce; ++e) {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) av[v] = W::load(ak + e * p.lda + v * W::width);
#pragma GCC unroll 12
        for (int f = 0; f < NF; ++f) {
          const typename W::reg bv = W::bcast(bk + f * p.ldb + e);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) acc[f][v] = W::fma(bv, av[v], acc[f][v]);
        }
      }
    }
  }
#pragma GCC unroll 12
  for (int f = 0; f < NF; ++f)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) W::store(c + f * p.ldc + v * W::width, acc[f][v]);
}

// cl_block<..., nf> for a run-time nf in [1, NF] (the last positions of a sweep).
template <bool Depthwise, bool Ragged, typename A, typename B, int V, int NF>
TC3D_INLINE void cl_block_f(int64_t nf, const ClArgs<A, B>& p, int64_t f0, int64_t j) {
  if constexpr (NF > 1) {
    if (nf < NF) return cl_block_f<Depthwise, Ragged, A, B, V, NF - 1>(nf, p, f0, j);
  }
  cl_block<Depthwise, Ragged, A, B, V, NF>(p, f0, j);
}

// Every position for the V registers of channels from j. Depthwise in blocks of nearly
// equal size: a short last block (2 of 26 positions at NF = 8) has too few accumulators to
// hide the FMA latency over its taps. Dense blocks stay full (NF positions share each
// weight load; equal blocks measured 3% slower on the dense suite).
template <bool Depthwise, bool Ragged, typename A, typename B, int V>
TC3D_INLINE void cl_sweep(int64_t n, const ClArgs<A, B>& p, int64_t j) {
  constexpr int NF = cl_positions<V>();
  int64_t f = 0;
  if constexpr (!Depthwise) {
    for (; f + NF <= n; f += NF) cl_block<Depthwise, Ragged, A, B, V, NF>(p, f, j);
    if (f < n) cl_block_f<Depthwise, Ragged, A, B, V, NF>(n - f, p, f, j);
    return;
  }
  for (int64_t left = (n + NF - 1) / NF; left > 0; --left) {
    const int64_t nf = (n - f + left - 1) / left;
    if (nf == NF) {
      cl_block<Depthwise, Ragged, A, B, V, NF>(p, f, j);
    } else {
      cl_block_f<Depthwise, Ragged, A, B, V, NF>(nf, p, f, j);
    }
    f += nf;
  }
}

// cl_sweep<v> for a run-time v in [1, V].
template <bool Depthwise, bool Ragged, typename A, typename B, int V>
TC3D_INLINE void cl_sweep_v(int64_t v, int64_t n, const ClArgs<A, B>& p, int64_t j) {
  if constexpr (V > 1) {
    if (v < V) return cl_sweep_v<Depthwise, Ragged, A, B, V - 1>(v, n, p, j);
  }
  cl_sweep<Depthwise, Ragged, A, B, V>(n, p, j);
}

// Output channels in blocks of at most kClVecs registers (5 or 6 left go as 3 + 2 or
// 3 + 3, as in gemm_rows); each block sweeps every position, its weights staying in cache.
template <bool Depthwise, typename A, typename B>
TC3D_INLINE void cl_columns(const ClArgs<A, B>& p, int64_t n) {
  constexpr int64_t w = Vec<A>::width;
  for (int64_t j = 0, left = (p.cols + w - 1) / w; left > 0;) {
    const int64_t v = (kClVecs == 4 && (left == 5 || left == 6))
                          ? 3
                          : std::min<int64_t>(left, kClVecs);
    if (Depthwise && v == left && p.cols % w != 0) {
      cl_sweep_v<Depthwise, true, A, B, kClVecs>(v, n, p, j);
    } else {
      cl_sweep_v<Depthwise, false, A, B, kClVecs>(v, n, p, j);
    }
    j += v * w;
    left -= v;
  }
}

template <typename A>
TC3D_FN void gemm_cl(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t ldk, int64_t taps,
                     int64_t ce, const A* b, int64_t ldb, const int64_t* offs, A* c, int64_t ldc,
                     bool accumulate) {
  cl_columns<false>(ClArgs<A>{cols, a, lda, ldk, taps, ce, b, ldb, offs, c, ldc, accumulate}, n);
}

template <typename A, typename B>
TC3D_FN void depthwise_cl(int64_t n, int64_t cols, const A* a, int64_t lda, int64_t taps,
                          const B* b, int64_t ldb, const int64_t* offs, A* c, int64_t ldc) {
  cl_columns<true>(ClArgs<A, B>{cols, a, lda, 0, taps, 1, b, ldb, offs, c, ldc, false}, n);
}

// A register of sums + bias, as bfloat16 bits, a register's width at a time (Vec's
// store_bf16 / store_bf16_first round as c10::BFloat16 does).
TC3D_FN void store_bf16(int64_t n, const float* src, const float* bias, uint16_t* dst) {
  using W = Vec<float>;
  int64_t j = 0;
  for (; j + W::width <= n; j += W::width)
    W::store_bf16(dst + j, W::add(W::load(src + j), W::load(bias + j)));
  if (j < n)
    W::store_bf16_first(dst + j, W::add(W::load_first(src + j, n - j),
                                        W::load_first(bias + j, n - j)), n - j);
}

template <typename A>
TC3D_FN void store_biased(int64_t n, const A* src, const A* bias, A* dst) {
  using W = Vec<A>;
  int64_t j = 0;
  for (; j + W::width <= n; j += W::width)
    W::store(dst + j, W::add(W::load(src + j), W::load(bias + j)));
  for (; j < n; ++j) dst[j] = src[j] + bias[j];
}

// transpose (microkernel.h): 16 x 16 blocks of 16-bit elements and 8 x 8 blocks of 32-bit
// ones in ymm registers (AVX2, which every SIMD build has). Each source row of a block is
// one load, each destination row one store: the scalar loop read a 32-row tile column by
// column and, with planes 64 KB apart (a 32^3 volume), every row of the tile fell in one
// cache set (3.8 GB/s against 43 here).
TC3D_INLINE void transpose_16x16(const uint16_t* src, int64_t lds, uint16_t* dst, int64_t ldd) {
  __m256i r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * lds));
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm256_unpacklo_epi16(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi16(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int j = 0; j < 2; ++j) {
      r[i + j] = _mm256_unpacklo_epi32(t[i + j], t[i + j + 2]);
      r[i + j + 2] = _mm256_unpackhi_epi32(t[i + j], t[i + j + 2]);
    }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm256_unpacklo_epi64(r[i + j], r[i + j + 4]);
      t[i + j + 4] = _mm256_unpackhi_epi64(r[i + j], r[i + j + 4]);
    }
  // The unpack stages leave source column kColumn[i] in register i.
  constexpr int kColumn[16] = {0, 4, 2, 6, 1, 5, 3, 7, 8, 12, 10, 14, 9, 13, 11, 15};
  for (int j = 0; j < 8; ++j) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kColumn[j] * ldd),
                        _mm256_permute2x128_si256(t[j], t[j + 8], 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kColumn[j + 8] * ldd),
                        _mm256_permute2x128_si256(t[j], t[j + 8], 0x31));
  }
}

TC3D_INLINE void transpose_8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(dst + j * ldd, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * ldd, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

// Blocks in column order: consecutive blocks fill the same destination rows, which stay in
// L1 even when those rows are a power of two apart.
TC3D_FN void transpose(int64_t bytes, const void* src, int64_t lds, void* dst, int64_t ldd,
                       int64_t rows, int64_t cols) {
  if (bytes == 2) {
    const auto* s = static_cast<const uint16_t*>(src);
    auto* d = static_cast<uint16_t*>(dst);
    for (int64_t c = 0; c < cols; c += 16)
      for (int64_t r = 0; r < rows; r += 16)
        transpose_16x16(s + r * lds + c, lds, d + c * ldd + r, ldd);
  } else {
    const auto* s = static_cast<const float*>(src);
    auto* d = static_cast<float*>(dst);
    for (int64_t c = 0; c < cols; c += 8)
      for (int64_t r = 0; r < rows; r += 8)
        transpose_8x8(s + r * lds + c, lds, d + c * ldd + r, ldd);
  }
}

// transform (microkernel.h): the k inputs of a width of the batch are loaded once, then
// each output row is their sum with its nonzero coefficients.
template <typename A>
TC3D_FN void transform(int64_t rows, int64_t k, const A* m, const A* const* in, int64_t n,
                       A* out, int64_t ldo) {
  using W = Vec<A>;
  for (int64_t x = 0; x < n; x += W::width) {
    typename W::reg v[kMaxTransform];
    for (int64_t t = 0; t < k; ++t)
      v[t] = n - x >= W::width ? W::load(in[t] + x) : W::load_first(in[t] + x, n - x);
    for (int64_t i = 0; i < rows; ++i) {
      typename W::reg acc = W::zero();
      for (int64_t t = 0; t < k; ++t)
        if (m[i * k + t] != A(0)) acc = W::fma(W::bcast(m + i * k + t), v[t], acc);
      W::store(out + i * ldo + x, acc);
    }
  }
}

// Winograd's 1-D transforms on registers d[i * s] (microkernel.h's winograd_input and
// winograd_output): m = 1 is the identity (a one-tap axis), m = 2 and 4 are F(2, 3) and
// F(4, 3) (Lavin & Gray's B^T and A^T, row by row in the comments).
template <typename A>
struct Winograd1d {
  using W = Vec<A>;
  using R = typename W::reg;
  static TC3D_INLINE R c(A v) { return W::bcast(&v); }
  static TC3D_INLINE R sub(R a, R b) { return W::fma(c(-1), b, a); }
  // a = m + 2 inputs -> a components, in place.
  static TC3D_INLINE void input(int64_t m, R* d, int64_t s) {
    if (m == 2) {
      const R d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s];
      d[0] = sub(d0, d2);      // [1, 0, -1, 0]
      d[s] = W::add(d1, d2);   // [0, 1, 1, 0]
      d[2 * s] = sub(d2, d1);  // [0, -1, 1, 0]
      d[3 * s] = sub(d1, d3);  // [0, 1, 0, -1]
    } else if (m == 4) {
      const R d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
      const R d4m2 = sub(d4, d2);
      d[0] = W::fma(c(4), d0, W::fma(c(-5), d2, d4));            // [4, 0, -5, 0, 1, 0]
      d[s] = W::fma(c(-4), W::add(d1, d2), W::add(d3, d4));      // [0, -4, -4, 1, 1, 0]
      d[2 * s] = W::fma(c(4), sub(d1, d2), sub(d4, d3));         // [0, 4, -4, -1, 1, 0]
      d[3 * s] = W::fma(c(2), sub(d3, d1), d4m2);                // [0, -2, -1, 2, 1, 0]
      d[4 * s] = W::fma(c(2), sub(d1, d3), d4m2);                // [0, 2, -1, -2, 1, 0]
      d[5 * s] = W::fma(c(4), d1, W::fma(c(-5), d3, d5));        // [0, 4, 0, -5, 0, 1]
    }
  }
  // The adjoint of output: m output gradients in d[0], d[s], ... -> a component
  // gradients, in place (A, the transpose of A^T, column by column in the comments).
  static TC3D_INLINE void output_adjoint(int64_t m, R* d, int64_t s) {
    if (m == 2) {
      const R g0 = d[0], g1 = d[s];
      d[s] = W::add(g0, g1);   // [1, 1]
      d[2 * s] = sub(g0, g1);  // [1, -1]
      d[3 * s] = sub(W::zero(), g1);  // [0, -1]
    } else if (m == 4) {
      const R g0 = d[0], g1 = d[s], g2 = d[2 * s], g3 = d[3 * s];
      const R e = W::add(g0, g2), o = W::add(g1, g3);  // even and odd sums
      const R e4 = W::fma(c(4), g2, g0), o2 = W::fma(c(4), g3, g1);  // g0 + 4 g2, g1 + 4 g3
      d[s] = W::add(e, o);                       // [1, 1, 1, 1]
      d[2 * s] = sub(e, o);                      // [1, -1, 1, -1]
      d[3 * s] = W::fma(c(2), o2, e4);           // [1, 2, 4, 8]
      d[4 * s] = W::fma(c(-2), o2, e4);          // [1, -2, 4, -8]
      d[5 * s] = g3;                             // [0, 0, 0, 1]
    }
  }
  // a components -> m outputs in d[0], d[s], ...
  static TC3D_INLINE void output(int64_t m, R* d, int64_t s) {
    if (m == 2) {
      const R m0 = d[0], m1 = d[s], m2 = d[2 * s], m3 = d[3 * s];
      d[0] = W::add(W::add(m0, m1), m2);  // [1, 1, 1, 0]
      d[s] = sub(sub(m1, m2), m3);        // [0, 1, -1, -1]
    } else if (m == 4) {
      const R m1 = d[s], m2 = d[2 * s], m3 = d[3 * s], m4 = d[4 * s], m5 = d[5 * s];
      const R s12 = W::add(m1, m2), d12 = sub(m1, m2), s34 = W::add(m3, m4), d34 = sub(m3, m4);
      d[0] = W::add(W::add(d[0], s12), s34);           // [1, 1, 1, 1, 1, 0]
      d[s] = W::fma(c(2), d34, d12);                   // [0, 1, -1, 2, -2, 0]
      d[2 * s] = W::fma(c(4), s34, s12);               // [0, 1, 1, 4, 4, 0]
      d[3 * s] = W::add(W::fma(c(8), d34, d12), m5);   // [0, 1, -1, 8, -8, 1]
    }
  }
};

inline int64_t winograd_inputs(int64_t m) { return m == 1 ? 1 : m + 2; }

// One tile's components, a register of channels at a time: loaded from the a_d a_h a_w
// source positions, transformed along w, h, d in a stack array, stored.
template <typename A, typename B>
TC3D_FN void winograd_input(const int64_t* m, const B* const* src, int64_t n, A* out,
                            int64_t ldo) {
  using W = Vec<A>;
  using T = Winograd1d<A>;
  const int64_t ad = winograd_inputs(m[0]), ah = winograd_inputs(m[1]),
                aw = winograd_inputs(m[2]), comps = ad * ah * aw;
  typename W::reg v[6 * 6 * 6];
  for (int64_t x = 0; x < n; x += W::width) {
    for (int64_t c = 0; c < comps; ++c)
      v[c] = n - x >= W::width ? W::load(src[c] + x) : W::load_first(src[c] + x, n - x);
    for (int64_t r = 0; r < ad * ah; ++r) T::input(m[2], v + r * aw, 1);
    for (int64_t i = 0; i < ad; ++i)
      for (int64_t l = 0; l < aw; ++l) T::input(m[1], v + i * ah * aw + l, aw);
    for (int64_t hw = 0; hw < ah * aw; ++hw) T::input(m[0], v + hw, ah * aw);
    for (int64_t c = 0; c < comps; ++c) W::store(out + c * ldo + x, v[c]);
  }
}

// One tile's component gradients from its m_d m_h m_w output gradients (src[o], o over
// (d, h, w), w fastest; zeros past the output's edge): transformed along w, h, d by the
// adjoint of winograd_output, stored as out[c * ldo + x], channel x < n (any count; src
// read below n).
template <typename A, typename B>
TC3D_FN void winograd_output_adjoint(const int64_t* m, const B* const* src, int64_t n, A* out,
                                     int64_t ldo) {
  using W = Vec<A>;
  using T = Winograd1d<A>;
  const int64_t ad = winograd_inputs(m[0]), ah = winograd_inputs(m[1]),
                aw = winograd_inputs(m[2]), comps = ad * ah * aw;
  typename W::reg v[6 * 6 * 6];
  for (int64_t x = 0; x < n; x += W::width) {
    for (int64_t i = 0; i < m[0]; ++i)
      for (int64_t j = 0; j < m[1]; ++j) {
        typename W::reg* row = v + (i * ah + j) * aw;
        for (int64_t l = 0; l < m[2]; ++l) {
          const B* p = src[(i * m[1] + j) * m[2] + l] + x;
          row[l] = n - x >= W::width ? W::load(p) : W::load_first(p, n - x);
        }
        T::output_adjoint(m[2], row, 1);
      }
    for (int64_t i = 0; i < m[0]; ++i)
      for (int64_t l = 0; l < aw; ++l) T::output_adjoint(m[1], v + i * ah * aw + l, aw);
    for (int64_t hw = 0; hw < ah * aw; ++hw) T::output_adjoint(m[0], v + hw, ah * aw);
    for (int64_t c = 0; c < comps; ++c) W::store(out + c * ldo + x, v[c]);
  }
}

// One tile's outputs from its components in[c * ldi + x]: transformed along d, h, w, stored
// as out[((i * m_h + j) * m_w + l) * n + x]; false if an output is not finite.
template <typename A>
TC3D_FN bool winograd_output(const int64_t* m, const A* in, int64_t ldi, int64_t n, A* out) {
  using W = Vec<A>;
  using T = Winograd1d<A>;
  const int64_t ad = winograd_inputs(m[0]), ah = winograd_inputs(m[1]),
                aw = winograd_inputs(m[2]), comps = ad * ah * aw;
  typename W::reg v[6 * 6 * 6];
  typename W::reg bad = W::zero();
  for (int64_t x = 0; x < n; x += W::width) {
    for (int64_t c = 0; c < comps; ++c) v[c] = W::load(in + c * ldi + x);
    for (int64_t hw = 0; hw < ah * aw; ++hw) T::output(m[0], v + hw, ah * aw);
    for (int64_t i = 0; i < m[0]; ++i)
      for (int64_t l = 0; l < aw; ++l) T::output(m[1], v + i * ah * aw + l, aw);
    for (int64_t i = 0; i < m[0]; ++i)
      for (int64_t j = 0; j < m[1]; ++j) {
        typename W::reg* row = v + (i * ah + j) * aw;
        T::output(m[2], row, 1);
        for (int64_t l = 0; l < m[2]; ++l) {
          W::store(out + ((i * m[1] + j) * m[2] + l) * n + x, row[l]);
          bad = W::fma(row[l], W::zero(), bad);
        }
      }
  }
  return W::sum(bad) == A(0);
}

// The operands of outer_cl (microkernel.h).
template <typename A>
struct OuterArgs {
  int64_t rows, n;
  const A* g;
  int64_t ldg, ldgr;
  const A* b;
  int64_t ldb, ldbr;
  A* out;
  int64_t ldo;
};

// R output channels x V registers of input channels for one tap: per position V loads and
// R broadcasts for R * V FMAs; the sums stay in registers over every position, then are
// added to out once. (b, g and out: the block's first elements.)
template <typename A, int R, int V>
TC3D_INLINE void outer_block(const OuterArgs<A>& p, const A* b, const A* g, A* out) {
  using W = Vec<A>;
  typename W::reg acc[R][V];
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[j][v] = W::zero();
  for (int64_t r = 0; r < p.rows; ++r) {
    const A* br = b + r * p.ldbr;
    const A* gr = g + r * p.ldgr;
    for (int64_t f = 0; f < p.n; ++f) {
      typename W::reg bv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) bv[v] = W::load(br + f * p.ldb + v * W::width);
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) {
        const typename W::reg gv = W::bcast(gr + f * p.ldg + j);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[j][v] = W::fma(gv, bv[v], acc[j][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < R; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      A* o = out + j * p.ldo + v * W::width;
      W::store(o, W::add(W::load(o), acc[j][v]));
    }
}

// outer_block<A, r, V> for a run-time r in [1, R].
template <typename A, int R, int V>
TC3D_INLINE void outer_block_r(int64_t r, const OuterArgs<A>& p, const A* b, const A* g, A* out) {
  if constexpr (R > 1) {
    if (r < R) return outer_block_r<A, R - 1, V>(r, p, b, g, out);
  }
  outer_block<A, R, V>(p, b, g, out);
}

// Every tap and output channel for the V registers of input channels from e; as many
// output channels per block as the accumulators allow, at most 8 (GCC spills the sums of
// 12 x 2 blocks: measured 1.6x slower than 8 x 2).
template <typename A, int V>
TC3D_INLINE void outer_columns(const OuterArgs<A>& p, int64_t taps, int64_t js,
                               const int64_t* offs, int64_t ldk, int64_t e) {
  constexpr int R = std::min(8, kClAcc / V);
  for (int64_t k = 0; k < taps; ++k)
    for (int64_t j = 0; j < js; j += R)
      outer_block_r<A, R, V>(std::min<int64_t>(R, js - j), p, p.b + offs[k] + e, p.g + j,
                             p.out + k * ldk + j * p.ldo + e);
}

// outer_columns<A, v> for a run-time v in [1, V].
template <typename A, int V>
TC3D_INLINE void outer_columns_v(int64_t v, const OuterArgs<A>& p, int64_t taps, int64_t js,
                                 const int64_t* offs, int64_t ldk, int64_t e) {
  if constexpr (V > 1) {
    if (v < V) return outer_columns_v<A, V - 1>(v, p, taps, js, offs, ldk, e);
  }
  outer_columns<A, V>(p, taps, js, offs, ldk, e);
}

template <typename A>
TC3D_FN void outer_cl(int64_t rows, int64_t n, int64_t taps, int64_t js, int64_t es, const A* g,
                      int64_t ldg, int64_t ldgr, const A* b, int64_t ldb, int64_t ldbr,
                      const int64_t* offs, A* out, int64_t ldk, int64_t ldo) {
  constexpr int64_t w = Vec<A>::width;
  const OuterArgs<A> p{rows, n, g, ldg, ldgr, b, ldb, ldbr, out, ldo};
  for (int64_t e = 0; e < es; e += kClVecs * w)
    outer_columns_v<A, kClVecs>(std::min<int64_t>(kClVecs, (es - e) / w), p, taps, js, offs,
                                ldk, e);
}

// The table of this ISA's kernels, as microkernel.h hands them out.
template <typename A>
const MicroKernels<A>& kernel_table(const char* isa) {
  if constexpr (std::is_same_v<A, float>) {
    static const MicroKernels<A> k{&gemm<A>,    &dot<A>,
                                   &gemm_cl<A>, &depthwise_cl<A, A>,
                                   &depthwise_cl<A, uint16_t>, &store_bf16,
                                   &store_biased<A>, &outer_cl<A>, &transform<A>,
                                   &winograd_input<A, A>, &winograd_input<A, uint16_t>,
                                   &winograd_output<A>, &winograd_output_adjoint<A, A>,
                                   &winograd_output_adjoint<A, uint16_t>, &transpose,
                                   kGemmRows, kGemmVecs * Vec<A>::width, isa};
    return k;
  } else {
    static const MicroKernels<A> k{&gemm<A>,     &dot<A>,  &gemm_cl<A>, &depthwise_cl<A, A>,
                                   nullptr,      nullptr,  &store_biased<A>, &outer_cl<A>, nullptr,
                                   nullptr,      nullptr,  nullptr,     nullptr,
                                   nullptr,      nullptr,  kGemmRows, kGemmVecs * Vec<A>::width,
                                   isa};
    return k;
  }
}
