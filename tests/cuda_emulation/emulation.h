// Runs CUDA kernels on the CPU, so CI (which has no GPU) executes the real kernel source of
// csrc/cuda. Include after the ATen/c10 headers and before the kernel headers.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread. A fiber runs until it
// reaches a barrier and then switches back to the scheduler, which resumes the next one.
// Two kinds of barrier:
// - __syncthreads (block): released when every thread of the block waits at one;
// - warp rendezvous (the warp-collective primitives of csrc/cuda/arch.cuh: mma, ldmatrix):
//   released when all 32 lanes of the warp wait at one. The last lane to arrive computes
//   the collective's result for all lanes from what each lane deposited, so an operation
//   sees exactly the operands the 32 lanes held, as the hardware does.
// The scheduler checks the discipline: a block barrier some threads skip (they returned),
// a warp whose lanes wait at different collectives, or a warp with lanes missing is an
// error, as it would be a hang, a race or undefined behaviour on a GPU.
//
// Blocks run one after another, so a kernel's static __shared__ arrays are function statics
// and dynamic shared memory is one buffer, filled with 0xFF bytes (NaN in every floating
// type) before each block so that reading what nobody wrote shows in the results.
// cp.async copies are held per thread and land only at cp.async.wait_group; until then the
// destination holds 0xFF bytes, so a missing wait or a wrong pipeline stage fails the tests.
#pragma once

#include <c10/util/Exception.h>

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

constexpr int kWarp = 32;

// One cp.async: `bytes` from src land at dst, the rest of `total` is zero-filled.
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, total;
};

enum class Wait { None, Block, Warp };

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
  Wait wait = Wait::None;
  const char* collective = nullptr;  // the warp collective this lane waits at
  std::vector<AsyncCopy> open_group;
  std::deque<std::vector<AsyncCopy>> committed;
};

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline int current = 0;
inline const std::function<void()>* body = nullptr;
inline std::vector<unsigned char> dynamic_smem;

inline void yield(Wait kind) {
  fibers[current].wait = kind;
  swapcontext(&fibers[current].context, &scheduler);
}

inline void syncthreads() { yield(Wait::Block); }

// __syncthreads_or: predicates of the round are OR-ed into `votes`; once every fiber waits,
// the scheduler publishes them as `vote`, which each fiber reads as it resumes.
inline int votes = 0, vote = 0;
inline int syncthreads_or(int predicate) {
  votes |= predicate != 0;
  syncthreads();
  return vote;
}

// ---- warp collectives -------------------------------------------------------------------
inline int lane_id() { return current % kWarp; }

// Per warp: what each lane deposited, what each lane gets back, how many lanes arrived.
struct Exchange {
  alignas(16) unsigned char in[kWarp][64];
  alignas(16) unsigned char out[kWarp][64];
  int arrived = 0;
};
inline std::vector<Exchange> exchanges;

// Lane `lane_id()` deposits `in_bytes` of `in`; when the 32nd lane arrives,
// compute(in[32][64], out[32][64]) runs once; after the rendezvous each lane copies its
// `out_bytes` of out. Outputs are written only when all 32 lanes have arrived again, so a
// lane that has moved on to the next collective cannot overwrite one not yet read.
template <typename F>
void warp_collective(const char* name, const void* in, int in_bytes, void* out, int out_bytes,
                     F&& compute) {
  Exchange& ex = exchanges[current / kWarp];
  std::memcpy(ex.in[lane_id()], in, in_bytes);
  fibers[current].collective = name;
  if (++ex.arrived == kWarp) {
    ex.arrived = 0;
    compute(ex.in, ex.out);
  }
  yield(Wait::Warp);
  std::memcpy(out, ex.out[lane_id()], out_bytes);
}

// ---- cp.async ---------------------------------------------------------------------------
inline void cp_async(void* dst, const void* src, int bytes, int total) {
  std::memset(dst, 0xFF, total);  // poisoned until the copy lands
  fibers[current].open_group.push_back({dst, src, bytes, total});
}

inline void cp_async_commit() {
  Fiber& f = fibers[current];
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

inline void cp_async_wait(int pending) {
  Fiber& f = fibers[current];
  while (static_cast<int>(f.committed.size()) > pending) {
    for (const AsyncCopy& c : f.committed.front()) {
      std::memcpy(c.dst, c.src, c.bytes);
      std::memset(static_cast<char*>(c.dst) + c.bytes, 0, c.total - c.bytes);
    }
    f.committed.pop_front();
  }
}

// ---- the scheduler ----------------------------------------------------------------------
// An exception cannot unwind through the scheduler's context switch: a fiber's is kept
// here and rethrown by the scheduler (the block's other fibers are abandoned).
inline std::exception_ptr error;

inline void fiber_main() {
  try {
    (*body)();
    Fiber& f = fibers[current];
    TORCH_CHECK(f.committed.empty() && f.open_group.empty(),
                "emulated kernel: a thread returned with cp.async copies it never waited for");
  } catch (...) {
    error = std::current_exception();
  }
  fibers[current].done = true;  // returning resumes uc_link, the scheduler
}

// After a round in which every fiber ran until it waits or returns: releases the warps
// whose 32 lanes wait at one collective; if none, the block barrier. Returns false when
// every fiber has returned.
inline bool release(int threads, dim3 b) {
  if (error) std::rethrow_exception(std::exchange(error, nullptr));
  bool released = false;
  for (int w = 0; w * kWarp < threads; ++w) {
    int at_warp = 0, done = 0;
    const char* name = nullptr;
    for (int t = w * kWarp; t < std::min(threads, (w + 1) * kWarp); ++t) {
      const Fiber& f = fibers[t];
      done += f.done;
      if (!f.done && f.wait == Wait::Warp) {
        TORCH_CHECK(name == nullptr || std::strcmp(name, f.collective) == 0,
                    "emulated kernel: lanes of warp ", w, " of block (", b.x, ", ", b.y, ", ",
                    b.z, ") wait at different warp collectives (", name, ", ", f.collective,
                    ")");
        name = f.collective;
        ++at_warp;
      }
    }
    if (at_warp == 0) continue;
    TORCH_CHECK(at_warp == kWarp, "emulated kernel: ", at_warp, " lanes of warp ", w,
                " of block (", b.x, ", ", b.y, ", ", b.z, ") wait at ", name, " while ",
                kWarp - at_warp - done, " wait elsewhere and ", done, " returned");
    for (int t = w * kWarp; t < (w + 1) * kWarp; ++t) fibers[t].wait = Wait::None;
    released = true;
  }
  if (released) return true;
  int finished = 0;
  for (int t = 0; t < threads; ++t) finished += fibers[t].done;
  if (finished == threads) return false;
  TORCH_CHECK(finished == 0, "emulated kernel: ", finished, " of ", threads,
              " threads of block (", b.x, ", ", b.y, ", ", b.z,
              ") returned while the others wait at __syncthreads");
  for (int t = 0; t < threads; ++t) fibers[t].wait = Wait::None;
  vote = votes;
  votes = 0;
  return true;
}

inline void run_grid(dim3 grid, dim3 block, size_t smem_bytes,
                     const std::function<void()>& kernel) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  TORCH_CHECK(threads % kWarp == 0, "emulated kernel: ", threads,
              " threads per block, not whole warps");
  constexpr size_t kStack = 256 * 1024;
  if (static_cast<int>(fibers.size()) < threads) fibers.resize(threads);
  exchanges.assign(threads / kWarp, Exchange{});
  dynamic_smem.assign(smem_bytes, 0xFF);
  gridDim = grid;
  blockDim = block;
  body = &kernel;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        votes = 0;
        std::fill(dynamic_smem.begin(), dynamic_smem.end(), 0xFF);
        for (int t = 0; t < threads; ++t) {
          Fiber& f = fibers[t];
          f.stack.resize(kStack);
          f.done = false;
          f.wait = Wait::None;
          f.open_group.clear();
          f.committed.clear();
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.data();
          f.context.uc_stack.ss_size = f.stack.size();
          f.context.uc_link = &scheduler;
          makecontext(&f.context, fiber_main, 0);
        }
        do {
          for (int t = 0; t < threads; ++t) {
            Fiber& f = fibers[t];
            if (f.done || f.wait != Wait::None) continue;
            current = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            swapcontext(&scheduler, &f.context);
          }
        } while (release(threads, blockIdx));
      }
}

}  // namespace emu

#define TORCHCONV3D_EMULATED 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() emu::syncthreads()
#define __syncthreads_or(predicate) emu::syncthreads_or(predicate)
