// CPU kernel entry points. All take checked, batched (5-D) tensors with any strides and
// write preallocated outputs.
#pragma once

#include "../conv3d.h"

#include <ATen/Dispatch.h>

#define TC3D_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

namespace torchconv3d::cpu {

// Shifted-plane convolution for every shape and pass (forward_planar.cpp,
// grad_input_planar.cpp, grad_weight_planar.cpp; plans in plan.h).
void tiled_forward(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                   const at::Tensor& bias, at::Tensor& output);
void tiled_grad_input(const Geometry& g, const at::Tensor& grad_output,
                      const at::Tensor& weight, at::Tensor& grad_input);
void tiled_grad_weight(const Geometry& g, const at::Tensor& grad_output,
                       const at::Tensor& input, at::Tensor& grad_weight);

// The forward with channels innermost (forward_channels_last.cpp), for input and output
// with channel stride 1: which kernel takes the layer (None where the planar kernels do
// better), and the forward itself, false (nothing done) for None.
enum class ChannelsLastForward { None, Depthwise, Dense };
ChannelsLastForward channels_last_forward(const Geometry& g, const at::Tensor& input,
                                          const at::Tensor& output);
bool forward_channels_last(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output);

// The forward by Winograd's F(m, 3) (forward_winograd.cpp) for float32 and bfloat16 layers
// whose dimensions have 3 taps at stride 1 or 1 tap (planar tensors through channels_last
// copies); false (output unspecified) where it does not apply or met a value that is not
// finite: the direct kernels then compute the layer.
bool forward_winograd(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                      const at::Tensor& bias, at::Tensor& output);

// Whether a planar float32 grad_input runs as the Winograd forward on channels_last copies
// of grad_output and grad_input (stride-1 layers the forward's rule takes; bfloat16 gets
// there through through_channels_last or its planar phase forward).
bool grad_input_through_winograd(const Geometry& g, const at::Tensor& grad_output);

// grad_input as forward convolutions of grad_output, one per stride phase of the input
// (grad_input_phases.cpp), where those are faster (channels innermost, bfloat16 pairs);
// false (nothing done) elsewhere.
bool grad_input_by_phases(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input);

// grad_weight by Winograd's F(m, 3) (grad_weight_winograd.cpp) for the layers the Winograd
// forward takes; false (grad_weight unspecified) where it does not apply or met a value
// that is not finite.
bool grad_weight_winograd(const Geometry& g, const at::Tensor& grad_output,
                          const at::Tensor& input, at::Tensor& grad_weight);

// grad_weight with the input's channels innermost (grad_weight_channels_last.cpp), for an
// input with channel stride 1; false (nothing done) where the planar pass does better.
bool grad_weight_channels_last(const Geometry& g, const at::Tensor& grad_output,
                               const at::Tensor& input, at::Tensor& grad_weight);

// Whether a bfloat16 pass of planar tensors runs on channels_last copies of them
// (kernels.cpp): t is the pass's planar operand (input or grad_output).
bool through_channels_last(const Geometry& g, const at::Tensor& t);

// Sum of grad_output over batch and space per channel (kernels.cpp).
void grad_bias(const Geometry& g, const at::Tensor& grad_output, at::Tensor& grad_bias);

}  // namespace torchconv3d::cpu
