// multilevel_pool on CUDA: one launch of the single-level kernel per level over all boxes, each
// pooling only the boxes of its level (RoiCall::pools), into one output; the backward scatters each
// level's boxes into that level's gradient the same way. No data-dependent shapes and no host sync:
// box values are not checked (a bad box, or a level out of range, gives NaN and no gradient), so a
// call is capturable in a CUDA graph.
#include <array>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../../common/cuda/cuda_common.cuh"
#include "../roi_align/cuda_kernels.h"
#include "../roi_pool/cuda_kernels.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

std::tuple<Tensor, Tensor> multilevel_pool_cuda(std::vector<Tensor> features, const Tensor& rois, const Tensor& levels,
                                                std::vector<double> spatial_scales, int64_t pooled_height,
                                                int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                std::string mode) {
  MultilevelCall call = multilevel_forward_call(features, rois, levels, spatial_scales, pooled_height, pooled_width,
                                                sampling_ratio, aligned, mode, /*check_values=*/false);
  const Tensor& like = features[0];
  const DeviceGuard device_guard(like);
  const AlignParams& first = call.levels[0];
  const std::array<int64_t, 4> sizes{first.num_rois, first.channels, pooled_height, pooled_width};
  // NaN until a level writes it: a box whose level is out of range stays NaN (argmax -1).
  Tensor output = fill(empty_4d(sizes, like.scalar_type(), like, first.nhwc), std::numeric_limits<double>::quiet_NaN());
  Tensor argmax = call.mode == MultilevelMode::kAlignAvg ? empty_1d(0, ScalarType::Int, like)
                                                         : fill(empty_4d(sizes, ScalarType::Int, like, first.nhwc), -1);
  if (output.numel() == 0) return {output, argmax};
  const Tensor r = make_contiguous(rois);
  const Tensor lv = make_contiguous(levels);
  const cudaStream_t stream = current_stream(like);
  for (size_t l = 0; l < features.size(); ++l) {
    AlignParams& a = call.levels[l];
    a.roi_levels = lv.const_data_ptr<int64_t>();
    a.level = static_cast<int64_t>(l);
    // A level whose layout differs from the output's (a 1 x 1 map is both) is read as the output is laid out.
    const Tensor map = a.nhwc == first.nhwc ? features[l] : make_contiguous(features[l], first.nhwc);
    a.nhwc = first.nhwc;
    if (call.mode == MultilevelMode::kPool) {
      roi_pool_forward_into(map, r, a, output, argmax, stream);
    } else {
      roi_align_forward_into(map, r, a, output, argmax, stream);
    }
  }
  return {output, argmax};
}

std::vector<Tensor> multilevel_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                                  const Tensor& argmax, std::vector<double> spatial_scales,
                                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                                  int64_t channels, std::vector<int64_t> heights,
                                                  std::vector<int64_t> widths, int64_t sampling_ratio, bool aligned,
                                                  std::string mode, bool deterministic) {
  MultilevelCall call =
      multilevel_backward_call(grad, rois, levels, argmax, spatial_scales, pooled_height, pooled_width, batch_size,
                               channels, heights, widths, sampling_ratio, aligned, mode, /*check_values=*/false);
  const DeviceGuard device_guard(grad);
  const Tensor r = make_contiguous(rois);
  const Tensor lv = make_contiguous(levels);
  const cudaStream_t stream = current_stream(grad);
  std::vector<Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    AlignParams& a = call.levels[l];
    a.roi_levels = lv.const_data_ptr<int64_t>();
    a.level = static_cast<int64_t>(l);
    const bool no_input = batch_size == 0 || channels == 0 || heights[l] == 0 || widths[l] == 0;
    if (grad.numel() == 0 || no_input) {
      grads.push_back(zero(empty_4d({batch_size, channels, heights[l], widths[l]}, grad.scalar_type(), grad, a.nhwc)));
    } else if (call.mode == MultilevelMode::kPool) {
      grads.push_back(roi_pool_backward_scatter(grad, r, argmax, a, deterministic, stream));
    } else {
      grads.push_back(roi_align_backward_scatter(grad, r, argmax, a, deterministic, stream));
    }
  }
  return grads;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("multilevel_pool", TORCH_BOX(&multilevel_pool_cuda));
  m.impl("_multilevel_pool_backward", TORCH_BOX(&multilevel_pool_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
