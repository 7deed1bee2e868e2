// grad_input as forward convolutions.
//
// grad_input is the transposed convolution of grad_output. Along one dimension (stride s,
// dilation d, padding p), input index i receives w[k] * gy[o] for every tap k with
// o * s + k * d - p = i. Split i by its phase r = i mod s: the taps that reach phase r
// are those with k * d = r + p (mod s), evenly spaced (step s / gcd(d, s)), and for
// i = r + m * s they read gy[m + (r + p - k * d) / s] - a stride-1 correlation of
// grad_output with those taps (reversed), dilation d / gcd(d, s), written to every s-th
// input index. In 3-D, each of the s_d * s_h * s_w phases is one such forward
// convolution with input and output channels swapped, and each grad_input element
// belongs to exactly one phase, written once with one sum.
//
// So the forward computes grad_input too, reading grad_output and writing grad_input where
// they lie: no transposed copy and no adjoint scatter. Used where the forward is faster
// than the planar grad_input pass: channels innermost (forward_channels_last.cpp:
// gemm_cl, depthwise_cl) and bfloat16 in either layout (vdpbf16ps). Only zero padding
// (the other modes add a padded position's gradient back to the element it copied, which
// a forward cannot express) and finite weights (a padding zero of grad_output times an
// infinite weight would make a NaN where no term exists; grad_input_planar.cpp adds
// those terms exactly, nonfinite.h).
#include "common.h"
#include "kernels.h"
#include "microkernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <vector>

namespace torchconv3d::cpu {
namespace {

// One dimension of one phase: grad_input indices first, first + s, ... (count of them)
// are the forward of grad_output indices [gy_first, gy_first + gy_count) with the taps
// taps[0..] (original tap numbers, in the forward's order), dilation `dilation`.
struct PhaseDim {
  int64_t first = 0, count = 0;
  std::vector<int64_t> taps;  // empty: no tap reaches this phase, its gradient is zero
  int64_t dilation = 1, pad_before = 0, pad_after = 0;
  int64_t gy_first = 0, gy_count = 0;
};

PhaseDim phase_dim(const Geometry& g, int d, int64_t r) {
  const int64_t s = g.stride[d], dil = g.dilation[d], p = g.pad_before[d];
  const int64_t k = g.kernel[d], out = g.out[d];
  PhaseDim pd;
  pd.first = r;
  pd.count = ceil_div(g.in[d] - r, s);
  // The taps reaching phase r, in the forward's (reversed) order; spaced s / gcd(d, s)
  // apart, i.e. d / gcd(d, s) in grad_output.
  for (int64_t t = k - 1; t >= 0; --t)
    if (t * dil % s == (r + p) % s) pd.taps.push_back(t);
  if (pd.taps.empty()) return pd;
  pd.dilation = dil / std::gcd(dil, s);
  // The forward reads gy[m + j * dilation - pad_before] through its tap j, the original
  // tap taps[j]: pad_before = -(r + p - taps[0] * dil) / s.
  const int64_t J = static_cast<int64_t>(pd.taps.size());
  const int64_t pb = -(r + p - pd.taps.front() * dil) / s;
  const int64_t pa = pd.count - out - pb + (J - 1) * pd.dilation;
  // Negative padding crops grad_output instead.
  pd.gy_first = std::max<int64_t>(0, -pb);
  pd.gy_count = out - pd.gy_first - std::max<int64_t>(0, -pa);
  pd.pad_before = std::max<int64_t>(0, pb);
  pd.pad_after = std::max<int64_t>(0, pa);
  return pd;
}

// The weight of the phase with taps `taps` per dimension: [C_in, C_out / groups, taps...],
// input and output channels swapped within each group and the taps picked in the given
// order, gathered in one pass (index_select per dimension, a transpose and a copy made
// four weight-sized copies, 6% of a C3D grad_input).
template <typename E>  // an element's bytes, moved as such
void gather_phase_weight(const Geometry& g, const at::Tensor& weight,
                         const std::array<const std::vector<int64_t>*, 3>& taps, at::Tensor& out) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  const int64_t ka = taps[0]->size(), kb = taps[1]->size(), kc = taps[2]->size();
  const int64_t kvol = g.kernel_volume(), tvol = ka * kb * kc;
  const E* src = static_cast<const E*>(weight.const_data_ptr());
  E* dst = static_cast<E*>(out.mutable_data_ptr());
  std::vector<int64_t> tap(tvol);  // the source tap of each phase tap
  for (int64_t a = 0, t = 0; a < ka; ++a)
    for (int64_t b = 0; b < kb; ++b)
      for (int64_t c = 0; c < kc; ++c)
        tap[t++] = ((*taps[0])[a] * g.kernel[1] + (*taps[1])[b]) * g.kernel[2] + (*taps[2])[c];
  at::parallel_for(0, g.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ci = begin; ci < end; ++ci) {
      const int64_t grp = ci / in_per_group, e = ci % in_per_group;
      for (int64_t j = 0; j < out_per_group; ++j) {
        const E* w = src + ((grp * out_per_group + j) * in_per_group + e) * kvol;
        E* o = dst + (ci * out_per_group + j) * tvol;
        for (int64_t t = 0; t < tvol; ++t) o[t] = w[tap[t]];
      }
    }
  });
}

}  // namespace

bool grad_input_by_phases(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input) {
  if (!g.zero_padding()) return false;
  // bfloat16 forwards run on vdpbf16ps in either layout (the planar grad_input pass sums in
  // float); float ones only channels innermost (the planar pass is as fast as a planar
  // forward).
  const bool bf16_pairs = grad_output.scalar_type() == at::kBFloat16 && bf16_kernels() &&
                          g.out_per_group() >= 2;
  const bool channels_last = grad_output.stride(1) == 1 && grad_input.stride(1) == 1;
  if (!bf16_pairs && !channels_last) return false;
  std::array<std::vector<PhaseDim>, 3> dims;
  for (int d = 0; d < 3; ++d)
    for (int64_t r = 0; r < std::min(g.stride[d], g.in[d]); ++r)
      dims[d].push_back(phase_dim(g, d, r));

  // Each phase's forward, planned before anything runs: without bfloat16 pairs, all of them
  // must take the channels-innermost kernels, else the planar pass does the whole gradient.
  struct Phase {
    Geometry g;
    at::Tensor gy, gx;
    std::array<const PhaseDim*, 3> dim;
    bool zero = false;
  };
  std::vector<Phase> phases;
  for (const PhaseDim& a : dims[0])
    for (const PhaseDim& b : dims[1])
      for (const PhaseDim& c : dims[2]) {
        Phase ph;
        ph.dim = {&a, &b, &c};
        ph.gx = grad_input;
        ph.gy = grad_output;
        for (int d = 0; d < 3; ++d) {
          const PhaseDim& pd = *ph.dim[d];
          ph.gx = ph.gx.slice(2 + d, pd.first, g.in[d], g.stride[d]);
          ph.zero |= pd.taps.empty() || pd.gy_count <= 0;
        }
        if (!ph.zero) {
          Geometry& s = ph.g;
          s = g;
          s.in_channels = g.out_channels;
          s.out_channels = g.in_channels;
          for (int d = 0; d < 3; ++d) {
            const PhaseDim& pd = *ph.dim[d];
            ph.gy = ph.gy.narrow(2 + d, pd.gy_first, pd.gy_count);
            s.in[d] = pd.gy_count;
            s.out[d] = pd.count;
            s.kernel[d] = static_cast<int64_t>(pd.taps.size());
            s.stride[d] = 1;
            s.dilation[d] = pd.dilation;
            s.pad_before[d] = pd.pad_before;
            s.pad_after[d] = pd.pad_after;
          }
          normalise(s);
          if (!bf16_pairs && channels_last_forward(s, ph.gy, ph.gx) == ChannelsLastForward::None)
            return false;
        }
        phases.push_back(std::move(ph));
      }
  const at::Tensor wc = weight.contiguous();
  bool finite = true;
  TC3D_DISPATCH(wc.scalar_type(), "torchconv3d_phase_weights",
                [&] { finite = all_finite(wc.const_data_ptr<scalar_t>(), wc.numel()); });
  if (!finite) return false;

  auto run = [&](Phase& ph) {
    if (ph.zero) {
      ph.gx.zero_();
      return;
    }
    at::Tensor w = at::empty({g.in_channels, g.out_per_group(), ph.g.kernel[0], ph.g.kernel[1],
                              ph.g.kernel[2]},
                             weight.options());
    const std::array<const std::vector<int64_t>*, 3> taps = {
        &ph.dim[0]->taps, &ph.dim[1]->taps, &ph.dim[2]->taps};
    switch (weight.element_size()) {
      case 2: gather_phase_weight<uint16_t>(g, wc, taps, w); break;
      case 4: gather_phase_weight<uint32_t>(g, wc, taps, w); break;
      default: gather_phase_weight<uint64_t>(g, wc, taps, w); break;
    }
    tiled_forward(ph.g, ph.gy, w, at::Tensor(), ph.gx);
  };
  // A strided layer's phases are small forwards (3D U-Net 2x2x2 stride 2: eight 1x1x1), and
  // run one after another each is a few parallel regions whose waits were a third of the
  // pass. With at least as many phases as threads, each thread runs whole phases instead
  // (their own parallel loops then run inline), largest first onto the least loaded thread.
  // Each phase's sums are the same either way: the forward's order depends on its shape.
  const int64_t threads = at::get_num_threads();
  const int64_t count = static_cast<int64_t>(phases.size());
  if (threads < 2 || count < threads) {
    for (Phase& ph : phases) run(ph);
    return true;
  }
  std::vector<int64_t> cost(count), order(count);
  for (int64_t i = 0; i < count; ++i) {
    const Phase& ph = phases[i];
    cost[i] = ph.gx.numel() * (ph.zero ? 1 : ph.g.kernel_volume() * g.out_per_group());
  }
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::vector<std::vector<int64_t>> lists(threads);
  std::vector<int64_t> load(threads, 0);
  for (const int64_t i : order) {
    const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
    lists[t].push_back(i);
    load[t] += cost[i];
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (const int64_t i : lists[t]) run(phases[i]);
  });
  return true;
}

}  // namespace torchconv3d::cpu
