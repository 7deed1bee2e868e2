// grad_weight for channels_last inputs, channels innermost.
//
//   grad_weight[co, ci, tap] = sum over samples and output positions f of
//                              grad_output[f, co] * input[f + tap, ci]
// is, per tap, an outer product summed over positions: input channels in the vector lanes
// (a row of the channels-innermost tile, packing.h's pack_channels_innermost, so a tap
// is a row offset as in the forward), grad_output's channels broadcast (read where they lie
// when grad_output is channels_last in the accumulation type). MicroKernels::outer_cl keeps
// an R x V block of sums in registers over a whole band of output rows. bfloat16 on
// AVX512-BF16 (Bf16Kernels::outer_cl) sums two positions per vdpbf16ps: the tile is paired
// with its next position and grad_output along each row, an odd row's last pair half-cleared.
//
// Only real output positions are summed (each row's first W_out tile positions), so every
// product formed is a term of the convolution: no non-finite handling is needed, and the
// padding mode acts in the packing alone.
//
// Threads own (group, block of input channels, block of output channels, block of taps)
// and walk every sample and tile in order. Every such task packs the whole input, so where
// the weight gradient is small (few channels: the packing is then a large share of the
// work) tasks own a chunk of the output depths instead, with every tap and output channel,
// and the chunks' partial sums are added in chunk order afterwards. The blocks, chunks and
// bands are chosen from the shape alone, so each sum runs in an order fixed by the shape
// (bitwise stable across runs and thread counts).
#include "kernels.h"
#include "microkernel.h"
#include "packing.h"

#include <ATen/OpMathType.h>

#include <vector>

namespace torchconv3d::cpu {
namespace {

// Input channels per task at most: a tile row holds this many, 4 registers x 2 sweeps.
constexpr int64_t kChannelBlock = 128;

// Weight gradients up to this size (sums in the accumulation type) are summed in chunks of
// output depths, at most kDepthChunks of them (partial sums: kDepthChunks x the gradient).
constexpr int64_t kChunkedWeightBytes = 512 * 1024;
constexpr int64_t kDepthChunks = 8;

// Pairs (bfloat16 on AVX512-BF16): the tile stays bfloat16 and is paired with the next
// position, grad_output paired along positions, and Bf16Kernels::outer_cl sums two
// positions per vdpbf16ps; else the tile and grad_output are A for MicroKernels::outer_cl.
template <typename T, bool Pairs>
void grad_weight_kernel(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                        at::Tensor& grad_weight) {
  using A = at::opmath_type<T>;
  using E = std::conditional_t<Pairs, T, A>;  // the packed tile's element
  const MicroKernels<A>& mk = micro_kernels(A{});
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t kvol = g.kernel_volume();
  const Blocks ciblocks(in_per_group, kChannelBlock);
  const int64_t ldb = round_up(ciblocks.size(0), kLanes);

  Layout L(g);
  // Bands as tall as the tile budget allows: shape-only, so sums group the same way always.
  L.set_band(kTileBytes / (L.row_bytes(sizeof(A)) * ldb) - L.qh_max);
  const int64_t pairs_per_row = ceil_div(g.out[2], 2);
  const ColumnMap cm(L);
  const std::vector<int64_t> offs = tap_offsets(L, ldb);

  // Tasks: every thread needs two, of equal cost; taps are split first (each costs the
  // same and only repacks the input tile), output channels when taps run out. A small
  // gradient is split by chunks of output depths instead (the input packed once in all).
  const int64_t want = 2 * at::get_num_threads(), base = g.groups * ciblocks.count;
  const int64_t depths = g.batch * g.out[0];
  const bool chunked = depths > 1 && base * kvol * out_per_group * ldb * int64_t(sizeof(A)) <=
                                         kChunkedWeightBytes;
  const Blocks chunks(depths, chunked ? ceil_div(depths, kDepthChunks) : depths);
  const int64_t tap_blocks = chunked ? 1 : std::clamp<int64_t>(ceil_div(want, base), 1, kvol);
  const Blocks tapb(kvol, ceil_div(kvol, tap_blocks));
  const int64_t coblocks =
      chunked ? 1
              : std::clamp<int64_t>(ceil_div(want, base * tapb.count), 1,
                                    ceil_div(out_per_group, 6));
  const Blocks cob(out_per_group, ceil_div(out_per_group, coblocks));
  const int64_t tasks = base * cob.count * tapb.count * chunks.count;
  // Chunked: each task's sums [tap][co][ci], added over chunks once all are done.
  const int64_t task_sums = kvol * out_per_group * ldb;
  at::Tensor partial;
  if (chunked)
    partial = at::empty({tasks * task_sums},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  // grad_output is read in place when its channels are contiguous values of A.
  const bool gy_in_place = !Pairs && std::is_same_v<T, A> && grad_output.stride(1) == 1;

  const T* gyp = grad_output.const_data_ptr<T>();
  const auto xs = spatial_strides(input), gys = spatial_strides(grad_output);
  const int64_t gysn = grad_output.stride(0), gysc = grad_output.stride(1);
  T* gwp = grad_weight.mutable_data_ptr<T>();
  const int64_t gw0 = grad_weight.stride(0), gw1 = grad_weight.stride(1);
  const std::array<int64_t, 3> gwk = {grad_weight.stride(2), grad_weight.stride(3),
                                      grad_weight.stride(4)};

  // Sums [tap][co][ci] of output channels co0.. and input channels ci0.., taps k0.., to
  // grad_weight.
  auto store = [&](const A* sums, int64_t co0, int64_t cos, int64_t ci0, int64_t cis,
                   int64_t k0, int64_t taps) {
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t k = k0 + t, l = k % g.kernel[2];
      const int64_t i = k / (g.kernel[1] * g.kernel[2]), j = k / g.kernel[2] % g.kernel[1];
      T* gw = gwp + co0 * gw0 + ci0 * gw1 + i * gwk[0] + j * gwk[1] + l * gwk[2];
      for (int64_t co = 0; co < cos; ++co)
        for (int64_t e = 0; e < cis; ++e)
          gw[co * gw0 + e * gw1] = static_cast<T>(sums[(t * cos + co) * ldb + e]);
    }
  };

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor h_buf, h_acc, h_gy, h_pairs, h_gpairs;
    const int64_t positions = L.planes_per_channel() * L.plane + L.lw + kLanes;
    const int64_t bufsize = positions * ldb;
    E* buf = scratch<E>(h_buf, bufsize);
    std::fill(buf, buf + bufsize, E(0));
    const int64_t cos_max = cob.size(0);
    A* const own = chunked ? nullptr : scratch<A>(h_acc, tapb.size(0) * cos_max * ldb);
    A* gyb = gy_in_place || Pairs ? nullptr : scratch<A>(h_gy, L.th * g.out[2] * cos_max);
    // Pairs: the tile paired with the next position, and grad_output's pairs.
    uint32_t* pairs = Pairs ? reinterpret_cast<uint32_t*>(scratch<int32_t>(h_pairs, bufsize))
                            : nullptr;
    uint32_t* gpairs =
        Pairs ? reinterpret_cast<uint32_t*>(scratch<int32_t>(h_gpairs, L.th * pairs_per_row * cos_max))
              : nullptr;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks.count, rest = task / chunks.count;
      const int64_t tb = rest % tapb.count, ob = rest / tapb.count % cob.count;
      const int64_t cb = rest / (tapb.count * cob.count) % ciblocks.count;
      const int64_t grp = rest / (tapb.count * cob.count * ciblocks.count);
      const int64_t ci0 = ciblocks.start(cb), cis = ciblocks.size(cb);
      const int64_t co0 = grp * out_per_group + cob.start(ob), cos = cob.size(ob);
      const int64_t k0 = tapb.start(tb), taps = tapb.size(tb);
      A* acc = chunked ? partial.data_ptr<A>() + task * task_sums : own;  // [tap][co][ci]
      std::fill(acc, acc + taps * cos * ldb, A(0));
      const int64_t nd0 = chunks.start(chunk), nd1 = nd0 + chunks.size(chunk);
      for (int64_t nd = nd0; nd < nd1; ++nd) {
        const int64_t n = nd / g.out[0], od = nd % g.out[0];
        for (int64_t oh0 = 0; oh0 < g.out[1]; oh0 += L.th) {
            const int64_t th = L.band_rows(oh0);
            pack_channels_innermost(L, cm, input_frames<T>(g, input, n, grp * in_per_group + ci0),
                                    cis, ldb, xs, od, 1, oh0, th + L.qh_max, buf);
            const T* gy = gyp + n * gysn + co0 * gysc + od * gys[0] + oh0 * gys[1];
            if constexpr (Pairs) {
              const Bf16Kernels& bk = *bf16_kernels();
              const uint16_t* x16 = reinterpret_cast<const uint16_t*>(buf);
              bk.interleave((positions - 1) * ldb, x16, x16 + ldb, pairs);
              std::fill(pairs + (positions - 1) * ldb, pairs + positions * ldb, 0u);
              const uint16_t* g16 = reinterpret_cast<const uint16_t*>(gy);
              for (int64_t r = 0; r < th; ++r)
                for (int64_t q = 0; q < pairs_per_row; ++q) {
                  const uint16_t* lo = g16 + r * gys[1] + 2 * q * gys[2];
                  const bool whole = 2 * q + 1 < g.out[2];
                  uint32_t* d = gpairs + (r * pairs_per_row + q) * cos;
                  if (gysc == 1) {
                    bk.interleave(cos, lo, whole ? lo + gys[2] : nullptr, d);
                    continue;
                  }
                  for (int64_t j = 0; j < cos; ++j)
                    d[j] = lo[j * gysc] | (whole ? uint32_t(lo[j * gysc + gys[2]]) << 16 : 0u);
                }
              bf16_kernels()->outer_cl(th, g.out[2], taps, cos, ldb, gpairs, cos,
                                       pairs_per_row * cos, pairs, ldb, L.lw * ldb,
                                       offs.data() + k0, acc, cos * ldb, ldb);
            } else {
              const A* gv = gyb;
              int64_t ldg = cos, ldgr = g.out[2] * cos;
              if constexpr (std::is_same_v<T, A>) {
                if (gy_in_place) {
                  gv = gy;
                  ldg = gys[2];
                  ldgr = gys[1];
                }
              }
              if (!gy_in_place) {
                for (int64_t r = 0; r < th; ++r)
                  for (int64_t ow = 0; ow < g.out[2]; ++ow)
                    for (int64_t j = 0; j < cos; ++j)
                      gyb[(r * g.out[2] + ow) * cos + j] =
                          static_cast<A>(gy[j * gysc + r * gys[1] + ow * gys[2]]);
              }
              mk.outer_cl(th, g.out[2], taps, cos, ldb, gv, ldg, ldgr, buf, ldb, L.lw * ldb,
                          offs.data() + k0, acc, cos * ldb, ldb);
            }
          }
      }
      if (!chunked) store(acc, co0, cos, ci0, cis, k0, taps);
    }
  });
  if (!chunked) return;
  // The chunks' partial sums added in chunk order, per (group, block of input channels).
  at::parallel_for(0, base, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      A* sum = partial.data_ptr<A>() + b * chunks.count * task_sums;
      for (int64_t c = 1; c < chunks.count; ++c) {
        const A* p = sum + c * task_sums;
        for (int64_t i = 0; i < task_sums; ++i) sum[i] += p[i];
      }
      const int64_t cb = b % ciblocks.count, grp = b / ciblocks.count;
      store(sum, grp * out_per_group, out_per_group, ciblocks.start(cb), ciblocks.size(cb), 0,
            kvol);
    }
  });
}

}  // namespace

bool grad_weight_channels_last(const Geometry& g, const at::Tensor& grad_output,
                               const at::Tensor& input, at::Tensor& grad_weight) {
  // Input channels fill the vector lanes (at least one register, 3/4 of the lanes in use);
  // output channels are broadcast, a few per loaded register at least.
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  if (input.stride(1) != 1 || in_per_group < kLanes ||
      4 * in_per_group < 3 * round_up(in_per_group, kLanes) || out_per_group < 4)
    return false;
  // bfloat16 on AVX512-BF16: vdpbf16ps on pairs of positions. Measured, 2 threads, planar /
  // float outer / pairs (ms): C3D conv3a 17.7 / 26.2 / 14.5, 3D U-Net 3x3x3 3.84 / 4.77 /
  // 3.22, R(2+1)D 1x3x3 2.99 / 2.43 / 1.45, nnU-Net stride 2 1.77 / 1.43 / 1.12, MedicalNet
  // dilated 5.24 / 7.22 / 5.43. With 16-31 channels (one register: 8 broadcasts per load)
  // pairs won once the input is packed once per chunk of depths, not once per tap block:
  // VoxelMorph float outer / pairs 1.61 / 1.07, V-Net 5x5x5 4.11 (planar) / 4.04.
  if (input.scalar_type() == at::kBFloat16 && bf16_kernels()) {
    grad_weight_kernel<c10::BFloat16, true>(g, grad_output, input, grad_weight);
    return true;
  }
  TC3D_DISPATCH(input.scalar_type(), "torchconv3d_grad_weight_cl",
                [&] { grad_weight_kernel<scalar_t, false>(g, grad_output, input, grad_weight); });
  return true;
}

}  // namespace torchconv3d::cpu
