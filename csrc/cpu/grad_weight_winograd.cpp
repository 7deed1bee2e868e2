// grad_weight by Winograd's F(m, 3), the adjoint of the forward (forward_winograd.cpp),
// for the layers the forward's rule takes. There each tile's outputs are y = A^T M with
// M[comp] = sum_c V[comp][c] U[comp][c] and U = G w (per axis); so
//   dM = A gy                                   (per axis, for each tile)
//   dU[comp] = sum over tiles of V[comp][tile]^T dM[comp][tile]   (one GEMM per component)
//   dw = G^T dU                                 (per axis)
// with 8x (F(4, 3)) or 3.4x (F(2, 3)) fewer products than the direct sum. The tiles are
// summed in order, a chunk at a time (its size set by the shape), each component owned by
// one thread: bitwise the same on any thread count. Error, bfloat16's F(4, 3) summed in
// float: ~1e-4 of the largest gradient, below bfloat16's rounding. A non-finite value
// anywhere shows in dw (every column of A, B^T and G^T has a nonzero) and sends the pass
// to the direct kernels.
#include "kernels.h"
#include "winograd.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

namespace torchconv3d::cpu {
namespace {

using namespace winograd;

// V and dM of one chunk of tiles: the threads share it (tiles, then components).
constexpr int64_t kGradChunkBytes = int64_t(16) << 20;

template <typename T>
bool winograd_grad_weight(const Geometry& g, int64_t m, const at::Tensor& grad_output,
                          const at::Tensor& input, at::Tensor& grad_weight) {
  using B = std::conditional_t<std::is_same_v<T, float>, float, uint16_t>;
  const MicroKernels<float>& mk = micro_kernels(float{});
  const std::array<Axis, 3> ax{make_axis(g, 0, m), make_axis(g, 1, m), make_axis(g, 2, m)};
  const int64_t ms[3] = {ax[0].t.m, ax[1].t.m, ax[2].t.m};
  const int64_t ad = ax[0].t.a, ah = ax[1].t.a, aw = ax[2].t.a, hws = ah * aw;
  const int64_t comps = ad * hws;
  const int64_t cin = g.in_channels, cout = g.out_channels;
  const int64_t cp = round_up(cin, kLanes), cols = round_up(cout, kLanes);
  const int64_t kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2], kvol = kd * kh * kw;
  const TileGrid grid(ax);
  const int64_t tiles = grid.count(g.batch);
  if (tiles == 0) return false;

  const int64_t per_tile = comps * (cp + cols) * int64_t(sizeof(float));
  const int64_t chunk = std::clamp<int64_t>(kGradChunkBytes / per_tile, 1, tiles);
  const int64_t batch = cols * cp;  // one component's dU: [C_out][C_in] (padded)
  float* du = kept_buffer(kAllWeights, comps * batch);
  float* v = kept_buffer(kInputs, comps * chunk * cp);
  float* dm = kept_buffer(kProducts, comps * chunk * cols);
  at::parallel_for(0, comps, 1, [&](int64_t begin, int64_t end) {
    std::fill(du + begin * batch, du + end * batch, 0.f);
  });

  const B* gp = reinterpret_cast<const B*>(grad_output.const_data_ptr());
  const auto xs = spatial_strides(input), gs = spatial_strides(grad_output);
  const int64_t gsn = grad_output.stride(0);
  for (int64_t tile0 = 0; tile0 < tiles; tile0 += chunk) {
    const int64_t count = std::min(chunk, tiles - tile0);
    // Each tile's input components (as the forward's) and output-gradient components.
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      std::vector<B> zeros(std::max(cp, cols), B(0));
      std::vector<const B*> src(comps), gsrc(ms[0] * ms[1] * ms[2]);
      for (int64_t i = begin; i < end; ++i) {
        const auto [n, id, ih, iw] = grid.coords(tile0 + i);
        input_sources(g, ax, id, ih, iw, input_frames<B>(g, input, n, 0), xs, zeros.data(),
                      src.data());
        const B* gn = gp + n * gsn;
        for (int64_t x = 0; x < ms[0]; ++x) {
          const int64_t od = ax[0].origin[id] + x * ax[0].step;
          for (int64_t y = 0; y < ms[1]; ++y) {
            const int64_t oh = ax[1].origin[ih] + y * ax[1].step;
            for (int64_t z = 0; z < ms[2]; ++z) {
              const int64_t ow = ax[2].origin[iw] + z * ax[2].step;
              gsrc[(x * ms[1] + y) * ms[2] + z] =
                  od < g.out[0] && oh < g.out[1] && ow < g.out[2]
                      ? gn + od * gs[0] + oh * gs[1] + ow * gs[2]
                      : zeros.data();
            }
          }
        }
        if constexpr (std::is_same_v<B, float>) {
          mk.winograd_input(ms, src.data(), cin, v + i * cp, chunk * cp);
          mk.winograd_output_adjoint(ms, gsrc.data(), cout, dm + i * cols, chunk * cols);
        } else {
          mk.winograd_input_bf16(ms, src.data(), cin, v + i * cp, chunk * cp);
          mk.winograd_output_adjoint_bf16(ms, gsrc.data(), cout, dm + i * cols, chunk * cols);
        }
      }
    });
    // dU[comp][j][e] += sum over the chunk's tiles of dM[comp][tile][j] V[comp][tile][e].
    at::parallel_for(0, comps, 1, [&](int64_t begin, int64_t end) {
      const int64_t offs = 0;
      for (int64_t k = begin; k < end; ++k)
        mk.outer_cl(1, count, 1, cout, cp, dm + k * chunk * cols, cols, 0, v + k * chunk * cp,
                    cp, 0, &offs, du + k * batch, 0, cp);
    });
  }

  // dw = G^T dU along d, h, w, over slices of the batch [C_out][C_in] (one per task).
  std::vector<float> gt[3];  // G^T: taps x a
  for (int d = 0; d < 3; ++d) {
    const Transform& t = ax[d].t;
    const int64_t taps = g.kernel[d];
    gt[d].resize(taps * t.a);
    for (int64_t r = 0; r < t.a; ++r)
      for (int64_t c = 0; c < taps; ++c) gt[d][c * t.a + r] = t.g[r * taps + c];
  }
  float* t1 = kept_buffer(kWeights, kd * hws * batch);         // [kd][ah][aw][batch]
  float* t2 = kept_buffer(kComponentWeights, kd * kh * aw * batch);  // [kd][kh][aw][batch]
  float* dw = kept_buffer(kInputs, kvol * batch);               // [kd][kh][kw][batch]
  constexpr int64_t kSlice = 4096;
  at::parallel_for(0, ceil_div(batch, kSlice), 1, [&](int64_t begin, int64_t end) {
    const float* in[kMaxTransform];
    for (int64_t s = begin; s < end; ++s) {
      const int64_t x0 = s * kSlice, n = std::min(kSlice, batch - x0);
      for (int64_t hw = 0; hw < hws; ++hw) {
        for (int64_t t = 0; t < ad; ++t) in[t] = du + (t * hws + hw) * batch + x0;
        mk.transform(kd, ad, gt[0].data(), in, n, t1 + hw * batch + x0, hws * batch);
      }
      for (int64_t i = 0; i < kd; ++i)
        for (int64_t z = 0; z < aw; ++z) {
          for (int64_t t = 0; t < ah; ++t) in[t] = t1 + ((i * ah + t) * aw + z) * batch + x0;
          mk.transform(kh, ah, gt[1].data(), in, n, t2 + (i * kh * aw + z) * batch + x0,
                       aw * batch);
        }
      for (int64_t r = 0; r < kd * kh; ++r) {
        for (int64_t t = 0; t < aw; ++t) in[t] = t2 + (r * aw + t) * batch + x0;
        mk.transform(kw, aw, gt[2].data(), in, n, dw + r * kw * batch + x0, batch);
      }
    }
  });

  // [tap][C_out][C_in] -> grad_weight [C_out][C_in][tap], after the finite check.
  at::Tensor out = grad_weight.is_contiguous() ? grad_weight : at::empty_like(grad_weight,
                                                                  at::MemoryFormat::Contiguous);
  T* wp = out.mutable_data_ptr<T>();
  std::atomic<bool> finite{true};
  at::parallel_for(0, cout, 1, [&](int64_t begin, int64_t end) {
    bool ok = true;
    for (int64_t j = begin; j < end; ++j)
      for (int64_t e = 0; e < cin; ++e)
        for (int64_t k = 0; k < kvol; ++k) {
          const float val = dw[k * batch + j * cp + e];
          ok = ok && std::isfinite(val);
          wp[(j * cin + e) * kvol + k] = static_cast<T>(val);
        }
    if (!ok) finite.store(false);
  });
  if (!finite.load()) return false;
  if (!out.is_same(grad_weight)) grad_weight.copy_(out);
  return true;
}

}  // namespace

bool grad_weight_winograd(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& input, at::Tensor& grad_weight) {
  // 3x3x3 only (3.4x / 8x fewer products): R(2+1)D's 1x3x3 (2.25x / 4x) went from 4.5 to
  // 5.0-5.4 ms forward + backward in bfloat16, where the direct pass sums position pairs
  // on vdpbf16ps.
  const int64_t m = winograd::tile_outputs(g, input.scalar_type());
  if (m == 0 || g.kernel_volume() != 27 ||
      micro_kernels(float{}).winograd_output_adjoint == nullptr)
    return false;
  if (g.head.frames > 0 && input.stride(1) != 1) return false;  // (as forward_winograd)
  const at::Tensor x = input.stride(1) == 1 ? input : to_channels_last(input, kCopy2);
  const at::Tensor gy =
      grad_output.stride(1) == 1 ? grad_output : to_channels_last(grad_output, kCopy);
  if (input.scalar_type() == at::kFloat)
    return winograd_grad_weight<float>(g, m, gy, x, grad_weight);
  return winograd_grad_weight<c10::BFloat16>(g, m, gy, x, grad_weight);
}

}  // namespace torchconv3d::cpu
