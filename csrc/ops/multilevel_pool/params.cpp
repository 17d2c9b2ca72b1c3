#include "params.h"

#include <cmath>

namespace roiops {
namespace {

constexpr const char* kOp = "multilevel_pool";
constexpr const char* kBackwardOp = "_multilevel_pool_backward";

MultilevelMode parse_mode(const std::string& mode, const char* op) {
  if (mode == "avg") return MultilevelMode::kAlignAvg;
  if (mode == "max") return MultilevelMode::kAlignMax;
  check(mode == "roi_pool", op, ": mode must be 'avg', 'max' (RoIAlign) or 'roi_pool', but got '", mode, "'");
  return MultilevelMode::kPool;
}

void check_levels(const Tensor& levels, const Tensor& rois, int64_t num_levels, bool check_values, const char* op) {
  check(num_levels > 0, op, ": features must hold at least one map, but got none");
  check(levels.dim() == 1 && levels.size(0) == rois.size(0) && levels.scalar_type() == ScalarType::Long, op,
        ": levels must be an int64 tensor [K] with one level per box (K = ", rois.size(0), "), but got ",
        format_dtype(levels.scalar_type()), " ", format_sizes(levels));
  check(levels.device() == rois.device(), op, ": levels must be on the device of boxes (", format_device(rois),
        "), but are on ", format_device(levels));
  if (!check_values) return;  // (CUDA: a box of another level is pooled by no call and gives NaN)
  const Tensor l = make_contiguous(levels);
  const int64_t* v = l.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < l.size(0); ++k) {
    check(v[k] >= 0 && v[k] < num_levels, op, ": the level of box ", k, " (levels[", k, "]) must be in [0, ",
          num_levels, "), but it is ", v[k]);
  }
}

void check_same(const Tensor& t, const Tensor& first, size_t l, const char* op) {
  check(t.size(0) == first.size(0) && t.size(1) == first.size(1), op,
        ": every map must have the batch and channels of ", "features[0] ", format_sizes(first), ", but features[", l,
        "] is ", format_sizes(t));
  check(t.scalar_type() == first.scalar_type(), op, ": every map must have the dtype of features[0] (",
        format_dtype(first.scalar_type()), "), but features[", l, "] is ", format_dtype(t.scalar_type()));
  check(t.device() == first.device(), op, ": every map must be on the device of features[0] (", format_device(first),
        "), but features[", l, "] is on ", format_device(t));
}

AlignParams level_params(const RoiCall& call, int64_t sampling_ratio, bool aligned, MultilevelMode mode,
                         const char* op) {
  return align_params(call, sampling_ratio, aligned, mode == MultilevelMode::kAlignMax ? "max" : "avg", op);
}

}  // namespace

const char* align_mode_name(MultilevelMode mode) { return mode == MultilevelMode::kAlignMax ? "max" : "avg"; }

MultilevelCall multilevel_forward_call(const std::vector<Tensor>& features, const Tensor& rois, const Tensor& levels,
                                       const std::vector<double>& spatial_scales, int64_t pooled_height,
                                       int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                       const std::string& mode, bool check_values) {
  MultilevelCall call{parse_mode(mode, kOp), {}};
  check(spatial_scales.size() == features.size(), kOp, ": spatial_scales must hold one scale per map (",
        features.size(), "), but holds ", spatial_scales.size());
  check_levels(levels, rois, static_cast<int64_t>(features.size()), check_values, kOp);
  for (size_t l = 0; l < features.size(); ++l) {
    // (Box values are read once, with the first level.)
    const RoiCall one =
        forward_call(features[l], rois, spatial_scales[l], pooled_height, pooled_width, kOp, check_values && l == 0);
    check_same(features[l], features[0], l, kOp);
    call.levels.push_back(level_params(one, sampling_ratio, aligned, call.mode, kOp));
  }
  return call;
}

MultilevelCall multilevel_backward_call(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                        const Tensor& argmax, const std::vector<double>& spatial_scales,
                                        int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                        int64_t channels, const std::vector<int64_t>& heights,
                                        const std::vector<int64_t>& widths, int64_t sampling_ratio, bool aligned,
                                        const std::string& mode, bool check_values) {
  MultilevelCall call{parse_mode(mode, kBackwardOp), {}};
  check(spatial_scales.size() == heights.size() && widths.size() == heights.size(), kBackwardOp,
        ": spatial_scales, heights and widths must hold one entry per map, but hold ", spatial_scales.size(), ", ",
        heights.size(), " and ", widths.size());
  check_levels(levels, rois, static_cast<int64_t>(heights.size()), check_values, kBackwardOp);
  if (call.mode != MultilevelMode::kAlignAvg) check_argmax(argmax, grad, kBackwardOp);
  for (size_t l = 0; l < heights.size(); ++l) {
    const RoiCall one = backward_call(grad, rois, spatial_scales[l], pooled_height, pooled_width, batch_size, channels,
                                      heights[l], widths[l], kBackwardOp, check_values && l == 0);
    call.levels.push_back(level_params(one, sampling_ratio, aligned, call.mode, kBackwardOp));
  }
  return call;
}

}  // namespace roiops
