// Mixed precision (torch.autocast) for roi_align and roi_pool.
//
// Behaviour, the same as torchvision's roi ops: inside an autocast region, a float16 or bfloat16
// input (and its boxes) is cast to float32, the op runs in float32 with autocast switched off for
// the nested call (so autograd records the float32 op and its float32 backward), and the pooled
// output is cast back to the input's dtype; argmax is int32 and returned as it is. float32 input is
// left as is (the result stays float32 whatever autocast's lower-precision dtype is), and float64 is
// never narrowed. Boxes of another floating dtype than the input are cast the same way, so under
// autocast a half input may come with float32 boxes. The backward ops get the same treatment for
// direct calls (autograd's own backward pass runs outside autocast and never reaches these).
//
// Why float32 rather than the autocast dtype: the box geometry loses visible accuracy in half
// precision (bfloat16 holds box coordinates above 256 px only to the nearest even pixel, above
// 512 px to the nearest multiple of 4), and the ops are memory-bound, so float32 costs little.
//
// AutocastCPU is always registered; AutocastCUDA only in builds that carry the CUDA kernels.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace roiops {
namespace {

using RoIAlignFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                                      int64_t, bool, std::string);
using RoIAlignBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, bool, std::string, bool);
using RoIPoolFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t);
using RoIPoolBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int64_t, bool);

// The lower-precision floating types autocast produces; float32 and float64 pass through.
at::Tensor to_float32(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  return dtype == at::kHalf || dtype == at::kBFloat16 ? t.to(at::kFloat) : t;
}

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

template <c10::DispatchKey kKey>
std::tuple<at::Tensor, at::Tensor> roi_align_autocast(const at::Tensor& input, const at::Tensor& rois,
                                                      double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                                      int64_t sampling_ratio, bool aligned, std::string pool_mode) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static const auto op = find_op<RoIAlignFn>("roiops::roi_align");
  auto result = op.call(to_float32(input), to_float32(rois), spatial_scale, pooled_height, pooled_width, sampling_ratio,
                        aligned, std::move(pool_mode));
  return {std::get<0>(result).to(input.scalar_type()), std::get<1>(result)};
}

template <c10::DispatchKey kKey>
at::Tensor roi_align_backward_autocast(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                       double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                       int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                       int64_t sampling_ratio, bool aligned, std::string pool_mode,
                                       bool deterministic) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static const auto op = find_op<RoIAlignBackwardFn>("roiops::_roi_align_backward");
  return op
      .call(to_float32(grad), to_float32(rois), argmax, spatial_scale, pooled_height, pooled_width, batch_size,
            channels, height, width, sampling_ratio, aligned, std::move(pool_mode), deterministic)
      .to(grad.scalar_type());
}

template <c10::DispatchKey kKey>
std::tuple<at::Tensor, at::Tensor> roi_pool_autocast(const at::Tensor& input, const at::Tensor& rois,
                                                     double spatial_scale, int64_t pooled_height,
                                                     int64_t pooled_width) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static const auto op = find_op<RoIPoolFn>("roiops::roi_pool");
  auto result = op.call(to_float32(input), to_float32(rois), spatial_scale, pooled_height, pooled_width);
  return {std::get<0>(result).to(input.scalar_type()), std::get<1>(result)};
}

template <c10::DispatchKey kKey>
at::Tensor roi_pool_backward_autocast(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                      double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                      int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                      bool deterministic) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static const auto op = find_op<RoIPoolBackwardFn>("roiops::_roi_pool_backward");
  return op
      .call(to_float32(grad), to_float32(rois), argmax, spatial_scale, pooled_height, pooled_width, batch_size,
            channels, height, width, deterministic)
      .to(grad.scalar_type());
}

template <c10::DispatchKey kKey>
void register_autocast(torch::Library& m) {
  m.impl("roi_align", TORCH_FN(roi_align_autocast<kKey>));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_autocast<kKey>));
  m.impl("roi_pool", TORCH_FN(roi_pool_autocast<kKey>));
  m.impl("_roi_pool_backward", TORCH_FN(roi_pool_backward_autocast<kKey>));
}

}  // namespace

TORCH_LIBRARY_IMPL(roiops, AutocastCPU, m) { register_autocast<c10::DispatchKey::AutocastCPU>(m); }

#ifdef ROIOPS_WITH_CUDA
TORCH_LIBRARY_IMPL(roiops, AutocastCUDA, m) { register_autocast<c10::DispatchKey::AutocastCUDA>(m); }
#endif

}  // namespace roiops
