// What each planar pass (forward_planar.cpp, grad_input_planar.cpp, grad_weight_planar.cpp)
// will do, decided from the Geometry, the element sizes and the thread count before any
// data moves: tiles, blocks, the split into tasks and the workspace a thread holds. The
// kernels execute a plan; describe_plan() prints one, so tests can read it (cpu_plan op).
//
// Every budget is kTileBytes (the forward's bands are at least ~384 positions tall even
// past it: the tile then grows with channels x row width, never with the volume). Choices
// that fix how terms are grouped into sums (bands, depths per tile) depend on the shape
// alone, never on the thread count, so results are bitwise stable across thread counts;
// only the split into tasks follows the threads.
#pragma once

#include "tile_layout.h"

#include <string>
#include <string_view>

namespace torchconv3d::cpu {

struct ForwardPlan {
  Layout layout;       // bands and depths per tile (ForwardTile walks them)
  Blocks out_blocks;   // output channels per micro-kernel call
  int64_t tasks;       // tiles: (sample, group, depth block, band)
  int64_t workspace_bytes;  // per thread
  // pairs: > 0 where the operand pairs are kernel columns (2q, 2q + 1) of one channel, the
  // buffer distance between their windows (tap_pair_step); 0: channels (2p, 2p + 1).
  int64_t tap_pair_step = 0;
  // The float kernels' GEMM of a tile (results = weights x planes: output channels x
  // positions), blocked for the caches: the results of `held_blocks` output-channel blocks
  // stay in the scratch while, for each chunk of `chunk_terms` terms (the K of the GEMM),
  // every slice of `slice_positions` positions goes through all those blocks, its
  // chunk_terms rows staying in L1 while the weights stream past. Chunks group the sums, so
  // they follow the shape and the ISA's register block, never the thread count. (The
  // bfloat16 pairs run each block over the whole tile: their kernel has no accumulating
  // form.)
  int64_t held_blocks = 1;
  int64_t chunk_terms = 0;
  int64_t slice_positions = 0;
};
// plane_elem: bytes of a phase-plane element; pairs: the bfloat16 kernels' operand pairs
// (forward_bf16_pairs keeps bfloat16 planes and a second copy of them as 32-bit pairs);
// block_positions: the positions one register block of the float gemm covers.
ForwardPlan plan_forward(const Geometry& g, int64_t plane_elem, int64_t max_rows, bool pairs,
                         int64_t threads, int64_t block_positions = kLanes);

// grad_input: a task owns the grad_input elements of one sample and group, a range of input
// channels, of input depths and of input rows, and walks every (output depth, band) that
// reads them. float and double add straight into grad_input (one task per sample, group and
// depth block: whole channels and rows); the half types sum in a float slab of the task's
// elements, written once, so their tasks are cut to the budget in channels (whole
// micro-kernel blocks), rows and depths. A band read by two row ranges is computed by both.
struct GradInputPlan {
  Layout layout;          // bands of output rows (shape-only) and output depths per tile
  Blocks channel_blocks;  // input channels per micro-kernel call
  int64_t halo;           // grad_output tile positions before the first (the largest shift)
  int64_t plane_positions;  // phase-plane positions computed per band, a kLanes multiple
  int64_t gy_row;         // row stride of the grad_output tile
  bool direct;            // adds into grad_input; else a float slab
  bool slotted;           // a tile's depths summed per input depth, then one scatter
  int64_t blocks_per_task, channel_tasks;  // of channel_blocks
  int64_t depth_block, depth_tasks;
  int64_t row_block, row_tasks;
  int64_t tasks;
  int64_t workspace_bytes;  // per thread

  int64_t phases() const { return layout.sh * layout.sw; }
  // Elements between the slot gradients of consecutive channels (slotted).
  int64_t slot_stride() const { return layout.slots * phases() * plane_positions; }
  // The largest number of channels a task holds.
  int64_t task_channels() const {
    const int64_t channels = layout.g.in_per_group();
    if (channel_blocks.count == 0) return 0;
    return std::min(channels, blocks_per_task * ceil_div(channels, channel_blocks.count));
  }
};
GradInputPlan plan_grad_input(const Geometry& g, int64_t elem, int64_t max_rows, bool direct,
                              int64_t threads);

// grad_weight: a task owns a block of output channels and of input channels of one group
// and walks every tile of every sample in order.
struct GradWeightPlan {
  Layout layout;  // bands (whole output planes when they fit) and depths per tile
  int64_t in_block, in_blocks;
  int64_t out_block, out_blocks;
  int64_t gy_row;  // row stride of the grad_output tile
  int64_t tasks;
  int64_t workspace_bytes;  // per thread
};
// elem: bytes of the accumulation type (it sizes the bands); tile_elem: of the tiles.
GradWeightPlan plan_grad_weight(const Geometry& g, int64_t elem, int64_t tile_elem,
                                int64_t threads);

// "key=value ..." of the plan the planar pass `pass` ('forward', 'grad_input',
// 'grad_weight') makes for g in `dtype` on the current thread count.
std::string describe_plan(std::string_view pass, const Geometry& g, at::ScalarType dtype);

}  // namespace torchconv3d::cpu
