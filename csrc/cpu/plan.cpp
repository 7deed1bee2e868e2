// The planar passes' plans (plan.h) and their printed form.
#include "plan.h"
#include "winograd.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <numeric>
#include <sstream>

namespace torchconv3d::cpu {

// The forward's smallest band, in output positions (plan_forward).
constexpr int64_t kMinBandPositions = 384;

// The cache blocking of the float forward's GEMM (ForwardPlan): a slice's rows of planes
// within about half a 32 KB L1 data cache, the held results within a quarter of a 512 KB
// L2. Each block used to sweep the whole tile, so each of its K rows of the planes came
// from L2 or L3 once per block; R(2+1)D's 3x1x1 layer (K = 432, a 677 KB tile) ran at
// ~30% of the FMA peak on a Zen 3 (AVX2): 4.2 -> 2.9 ms, nnU-Net's stride-2 6.4 -> 3.5 ms.
constexpr int64_t kSliceBytes = 16 * 1024;
constexpr int64_t kHeldResultBytes = 128 * 1024;

ForwardPlan plan_forward(const Geometry& g, int64_t plane_elem, int64_t max_rows, bool pairs,
                         int64_t threads, int64_t block_positions) {
  const int64_t channels = g.in_per_group();
  // Bands of at least ~384 positions, past the tile budget if need be: a 256-channel layer
  // got 1-row bands (one GEMM call per 48 positions re-reading a 166 KB weight block),
  // 127 -> 82 ms for 256 -> 256 channels at 9 x 32 x 32 (2 threads), C3D float32 30.0 -> 27.4.
  const Layout L = forward_layout(g, channels, plane_elem, threads, kMinBandPositions);
  const Blocks out_blocks(g.out_per_group(), max_rows);
  const int64_t results = max_rows * L.n * int64_t(sizeof(float));  // float or double rows
  int64_t bytes;
  if (pairs) {  // bfloat16 planes, then 32-bit pairs of them, float results
    const int64_t pair_count = ceil_div(channels, 2), kw = g.kernel[2];
    if (channels % 2 == 1 && channels * ceil_div(kw, 2) < pair_count * kw &&
        tap_pair_step(L) > 0) {
      // Pairs of kernel columns: per channel a plane of pairs, and for an odd width one more
      // (forward_bf16_pairs); the band shrinks by the bytes they add over channel pairs.
      const int64_t pair_planes = (kw % 2 == 1 ? 2 : 1) * channels;
      const int64_t budget_channels =
          ceil_div(channels * (pair_count + pair_planes), 2 * pair_count);
      const Layout paired =
          forward_layout(g, budget_channels, plane_elem, threads, kMinBandPositions);
      bytes = paired.buffer_size(2 * pair_count) * plane_elem +
              paired.buffer_size(pair_planes) * 4 + max_rows * paired.n * int64_t(sizeof(float));
      return {paired, out_blocks, ForwardTile::count(paired), bytes, tap_pair_step(paired)};
    }
    bytes = L.buffer_size(2 * pair_count) * plane_elem + L.buffer_size(pair_count) * 4 + results;
    return {L, out_blocks, ForwardTile::count(L), bytes};
  }
  // Slices of whole register blocks and of whole kLanes groups (gemm's unit of n).
  const int64_t slice = std::lcm(block_positions, kLanes);
  const int64_t chunk = std::max<int64_t>(16, kSliceBytes / (slice * plane_elem));
  // (At least one block, also for a layer without output channels: no block to hold.)
  const int64_t held = std::max<int64_t>(
      1, std::min(out_blocks.count, kHeldResultBytes / (max_rows * L.n * plane_elem)));
  bytes = L.buffer_size(channels) * plane_elem + held * max_rows * L.n * plane_elem;
  return {L, out_blocks, ForwardTile::count(L), bytes, 0, held, chunk, slice};
}

GradInputPlan plan_grad_input(const Geometry& g, int64_t elem, int64_t max_rows, bool direct,
                              int64_t threads) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  Layout L(g);
  const int64_t halo = L.qh_max * L.lw + L.qw_max;
  // The band fixes how terms are grouped into sums, so it depends on the shape alone.
  L.set_band(kTileBytes / (out_per_group * L.lw * elem) - L.qh_max);
  const int64_t plane_positions = round_up(L.plane, kLanes);
  // +kLanes: off multiples of 4 KB (see Layout::channel_stride).
  const int64_t gy_row = halo + plane_positions + kLanes;
  const Blocks channel_blocks(in_per_group, max_rows);
  const int64_t phases = L.sh * L.sw;

  // Thin layers: when the phase-plane gradients of every channel for several output
  // depths fit the budget, they are summed per input depth over those output depths and
  // added back once, rather than once per (output depth, depth tap). Shape-only choice.
  if (L.bands() == 1) {
    L.grow_depths([&](const Layout& t) {
      return in_per_group * t.slots * phases * plane_positions * elem <= kTileBytes;
    });
  }
  const bool slotted = L.td > 1;

  // Depth blocks: a task scans the output depths once, so few large blocks keep that
  // linear; enough of them for every thread.
  const int64_t units = g.batch * g.groups;
  const int64_t by_threads =
      ceil_div(g.in[0], std::max<int64_t>(1, ceil_div(4 * threads, units)));
  int64_t blocks_per_task = channel_blocks.count, depth_block = by_threads;
  int64_t row_block = g.in[1];
  if (!direct) {
    // The slab: whole channels and planes when they fit, then as many depths as fit. Else
    // rows: windows at least four bands' input rows tall (few bands are computed twice),
    // with as many micro-kernel blocks of channels as that allows, then as many rows.
    const int64_t row_bytes = g.in[2] * elem;
    const int64_t plane_bytes = g.in[1] * row_bytes;
    if (in_per_group * plane_bytes <= kTileBytes) {
      depth_block = std::clamp<int64_t>(kTileBytes / (in_per_group * plane_bytes), 1,
                                        std::max<int64_t>(1, by_threads));
    } else {
      depth_block = 1;
      const int64_t block_channels = ceil_div(in_per_group, channel_blocks.count);
      const int64_t band_rows = (L.th + L.qh_max) * L.sh;
      const int64_t min_rows = std::min(g.in[1], 4 * band_rows);
      blocks_per_task = std::clamp<int64_t>(
          kTileBytes / (min_rows * row_bytes * block_channels), 1, channel_blocks.count);
      const int64_t channels = std::min(in_per_group, blocks_per_task * block_channels);
      row_block = std::clamp<int64_t>(kTileBytes / (channels * row_bytes), 1, g.in[1]);
    }
  }
  GradInputPlan p{L, channel_blocks, halo, plane_positions, gy_row, direct, slotted,
                  blocks_per_task,
                  ceil_div(channel_blocks.count, std::max<int64_t>(1, blocks_per_task)),
                  depth_block, ceil_div(g.in[0], depth_block),
                  row_block, ceil_div(g.in[1], row_block), 0, 0};
  p.tasks = units * p.channel_tasks * p.depth_tasks * p.row_tasks;
  const int64_t gradients =
      slotted ? p.task_channels() * p.slot_stride() : max_rows * phases * plane_positions;
  const int64_t slab = direct ? 0 : p.task_channels() * depth_block * row_block * g.in[2];
  p.workspace_bytes = (out_per_group * gy_row + gradients + slab) * elem;
  return p;
}

GradWeightPlan plan_grad_weight(const Geometry& g, int64_t elem, int64_t tile_elem,
                                int64_t threads) {
  const int64_t in_per_group = g.in_per_group(), out_per_group = g.out_per_group();
  Layout L(g);
  // Whole output planes per tile when they fit: each dot product then runs over a long
  // stretch of positions before its lanes are added up. Shape-only, like grad_input's.
  const int64_t per_channel = (g.out[1] + L.qh_max) * L.row_bytes(elem);
  int64_t in_block = std::clamp<int64_t>(kTileBytes / per_channel, 1, in_per_group);
  if (kTileBytes / per_channel >= 1) {
    L.set_band(g.out[1]);
  } else {
    L.set_band(kTileBytes / L.row_bytes(elem) - L.qh_max);
  }
  // Then enough (output block, input block) pairs for every thread: input channels are
  // split first (the cheaper copy to repeat is grad_output's), then output channels.
  const int64_t want = 4 * threads;
  in_block = std::min(in_block,
                      ceil_div(in_per_group, std::min(in_per_group, ceil_div(want, g.groups))));
  const int64_t in_blocks = ceil_div(in_per_group, in_block);
  // Row stride off multiples of 4 KB; the bfloat16 dot reads up to kLanes past a row.
  const int64_t gy_row = L.n + kLanes;
  // The grad_output tile holds a task's output channels: at most four budgets of them
  // (whole planes of hundreds of channels would take tens of MB). Repacking the input
  // for each block costs 1 / (kernel volume x block) of the dot products.
  const int64_t gy_most = std::max<int64_t>(1, 4 * kTileBytes / (gy_row * tile_elem));
  const int64_t out_tasks = std::min(
      out_per_group,
      std::max(ceil_div(want, g.groups * in_blocks), ceil_div(out_per_group, gy_most)));
  const int64_t out_block = ceil_div(out_per_group, out_tasks);
  // Several depths per tile when whole planes fit: every sum still runs over samples,
  // then depths in order, so this changes no result.
  if (L.bands() == 1) {
    L.grow_depths(
        [&](const Layout& t) { return t.planes_bytes(in_block, elem) <= kTileBytes; });
  }
  GradWeightPlan p{L, in_block, in_blocks, out_block, ceil_div(out_per_group, out_block),
                   gy_row, 0, 0};
  p.tasks = g.groups * p.out_blocks * p.in_blocks;
  p.workspace_bytes = (L.buffer_size(in_block) + out_block * gy_row) * tile_elem;
  return p;
}

namespace {

void describe_layout(std::ostringstream& s, const Layout& L) {
  s << "band_rows=" << L.th << " bands=" << L.bands() << " depths_per_tile=" << L.td;
}

}  // namespace

std::string describe_plan(std::string_view pass, const Geometry& g, at::ScalarType dtype) {
  const bool is_double = dtype == at::kDouble;
  const int64_t elem = is_double ? 8 : 4;  // the accumulation type's
  const int64_t max_rows =
      is_double ? micro_kernels(double{}).max_rows : micro_kernels(float{}).max_rows;
  const int64_t block_positions = is_double ? micro_kernels(double{}).block_positions
                                            : micro_kernels(float{}).block_positions;
  const int64_t threads = at::get_num_threads();
  std::ostringstream s;
  if (pass == "forward") {
    const Bf16Kernels* bk = bf16_kernels();
    // (forward_bf16_pairs hands a single channel back unless its kernel columns pair.)
    const bool pairs = dtype == at::kBFloat16 && bk &&
                       (g.in_per_group() >= 2 ||
                        plan_forward(g, 2, bk->max_rows, true, threads).tap_pair_step > 0);
    const ForwardPlan p = pairs ? plan_forward(g, 2, bk->max_rows, true, threads)
                                : plan_forward(g, elem, max_rows, false, threads, block_positions);
    describe_layout(s, p.layout);
    s << " out_channel_blocks=" << p.out_blocks.count << " tasks=" << p.tasks
      << " workspace_bytes=" << p.workspace_bytes << " tap_pair_step=" << p.tap_pair_step
      << " held_blocks=" << p.held_blocks << " chunk_terms=" << p.chunk_terms
      << " slice_positions=" << p.slice_positions;
  } else if (pass == "grad_input") {
    const bool direct = dtype == at::kFloat || is_double;
    const GradInputPlan p = plan_grad_input(g, elem, max_rows, direct, threads);
    describe_layout(s, p.layout);
    s << " direct=" << p.direct << " slotted=" << p.slotted
      << " channels_per_task=" << p.task_channels() << " channel_tasks=" << p.channel_tasks
      << " depth_block=" << p.depth_block << " depth_tasks=" << p.depth_tasks
      << " row_block=" << p.row_block << " row_tasks=" << p.row_tasks << " tasks=" << p.tasks
      << " workspace_bytes=" << p.workspace_bytes;
  } else if (pass == "grad_weight") {
    const int64_t tile_elem = dtype == at::kBFloat16 && bf16_kernels() ? 2 : elem;
    const GradWeightPlan p = plan_grad_weight(g, elem, tile_elem, threads);
    describe_layout(s, p.layout);
    s << " in_block=" << p.in_block << " in_blocks=" << p.in_blocks
      << " out_block=" << p.out_block << " out_blocks=" << p.out_blocks << " tasks=" << p.tasks
      << " workspace_bytes=" << p.workspace_bytes;
  } else if (pass == "winograd") {
    // The Winograd forward's plan (m=0: the layer runs on the direct kernels).
    const winograd::WinogradPlan p =
        winograd::plan_winograd(g, winograd::tile_outputs(g, dtype), threads);
    s << "m=" << p.m << " comps=" << p.comps << " tiles=" << p.tiles << " chunk=" << p.chunk
      << " chunks=" << p.chunks << " shared=" << p.shared << " caller_bytes=" << p.caller_bytes
      << " thread_bytes=" << p.thread_bytes;
  } else {
    TORCH_CHECK_VALUE(false,
                      "pass must be 'forward', 'grad_input', 'grad_weight' or 'winograd', but "
                      "got '",
                      std::string(pass), "'");
  }
  return s.str();
}

}  // namespace torchconv3d::cpu
