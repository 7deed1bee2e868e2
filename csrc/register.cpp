// Operator schemas and their registration per dispatch key. The operators themselves
// are run_forward / run_backward (ops.cpp) with the kernel table of the tensors' device.
#include "conv3d.h"
#include "cpu/microkernel.h"
#include "cpu/plan.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <Python.h>
#include <torch/library.h>

namespace torchconv3d {
namespace {

const DeviceKernels& kernels_for(const at::Device& device) {
#ifdef WITH_CUDA
  if (device.is_cuda()) return cuda_kernels();
#endif
  TORCH_CHECK(device.is_cpu(), "torchconv3d was built without kernels for device ", device);
  return cpu_kernels();
}

at::Tensor conv3d_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view padding_mode) {
  return run_forward(kernels_for(input.device()), input, weight, bias, stride, padding,
                     dilation, groups, padding_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
    int64_t groups, c10::string_view padding_mode, const c10::List<bool>& output_mask) {
  return run_backward(kernels_for(input.device()), grad_output, input, weight, stride,
                      padding, dilation, groups, padding_mode, check_output_mask(output_mask));
}

at::Tensor conv3d_stream_forward(const at::Tensor& head, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t groups,
                                 c10::string_view padding_mode) {
  return run_stream_forward(kernels_for(input.device()), head, input, weight, bias, stride,
                            padding, dilation, groups, padding_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3d_stream_backward(
    const at::Tensor& grad_output, const at::Tensor& head, const at::Tensor& input,
    const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode,
    const c10::List<bool>& output_mask) {
  return run_stream_backward(kernels_for(input.device()), grad_output, head, input, weight,
                             stride, padding, dilation, groups, padding_mode,
                             check_output_mask(output_mask));
}

at::Tensor conv_transpose3d_forward(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef output_padding, c10::IntArrayRef dilation,
                                    int64_t groups) {
  return run_transpose_forward(kernels_for(input.device()), input, weight, bias, stride,
                               padding, output_padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose3d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef output_padding,
    c10::IntArrayRef dilation, int64_t groups, const c10::List<bool>& output_mask) {
  return run_transpose_backward(kernels_for(input.device()), grad_output, input, weight,
                                stride, padding, output_padding, dilation, groups,
                                check_output_mask(output_mask));
}

// Under autocast a forward operator runs in the autocast dtype, as torch's conv3d does: called
// again below the autocast keys with every tensor argument cast (at::autocast::cached_cast
// passes the others through). The backward needs no rule: it sees the tensors the forward
// saved. Name: the operator's name in the torchconv3d namespace; Signature: its kernel's.
template <c10::DeviceType Device, const char* Name, typename Signature>
struct InAutocastDtype;
template <c10::DeviceType Device, const char* Name, typename... Args>
struct InAutocastDtype<Device, Name, at::Tensor(Args...)> {
  static at::Tensor call(Args... args) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto dtype = at::autocast::get_autocast_dtype(Device);
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow((std::string("torchconv3d::") + Name).c_str(), "")
                         .typed<at::Tensor(Args...)>();
    return op.call(at::autocast::cached_cast(dtype, args, Device)...);
  }
};

constexpr char kConv3dForward[] = "conv3d_forward";
constexpr char kConv3dStreamForward[] = "conv3d_stream_forward";
constexpr char kConvTranspose3dForward[] = "conv_transpose3d_forward";

template <c10::DeviceType Device>
void register_autocast(torch::Library& lib) {
  lib.impl(kConv3dForward,
           &InAutocastDtype<Device, kConv3dForward, decltype(conv3d_forward)>::call);
  lib.impl(kConv3dStreamForward,
           &InAutocastDtype<Device, kConv3dStreamForward, decltype(conv3d_stream_forward)>::call);
  lib.impl(kConvTranspose3dForward,
           &InAutocastDtype<Device, kConvTranspose3dForward,
                            decltype(conv_transpose3d_forward)>::call);
}

// Registers the operators, once per process. Two copies of this library can meet in one
// process (the JIT build and the installed extension, or a second torch.ops.load_library);
// the second finds the namespace taken and registers nothing, where TORCH_LIBRARY's static
// registration would abort the process. Its PyInit then raises ImportError.
bool register_operators() {
  if (c10::Dispatcher::singleton().findSchema({"torchconv3d::conv3d_forward", ""}).has_value())
    return false;
  using torch::Library;
  static Library def(Library::DEF, "torchconv3d", std::nullopt, __FILE__, __LINE__);
  def.def(
      "conv3d_forward(Tensor input, Tensor weight, Tensor? bias, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode) -> Tensor");
  def.def(
      "conv3d_backward(Tensor grad_output, Tensor input, Tensor weight, int[3] stride, "
      "int[6] padding, int[3] dilation, int groups, str padding_mode, bool[] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // conv3d over torch.cat([head, input], 2), never built (a streaming cache and its chunk,
  // torchconv3d/streaming.py); the depth padding must be (0, 0). The backward's first result
  // is the gradient of that whole volume, head's frames first.
  def.def(
      "conv3d_stream_forward(Tensor head, Tensor input, Tensor weight, Tensor? bias, "
      "int[3] stride, int[6] padding, int[3] dilation, int groups, str padding_mode) -> Tensor");
  def.def(
      "conv3d_stream_backward(Tensor grad_output, Tensor head, Tensor input, Tensor weight, "
      "int[3] stride, int[6] padding, int[3] dilation, int groups, str padding_mode, "
      "bool[] output_mask) -> (Tensor, Tensor, Tensor)");
  // nn.ConvTranspose3d: padding (symmetric, as torch's) and output_padding per dimension.
  def.def(
      "conv_transpose3d_forward(Tensor input, Tensor weight, Tensor? bias, int[3] stride, "
      "int[3] padding, int[3] output_padding, int[3] dilation, int groups) -> Tensor");
  def.def(
      "conv_transpose3d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "int[3] stride, int[3] padding, int[3] output_padding, int[3] dilation, int groups, "
      "bool[] output_mask) -> (Tensor, Tensor, Tensor)");
  // Which build of the CPU micro-kernels this process runs (microkernel.h, cpu_isa).
  def.def("cpu_isa() -> str", [] { return std::string(cpu::cpu_isa()); });
  // The plan a planar CPU pass makes for these arguments on the current thread count
  // (cpu/plan.h), as "key=value ...": what tests read to check tiles and workspace.
  def.def(
      "cpu_plan(str which, Tensor input, Tensor weight, int[3] stride, int[6] padding, "
      "int[3] dilation, int groups, str padding_mode) -> str",
      [](c10::string_view pass, const at::Tensor& input, const at::Tensor& weight,
         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
         int64_t groups, c10::string_view padding_mode) {
        const Geometry g =
            kernel_geometry(input, weight, stride, padding, dilation, groups, padding_mode);
        return cpu::describe_plan(pass, g, input.scalar_type());
      });

  static Library cpu(Library::IMPL, "torchconv3d", c10::DispatchKey::CPU, __FILE__, __LINE__);
  cpu.impl("conv3d_forward", &conv3d_forward);
  cpu.impl("conv3d_backward", &conv3d_backward);
  cpu.impl("conv3d_stream_forward", &conv3d_stream_forward);
  cpu.impl("conv3d_stream_backward", &conv3d_stream_backward);
  cpu.impl("conv_transpose3d_forward", &conv_transpose3d_forward);
  cpu.impl("conv_transpose3d_backward", &conv_transpose3d_backward);
#ifdef WITH_CUDA
  static Library cuda(Library::IMPL, "torchconv3d", c10::DispatchKey::CUDA, __FILE__,
                      __LINE__);
  cuda.impl("conv3d_forward", &conv3d_forward);
  cuda.impl("conv3d_backward", &conv3d_backward);
  cuda.impl("conv3d_stream_forward", &conv3d_stream_forward);
  cuda.impl("conv3d_stream_backward", &conv3d_stream_backward);
  cuda.impl("conv_transpose3d_forward", &conv_transpose3d_forward);
  cuda.impl("conv_transpose3d_backward", &conv_transpose3d_backward);
#endif
  static Library autocast_cpu(Library::IMPL, "torchconv3d", c10::DispatchKey::AutocastCPU,
                              __FILE__, __LINE__);
  register_autocast<c10::DeviceType::CPU>(autocast_cpu);
  static Library autocast_cuda(Library::IMPL, "torchconv3d", c10::DispatchKey::AutocastCUDA,
                               __FILE__, __LINE__);
  register_autocast<c10::DeviceType::CUDA>(autocast_cuda);
  return true;
}

// Runs when the library is loaded, as TORCH_LIBRARY's registration did.
const bool registered = register_operators();

}  // namespace
}  // namespace torchconv3d

// Lets `import torchconv3d._C` load the library (and with it the registrations above)
// when it is built by setup.py. The JIT build loads it with torch.ops.load_library.
extern "C" PyObject* PyInit__C(void) {
  if (!torchconv3d::registered) {
    PyErr_SetString(PyExc_ImportError,
                    "torchconv3d: its operators are already registered by another copy of "
                    "the library in this process (the JIT build and the installed extension "
                    "cannot both be loaded)");
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
