// Quantized CPU input (per-tensor affine, e.g. torch.quint8), as torchvision's roi_align accepts it:
// the feature map is dequantized, pooled by the float32 CPU kernel, and the result quantized again
// with the input's scale, zero point and dtype. So the result equals
// quantize(roi_op(dequantize(input))) exactly, and is within one quantization step of pooling in
// the quantized domain. Boxes may be float (any floating dtype) or quantized (as torchvision wants them).
// argmax, an int32 tensor, is returned as the float kernel gives it; quantized tensors have no autograd.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/dequantize.h>
#include <ATen/ops/quantize_per_tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace roiops {
namespace {

using RoIAlignFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                                      int64_t, bool, std::string);
using RoIPoolFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t);

at::Tensor dequantized_input(const at::Tensor& input, const char* op_name) {
  TORCH_CHECK_TYPE(input.qscheme() == at::kPerTensorAffine, op_name,
                   ": a quantized input must be per-tensor affine (torch.per_tensor_affine), but got ",
                   c10::toString(input.qscheme()));
  return at::dequantize(input);
}

at::Tensor float_rois(const at::Tensor& rois) {
  return rois.is_quantized() ? at::dequantize(rois) : rois.to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> requantized(const std::tuple<at::Tensor, at::Tensor>& result,
                                               const at::Tensor& input) {
  return {at::quantize_per_tensor(std::get<0>(result), input.q_scale(), input.q_zero_point(), input.scalar_type()),
          std::get<1>(result)};
}

std::tuple<at::Tensor, at::Tensor> roi_align_quantized(const at::Tensor& input, const at::Tensor& rois,
                                                       double spatial_scale, int64_t pooled_height,
                                                       int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                       std::string pool_mode) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("roiops::roi_align", "").typed<RoIAlignFn>();
  return requantized(op.call(dequantized_input(input, "roi_align"), float_rois(rois), spatial_scale, pooled_height,
                             pooled_width, sampling_ratio, aligned, std::move(pool_mode)),
                     input);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_quantized(const at::Tensor& input, const at::Tensor& rois,
                                                      double spatial_scale, int64_t pooled_height,
                                                      int64_t pooled_width) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("roiops::roi_pool", "").typed<RoIPoolFn>();
  return requantized(
      op.call(dequantized_input(input, "roi_pool"), float_rois(rois), spatial_scale, pooled_height, pooled_width),
      input);
}

}  // namespace

TORCH_LIBRARY_IMPL(roiops, QuantizedCPU, m) {
  m.impl("roi_align", &roi_align_quantized);
  m.impl("roi_pool", &roi_pool_quantized);
}

}  // namespace roiops
