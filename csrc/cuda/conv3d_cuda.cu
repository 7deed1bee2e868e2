// The CUDA kernel table: device guard, current stream, checked launches around the kernels
// of conv3d_kernels.cuh.
//
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cuBLAS and cuSPARSE headers,
// which a plain toolkit (and CI's compile check) may not have.
#include "conv3d_kernels.cuh"

#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <limits>

namespace torchconv3d {
namespace gpu {
namespace {

struct CudaEnv {
  cudaStream_t stream;
  int64_t sm_count;
  int64_t max_grid_x = std::numeric_limits<int32_t>::max();
  int64_t max_grid_y = 65535;
  int64_t max_blocks;  // 1-D grids: enough resident blocks to fill the GPU several times

  bool allow_tf32;

  template <typename... Params, typename... Args>
  void launch(void (*kernel)(Params...), dim3 grid, dim3 block, const Args&... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Kernels with more than the default 48 KB of dynamic shared memory must opt in.
  template <typename... Params, typename... Args>
  void launch_dynamic(void (*kernel)(Params...), dim3 grid, dim3 block, int shared_bytes,
                      const Args&... args) const {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        shared_bytes));
    kernel<<<grid, block, shared_bytes, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

int64_t sm_count(c10::DeviceIndex device) {
  static std::array<int, 64> cache{};  // 0 = not asked yet
  TORCH_CHECK(device >= 0 && device < static_cast<int>(cache.size()),
              "torchconv3d: CUDA device index ", static_cast<int>(device), " out of range");
  if (cache[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = n;
  }
  return cache[device];
}

CudaEnv env_for(const at::Tensor& t) {
  CudaEnv env;
  env.stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
  env.sm_count = sm_count(t.device().index());
  env.max_blocks = env.sm_count * 32;
  env.allow_tf32 = at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
  return env;
}

void forward_cuda(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::Tensor& output) {
  const c10::cuda::CUDAGuard guard(input.device());
  forward_pass(env_for(input), g, input, weight, bias, output);
}

void grad_input_cuda(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                     at::Tensor& grad_input) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  grad_input_pass(env_for(grad_output), g, grad_output, weight, grad_input);
}

void grad_weight_cuda(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                      at::Tensor& grad_weight) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  grad_weight_pass(env_for(grad_output), g, grad_output, input, grad_weight);
}

void grad_bias_cuda(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_bias) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  grad_bias_pass(env_for(grad_output), g, grad_output, grad_bias);
}

}  // namespace
}  // namespace gpu

const DeviceKernels& cuda_kernels() {
  static const DeviceKernels k{&gpu::forward_cuda, &gpu::grad_input_cuda,
                               &gpu::grad_weight_cuda, &gpu::grad_bias_cuda};
  return k;
}

}  // namespace torchconv3d
