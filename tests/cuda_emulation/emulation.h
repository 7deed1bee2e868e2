// Runs CUDA kernels on the CPU, so CI (which has no GPU) executes the real kernel source of
// csrc/cuda/conv3d_kernels.cuh. Include after the ATen/c10 headers and before that file.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; __syncthreads
// switches back to the scheduler, which resumes the next fiber. Blocks run one after
// another, so a kernel's __shared__ arrays can simply be function statics. The scheduler
// also checks the barrier discipline: after each round either every fiber of the block
// waits at a barrier or every fiber has returned; anything else (a thread skipping a
// __syncthreads that others reach) is an error, as it would be a hang or a race on a GPU.
#pragma once

#include <c10/util/Exception.h>

#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
};

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline int current = 0;
inline const std::function<void()>* body = nullptr;

inline void syncthreads() { swapcontext(&fibers[current].context, &scheduler); }

// __syncthreads_or: predicates of the round are OR-ed into `votes`; once every fiber waits,
// the scheduler publishes them as `vote`, which each fiber reads as it resumes.
inline int votes = 0, vote = 0;
inline int syncthreads_or(int predicate) {
  votes |= predicate != 0;
  syncthreads();
  return vote;
}

inline void fiber_main() {
  (*body)();
  fibers[current].done = true;  // returning resumes uc_link, the scheduler
}

inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  constexpr size_t kStack = 256 * 1024;
  if (static_cast<int>(fibers.size()) < threads) fibers.resize(threads);
  gridDim = grid;
  blockDim = block;
  body = &kernel;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        votes = 0;
        for (int t = 0; t < threads; ++t) {
          Fiber& f = fibers[t];
          f.stack.resize(kStack);
          f.done = false;
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.data();
          f.context.uc_stack.ss_size = f.stack.size();
          f.context.uc_link = &scheduler;
          makecontext(&f.context, fiber_main, 0);
        }
        for (;;) {
          int finished = 0;
          for (int t = 0; t < threads; ++t) {
            current = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            if (!fibers[t].done) swapcontext(&scheduler, &fibers[t].context);
            finished += fibers[t].done;
          }
          if (finished == threads) break;
          vote = votes;
          votes = 0;
          TORCH_CHECK(finished == 0, "emulated kernel: ", finished, " of ", threads,
                      " threads of block (", bx, ", ", by, ", ", bz,
                      ") returned while the others wait at __syncthreads");
        }
      }
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() emu::syncthreads()
#define __syncthreads_or(predicate) emu::syncthreads_or(predicate)
