// multilevel_pool's arguments, validated once for the CPU and CUDA kernels: one single-level call
// per pyramid level (checked as roi_align's or roi_pool's own), the same batch, channels, dtype,
// device and layout on every level, one scale per level, and levels an int64 [K] tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../../common/checks.h"
#include "../roi_align/params.h"

namespace roiops {

enum class MultilevelMode { kAlignAvg, kAlignMax, kPool };

struct MultilevelCall {
  MultilevelMode mode;
  std::vector<AlignParams> levels;  // per level (roi_pool reads their RoiCall part)
};

MultilevelCall multilevel_forward_call(const std::vector<Tensor>& features, const Tensor& rois, const Tensor& levels,
                                       const std::vector<double>& spatial_scales, int64_t pooled_height,
                                       int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                       const std::string& mode, bool check_values);

MultilevelCall multilevel_backward_call(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                        const Tensor& argmax, const std::vector<double>& spatial_scales,
                                        int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                        int64_t channels, const std::vector<int64_t>& heights,
                                        const std::vector<int64_t>& widths, int64_t sampling_ratio, bool aligned,
                                        const std::string& mode, bool check_values);

// The single-level op's pool_mode for a mode ("avg" or "max"; roi_pool has none).
const char* align_mode_name(MultilevelMode mode);

}  // namespace roiops
