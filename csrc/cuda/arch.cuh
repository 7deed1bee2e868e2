// Warp-level primitives of the tensor-core kernels: mma, ldmatrix, cp.async, tf32 rounding
// and dynamic shared memory. Each has two bodies: inline PTX for the GPU, and a body for the
// CPU emulator of tests/cuda_emulation (TORCHCONV3D_EMULATED), which follows the PTX ISA's
// fragment layouts lane by lane through a warp rendezvous. Nothing above this file knows
// which one runs.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 / m16n8k8"), with
// g = lane / 4 and t = lane % 4:
//   m16n8k16 f16/bf16  A (16x16, row-major): reg r holds rows g + 8 (r % 2), columns
//                      2t + 8 (r / 2) and the next one, as two 16-bit halves (low first);
//                      B (16x8, column-major): reg r holds rows (k) 2t + 8r and 2t + 8r + 1
//                      of column g;
//   m16n8k8 tf32       A (16x8): reg r holds row g + 8 (r % 2), column t + 4 (r / 2);
//                      B (8x8): reg r holds row (k) t + 4r of column g;
//   both               C/D (16x8 float): element i is row g + 8 (i / 2), column 2t + i % 2.
// In bytes the two shapes agree: an A fragment is a 16-row x 32-byte tile, a B fragment an
// 8-column x 32-byte tile (32 bytes of K: 16 halves or 8 floats), and ldmatrix (8 rows of
// 16 bytes per matrix, lane l receiving 32-bit word l % 4 of row l / 4) loads either. So the
// GEMM main loop works in bytes of K and is the same code for every element type.
#pragma once

#include <cstdint>

#ifndef TORCHCONV3D_EMULATED
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstring>
#endif

namespace torchconv3d::gpu::arch {

// Which tensor-core operation multiplies elements of a type.
enum class MmaKind { F16, BF16, TF32 };

// ---- dynamic shared memory --------------------------------------------------------------
#ifndef TORCHCONV3D_EMULATED
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char tc3d_dynamic_smem[];
  return tc3d_dynamic_smem;
}
#else
inline unsigned char* dynamic_smem() { return emu::dynamic_smem.data(); }
#endif

#ifndef TORCHCONV3D_EMULATED
// ---- GPU bodies -------------------------------------------------------------------------
__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes, read and written by one instruction each (load16 through the read-only path).
struct alignas(16) Vec16 {
  uint32_t u[4];
};
__device__ __forceinline__ Vec16 load16(const void* p) {
  const uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
  return {{r.x, r.y, r.z, r.w}};
}
__device__ __forceinline__ void store16(void* p, const Vec16& v) {
  *reinterpret_cast<uint4*>(p) = make_uint4(v.u[0], v.u[1], v.u[2], v.u[3]);
}

__device__ __forceinline__ float bits_to_float(uint32_t u) { return __uint_as_float(u); }
__device__ __forceinline__ uint32_t float_to_bits(float f) { return __float_as_uint(f); }

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
// Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// Four 8x8 16-bit matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// The same, each matrix transposed: lane l receives rows 2 (l % 4) and 2 (l % 4) + 1 of
// column l / 4, as the low and high halves.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// float -> tf32, round to nearest with ties away from zero (what cuDNN and CUTLASS use).
__device__ __forceinline__ uint32_t to_tf32(uint32_t f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(f)));
  return r;
}

// d += a * b on one 16x8 tile.
template <MmaKind K>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (K == MmaKind::F16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (K == MmaKind::BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

#else
// ---- emulator bodies --------------------------------------------------------------------
struct alignas(16) Vec16 {
  uint32_t u[4];
};
inline Vec16 load16(const void* p) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "emulated 16-byte load: unaligned");
  Vec16 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline void store16(void* p, const Vec16& v) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "emulated 16-byte store: unaligned");
  std::memcpy(p, &v, 16);
}

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(smem) % 16 == 0 &&
                  (!valid || reinterpret_cast<uintptr_t>(gmem) % 16 == 0),
              "emulated cp.async: 16-byte copy between addresses not 16-byte aligned");
  emu::cp_async(smem, gmem, valid ? 16 : 0, 16);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int Pending>
inline void cp_async_wait() {
  emu::cp_async_wait(Pending);
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(row) % 16 == 0,
              "emulated ldmatrix: row address not 16-byte aligned");
  emu::warp_collective("ldmatrix.x4", &row, sizeof(row), r, sizeof(r),
                       [](const unsigned char (*in)[64], unsigned char (*out)[64]) {
                         for (int lane = 0; lane < emu::kWarp; ++lane)
                           for (int m = 0; m < 4; ++m) {
                             const unsigned char* rowp;
                             std::memcpy(&rowp, in[8 * m + lane / 4], sizeof(rowp));
                             std::memcpy(out[lane] + 4 * m, rowp + 4 * (lane % 4), 4);
                           }
                       });
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(row) % 16 == 0,
              "emulated ldmatrix: row address not 16-byte aligned");
  emu::warp_collective("ldmatrix.x4.trans", &row, sizeof(row), r, sizeof(r),
                       [](const unsigned char (*in)[64], unsigned char (*out)[64]) {
                         for (int lane = 0; lane < emu::kWarp; ++lane)
                           for (int m = 0; m < 4; ++m)
                             for (int h = 0; h < 2; ++h) {
                               const unsigned char* rowp;
                               std::memcpy(&rowp, in[8 * m + 2 * (lane % 4) + h], sizeof(rowp));
                               std::memcpy(out[lane] + 4 * m + 2 * h, rowp + 2 * (lane / 4), 2);
                             }
                       });
}

inline uint32_t to_tf32(uint32_t f) {
  if ((f & 0x7f800000u) == 0x7f800000u) return f;  // Inf and NaN stay
  return (f + 0x1000u) & 0xffffe000u;  // ties away from zero: magnitude rounds up
}

inline float element(uint32_t reg, int half, MmaKind k) {
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * half));
  if (k == MmaKind::F16) return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
  return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

// The tensor cores read only a tf32 operand's sign, exponent and top 10 mantissa bits.
constexpr uint32_t kTf32Bits = 0xffffe000u;

// The products of these types are exact in float, so the emulated result is the sum of the
// exact products in float, in k order, added to d.
template <MmaKind K>
inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Operands {
    uint32_t a[4], b[2];
    float c[4];
  } ops;
  std::memcpy(ops.a, a, sizeof(ops.a));
  std::memcpy(ops.b, b, sizeof(ops.b));
  std::memcpy(ops.c, d, sizeof(ops.c));
  emu::warp_collective(
      K == MmaKind::TF32 ? "mma.m16n8k8.tf32" : "mma.m16n8k16", &ops, sizeof(ops), d,
      sizeof(d), [](const unsigned char (*in)[64], unsigned char (*out)[64]) {
        auto lane_ops = [&](int lane) {
          Operands o;
          std::memcpy(&o, in[lane], sizeof(o));
          return o;
        };
        float A[16][16], B[16][8];
        const int kdim = K == MmaKind::TF32 ? 8 : 16;
        for (int lane = 0; lane < emu::kWarp; ++lane) {
          const Operands o = lane_ops(lane);
          const int g = lane / 4, t = lane % 4;
          for (int r = 0; r < 4; ++r) {
            if (K == MmaKind::TF32) {
              A[g + 8 * (r % 2)][t + 4 * (r / 2)] = bits_to_float(o.a[r] & kTf32Bits);
            } else {
              for (int h = 0; h < 2; ++h)
                A[g + 8 * (r % 2)][2 * t + 8 * (r / 2) + h] = element(o.a[r], h, K);
            }
          }
          for (int r = 0; r < 2; ++r) {
            if (K == MmaKind::TF32) {
              B[t + 4 * r][g] = bits_to_float(o.b[r] & kTf32Bits);
            } else {
              for (int h = 0; h < 2; ++h) B[2 * t + 8 * r + h][g] = element(o.b[r], h, K);
            }
          }
        }
        for (int lane = 0; lane < emu::kWarp; ++lane) {
          const Operands o = lane_ops(lane);
          const int g = lane / 4, t = lane % 4;
          float dl[4];
          for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
            float s = 0.0f;
            for (int k = 0; k < kdim; ++k) s += A[row][k] * B[k][col];
            dl[i] = o.c[i] + s;
          }
          std::memcpy(out[lane], dl, sizeof(dl));
        }
      });
}
#endif

}  // namespace torchconv3d::gpu::arch
