// The one argument checker. Every operator and every device runs it before any kernel,
// so a bad call fails with a message naming what it saw and nothing is launched.
// Messages follow F.conv3d's wording where F.conv3d rejects the same call, so code that
// matched torch's errors keeps working.
#include "conv3d.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <vector>

namespace torchconv3d {

namespace {

std::string dims_str(const std::array<int64_t, 3>& a) {
  std::ostringstream s;
  s << "(" << a[0] << " x " << a[1] << " x " << a[2] << ")";
  return s.str();
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// torch's own cap on padding. Beyond it, every size sum and product below is checked for
// int64 overflow where it is formed (stride only ever divides).
constexpr int64_t kMaxPadding = (int64_t(1) << 62) - 1;

// Ranks, dtypes, devices and layouts: the same rules for every operator.
void check_tensor_kinds(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const char* op,
                        const char* weight_dims) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5,
              "Expected 4D (unbatched) or 5D (batched) input to ", op,
              ", but got input of size: ", input.sizes());
  TORCH_CHECK(weight.dim() == 5,
              "Expected 5D weight ", weight_dims, ", but got weight of size ",
              weight.sizes());
  // Mismatched dtypes before unsupported ones: an integer input with a float bias gets
  // F.conv3d's "should be the same", as PyTorch's own error_inputs expect.
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "Input type (",
              input.scalar_type(), ") and weight type (", weight.scalar_type(),
              ") should be the same");
  TORCH_CHECK(input.device() == weight.device(),
              "Expected input and weight on the same device, but got input on ",
              input.device(), " and weight on ", weight.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(input.scalar_type() == bias->scalar_type(), "Input type (",
                input.scalar_type(), ") and bias type (", bias->scalar_type(),
                ") should be the same");
    TORCH_CHECK(input.device() == bias->device(),
                "Expected input and bias on the same device, but got input on ", input.device(),
                " and bias on ", bias->device());
  }
  TORCH_CHECK(is_supported_dtype(input.scalar_type()),
              "torchconv3d supports float32, float64, bfloat16 and float16 tensors (not "
              "integer or complex ones), but got input of dtype ", input.scalar_type());
  for (const at::Tensor* t : {&input, &weight}) {
    TORCH_CHECK(t->layout() == at::kStrided, "torchconv3d needs strided (dense) tensors, got ",
                t->layout());
  }
}

// grad_output must be what the forward returned for these arguments.
void check_grad_output(const at::Tensor& go, const at::Tensor& input,
                       const std::vector<int64_t>& expected) {
  TORCH_CHECK(go.sizes() == c10::IntArrayRef(expected), "Expected grad_output of size ",
              c10::IntArrayRef(expected), " (the output of this convolution), but got ",
              go.sizes());
  TORCH_CHECK(go.scalar_type() == input.scalar_type(), "grad_output type (", go.scalar_type(),
              ") and input type (", input.scalar_type(), ") should be the same");
  TORCH_CHECK(go.device() == input.device(),
              "Expected grad_output and input on the same device, but got grad_output on ",
              go.device(), " and input on ", input.device());
}


// Dimension i's stride and dilation, as both convolutions check them (F.conv3d's wording).
void check_stride_dilation(c10::IntArrayRef stride, c10::IntArrayRef dilation, int i) {
  TORCH_CHECK(stride[i] > 0, "non-positive stride is not supported, got stride=", stride);
  TORCH_CHECK(dilation[i] > 0, "dilation should be greater than zero, but got dilation=",
              dilation);
}

// The weight's dimension 0 (conv3d: output channels; transposed: input channels) must
// split into the groups.
void check_weight_groups(const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.size(0) >= groups, "Given groups=", groups,
              ", expected weight to be at least ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(weight.size(0) % groups == 0, "Given groups=", groups,
              ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
}

}  // namespace

PadModes parse_padding_mode(std::string_view mode) {
  const auto one = [&](std::string_view name, PadMode& out) {
    if (name == "zeros") return out = PadMode::Zeros, true;
    if (name == "reflect") return out = PadMode::Reflect, true;
    if (name == "replicate") return out = PadMode::Replicate, true;
    if (name == "circular") return out = PadMode::Circular, true;
    return false;
  };
  PadModes modes{};
  bool ok = false;
  const size_t c1 = mode.find(','), c2 = c1 == mode.npos ? c1 : mode.find(',', c1 + 1);
  if (c1 == mode.npos) {
    ok = one(mode, modes[0]);
    modes[1] = modes[2] = modes[0];
  } else if (c2 != mode.npos && mode.find(',', c2 + 1) == mode.npos) {
    ok = one(mode.substr(0, c1), modes[0]) && one(mode.substr(c1 + 1, c2 - c1 - 1), modes[1]) &&
         one(mode.substr(c2 + 1), modes[2]);
  }
  TORCH_CHECK_VALUE(ok,
                    "padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', "
                    "or three of them (depth, height, width) joined by commas, but got "
                    "padding_mode='", std::string(mode), "'");
  return modes;
}

void normalise(Geometry& g) {
  for (int i = 0; i < 3; ++i) {
    if (g.out[i] == 1) g.stride[i] = 1;
    if (g.kernel[i] == 1) g.dilation[i] = 1;
  }
}

void check_stream_head(const at::Tensor& head, const at::Tensor& input,
                       c10::IntArrayRef padding) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5,
              "Expected 4D (unbatched) or 5D (batched) input to conv3d stream, but got input "
              "of size: ", input.sizes());
  const auto other_than_depth = [](const at::Tensor& t) {  // (t has 4 or 5 dimensions)
    std::vector<int64_t> s = t.sizes().vec();
    s.erase(s.end() - 3);
    return s;
  };
  TORCH_CHECK_VALUE(head.dim() == input.dim() && other_than_depth(head) == other_than_depth(input),
                    "conv3d stream: head of size ", head.sizes(), " does not fit input of size ",
                    input.sizes(), ": they must differ only in depth (dimension ",
                    input.dim() - 3, ")");
  TORCH_CHECK_VALUE(head.scalar_type() == input.scalar_type() && head.device() == input.device(),
                    "conv3d stream: head (", head.scalar_type(), " on ", head.device(),
                    ") must match input (", input.scalar_type(), " on ", input.device(), ")");
  TORCH_CHECK_VALUE(padding.size() == 6 && padding[0] == 0 && padding[1] == 0,
                    "conv3d stream: the head stands for the depth padding, which must be "
                    "(0, 0), but got padding=", padding);
}

std::array<bool, 3> check_output_mask(const c10::List<bool>& output_mask) {
  if (output_mask.size() != 3) {
    std::ostringstream seen;  // printed as the Python list the caller passed
    for (size_t i = 0; i < output_mask.size(); ++i)
      seen << (i ? ", " : "") << (output_mask[i] ? "True" : "False");
    TORCH_CHECK(false,
                "expected output_mask to have 3 values (grad_input, grad_weight, grad_bias), "
                "but got output_mask=[", seen.str(), "]");
  }
  return {output_mask[0], output_mask[1], output_mask[2]};
}

Geometry check_conv3d_args(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& grad_output,
                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, int64_t groups,
                           std::string_view padding_mode) {
  Geometry g;
  g.mode = parse_padding_mode(padding_mode);

  // Scalar arguments first: they need no tensor.
  // (F.conv3d's wording; the schema's int[3] already turns a single int into three)
  TORCH_CHECK(stride.size() == 3,
              "expected stride to be a single integer value or a list of 3 values to match "
              "the convolution dimensions, but got stride=", stride);
  TORCH_CHECK(dilation.size() == 3,
              "expected dilation to be a single integer value or a list of 3 values to match "
              "the convolution dimensions, but got dilation=", dilation);
  TORCH_CHECK(padding.size() == 6,
              "expected padding to have 6 values (d_before, d_after, h_before, h_after, "
              "w_before, w_after), but got padding=", padding);
  TORCH_CHECK(groups > 0, "non-positive groups is not supported, got groups=", groups);
  for (int i = 0; i < 3; ++i) {
    check_stride_dilation(stride, dilation, i);
    TORCH_CHECK(padding[2 * i] >= 0 && padding[2 * i + 1] >= 0,
                "negative padding is not supported, got padding=", padding);
    TORCH_CHECK_VALUE(padding[2 * i] <= kMaxPadding && padding[2 * i + 1] <= kMaxPadding,
                      "padding must be at most 2^62 - 1, got padding=", padding);
    g.stride[i] = stride[i];
    g.dilation[i] = dilation[i];
    g.pad_before[i] = padding[2 * i];
    g.pad_after[i] = padding[2 * i + 1];
  }

  const bool has_bias = bias.has_value() && bias->defined();
  check_tensor_kinds(input, weight, bias, "conv3d",
                     "(out_channels, in_channels/groups, kD, kH, kW)");

  // Channels and groups.
  const bool batched = input.dim() == 5;
  g.batch = batched ? input.size(0) : 1;
  g.in_channels = input.size(batched ? 1 : 0);
  g.out_channels = weight.size(0);
  g.groups = groups;
  check_weight_groups(weight, groups);
  TORCH_CHECK(g.in_channels == weight.size(1) * groups, "Given groups=", groups,
              ", weight of size ", weight.sizes(), ", expected input",
              batched ? input.sizes() : input.unsqueeze(0).sizes(), " to have ",
              weight.size(1) * groups, " channels, but got ", g.in_channels,
              " channels instead");
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, "Given weight of size ",
                weight.sizes(), ", expected bias to be 1-dimensional with ", g.out_channels,
                " elements, but got bias of size ", bias->sizes(), " instead");
  }

  // Spatial sizes.
  std::array<int64_t, 3> padded{}, dilated_kernel{};
  for (int i = 0; i < 3; ++i) {
    g.in[i] = input.size(input.dim() - 3 + i);
    g.kernel[i] = weight.size(2 + i);
    TORCH_CHECK(g.kernel[i] > 0, "kernel size must be positive, but got weight of size ",
                weight.sizes());
    TORCH_CHECK_VALUE(!__builtin_add_overflow(g.in[i], g.pad_before[i], &padded[i]) &&
                          !__builtin_add_overflow(padded[i], g.pad_after[i], &padded[i]),
                      "padding=", padding, " with input of size ", input.sizes(),
                      " gives a padded size past 2^63 - 1");
    TORCH_CHECK_VALUE(
        !__builtin_mul_overflow(g.dilation[i], g.kernel[i] - 1, &dilated_kernel[i]) &&
            !__builtin_add_overflow(dilated_kernel[i], 1, &dilated_kernel[i]),
        "dilation=", dilation, " with kernel of size ", weight.sizes(),
        " gives a dilated kernel past 2^63 - 1");
  }
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(padded[i] >= dilated_kernel[i], "Calculated padded input size per channel: ",
                dims_str(padded), ". Kernel size: ", dims_str(dilated_kernel),
                ". Kernel size can't be greater than actual input size");
    g.out[i] = (padded[i] - dilated_kernel[i]) / g.stride[i] + 1;
  }
  // The output must be addressable: its element count fits int64.
  int64_t out_numel = g.batch;
  for (int64_t n : {g.out_channels, g.out[0], g.out[1], g.out[2]})
    TORCH_CHECK_VALUE(!__builtin_mul_overflow(out_numel, n, &out_numel),
                      "the output of size (", g.batch, ", ", g.out_channels, ", ", g.out[0],
                      ", ", g.out[1], ", ", g.out[2], ") has more than 2^63 - 1 elements");
  normalise(g);

  // nn.Conv3d's rule: an empty input is fine only through its batch or channels (with
  // padding, an empty depth/height/width would otherwise give a non-empty output).
  TORCH_CHECK(g.batch == 0 || g.in_channels == 0 ||
                  (g.in[0] > 0 && g.in[1] > 0 && g.in[2] > 0),
              "Only zero batch or zero channel inputs are supported, but got input of size ",
              input.sizes(), " (an empty depth, height or width)");

  // The padding modes read real input elements, so the border must exist (what F.pad
  // demands for the same padding).
  static const char* dim_names[3] = {"depth", "height", "width"};
  for (int i = 0; i < 3; ++i) {
    const int64_t before = g.pad_before[i], after = g.pad_after[i], n = g.in[i];
    if (before == 0 && after == 0) continue;
    switch (g.mode[i]) {
      case PadMode::Zeros:
        break;
      case PadMode::Reflect:
        TORCH_CHECK(before < n && after < n,
                    "reflect padding must be smaller than the input, but got padding (", before,
                    ", ", after, ") for the ", dim_names[i], " of input ", input.sizes());
        break;
      case PadMode::Replicate:
        TORCH_CHECK(n > 0, "replicate padding needs a non-empty ", dim_names[i],
                    ", but got input ", input.sizes());
        break;
      case PadMode::Circular:
        TORCH_CHECK(before <= n && after <= n,
                    "circular padding wraps around more than once: padding (", before, ", ",
                    after, ") for the ", dim_names[i], " of input ", input.sizes());
        break;
    }
  }

  if (grad_output.has_value() && grad_output->defined()) {
    std::vector<int64_t> expected{g.batch, g.out_channels, g.out[0], g.out[1], g.out[2]};
    if (!batched) expected.erase(expected.begin());
    check_grad_output(*grad_output, input, expected);
  }
  return g;
}

TransposeGeometry check_conv_transpose3d_args(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& grad_output, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef output_padding, c10::IntArrayRef dilation,
    int64_t groups) {
  TransposeGeometry t;
  Geometry& g = t.conv;
  g.mode = {};  // zeros in every dimension (nn.ConvTranspose3d has no other mode)

  // (F.conv_transpose3d's wording throughout)
  const std::pair<const char*, c10::IntArrayRef> lists[] = {
      {"stride", stride}, {"padding", padding}, {"output_padding", output_padding},
      {"dilation", dilation}};
  for (const auto& [name, values] : lists) {
    TORCH_CHECK(values.size() == 3, "expected ", name,
                " to be a single integer value or a list of 3 values to match the "
                "convolution dimensions, but got ", name, "=", values);
  }
  TORCH_CHECK(groups > 0, "non-positive groups is not supported, got groups=", groups);
  for (int i = 0; i < 3; ++i) {
    check_stride_dilation(stride, dilation, i);
    TORCH_CHECK(padding[i] >= 0, "negative padding is not supported, got padding=", padding);
    TORCH_CHECK(output_padding[i] >= 0,
                "negative output_padding is not supported, got output_padding=",
                output_padding);
    TORCH_CHECK_VALUE(padding[i] <= kMaxPadding,
                      "padding must be at most 2^62 - 1, got padding=", padding);
    // The extra rows must lie within one stride (or dilation) step: past it, a larger
    // input would give the same output size.
    TORCH_CHECK(output_padding[i] < stride[i] || output_padding[i] < dilation[i],
                "output padding must be smaller than either stride or dilation, but got "
                "output_padding=", output_padding, ", stride=", stride, ", dilation=", dilation);
  }

  check_tensor_kinds(input, weight, bias, "conv_transpose3d",
                     "(in_channels, out_channels/groups, kD, kH, kW)");

  const bool batched = input.dim() == 5;
  g.batch = batched ? input.size(0) : 1;
  const int64_t in_channels = input.size(batched ? 1 : 0);
  g.out_channels = weight.size(0);  // the convolution's output: the input's channels
  g.groups = groups;
  check_weight_groups(weight, groups);
  TORCH_CHECK(in_channels == weight.size(0), "Given transposed=1, weight of size ",
              weight.sizes(), ", expected input",
              batched ? input.sizes() : input.unsqueeze(0).sizes(), " to have ",
              weight.size(0), " channels, but got ", in_channels, " channels instead");
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(weight.size(1), groups, &g.in_channels),
                    "weight of size ", weight.sizes(), " with groups=", groups,
                    " gives more than 2^63 - 1 output channels");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.in_channels,
                "Given transposed=1, weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", g.in_channels,
                " elements, but got bias of size ", bias->sizes(), " instead");
  }

  std::array<int64_t, 3> in{};
  for (int i = 0; i < 3; ++i) {
    in[i] = input.size(input.dim() - 3 + i);
    g.kernel[i] = weight.size(2 + i);
    TORCH_CHECK(g.kernel[i] > 0, "kernel size must be positive, but got weight of size ",
                weight.sizes());
  }
  TORCH_CHECK(g.batch == 0 || in_channels == 0 || (in[0] > 0 && in[1] > 0 && in[2] > 0),
              "Only zero batch or zero channel inputs are supported, but got input of size ",
              input.sizes(), " (an empty depth, height or width)");
  // out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1,
  // formed in __int128 so that no intermediate wraps.
  std::array<__int128, 3> out{};
  for (int i = 0; i < 3; ++i) {
    out[i] = (static_cast<__int128>(in[i]) - 1) * stride[i] -
             2 * static_cast<__int128>(padding[i]) +
             static_cast<__int128>(dilation[i]) * (g.kernel[i] - 1) + output_padding[i] + 1;
    TORCH_CHECK_VALUE(out[i] <= std::numeric_limits<int64_t>::max(), "stride=", stride,
                      ", dilation=", dilation, " with input of size ", input.sizes(),
                      " and weight of size ", weight.sizes(),
                      " give an output size past 2^63 - 1");
  }
  TORCH_CHECK(out[0] > 0 && out[1] > 0 && out[2] > 0, "Given input size per channel: ",
              dims_str(in), ". Calculated output size per channel: (",
              static_cast<int64_t>(out[0]), " x ", static_cast<int64_t>(out[1]), " x ",
              static_cast<int64_t>(out[2]), "). Output size is too small");
  int64_t out_numel = g.batch;
  for (int64_t n : {g.in_channels, static_cast<int64_t>(out[0]), static_cast<int64_t>(out[1]),
                    static_cast<int64_t>(out[2])})
    TORCH_CHECK_VALUE(!__builtin_mul_overflow(out_numel, n, &out_numel),
                      "the output of size (", g.batch, ", ", g.in_channels, ", ",
                      static_cast<int64_t>(out[0]), ", ", static_cast<int64_t>(out[1]), ", ",
                      static_cast<int64_t>(out[2]), ") has more than 2^63 - 1 elements");

  // The convolution whose adjoint this is: padding p before and p - output_padding after,
  // where that is >= 0; where output_padding exceeds p, its last output_padding - p rows
  // are beyond every tap (zero) and conv.in stops before them (it may be empty: with
  // kernel 1, output_padding < dilation can leave every row beyond the one tap).
  for (int i = 0; i < 3; ++i) {
    t.out[i] = static_cast<int64_t>(out[i]);
    g.out[i] = in[i];
    g.stride[i] = stride[i];
    g.dilation[i] = dilation[i];
    g.pad_before[i] = padding[i];
    g.pad_after[i] = std::max<int64_t>(padding[i] - output_padding[i], 0);
    g.in[i] = std::max<int64_t>(t.out[i] - std::max<int64_t>(output_padding[i] - padding[i], 0), 0);
  }
  normalise(g);

  if (grad_output.has_value() && grad_output->defined()) {
    std::vector<int64_t> expected{g.batch, g.in_channels, t.out[0], t.out[1], t.out[2]};
    if (!batched) expected.erase(expected.begin());
    check_grad_output(*grad_output, input, expected);
  }
  return t;
}

}  // namespace torchconv3d
