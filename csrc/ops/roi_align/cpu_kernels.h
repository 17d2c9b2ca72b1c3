// roi_align's CPU kernels, the registered functions, also for ops built on them (multilevel_pool).
#pragma once

#include <cstdint>
#include <string>
#include <tuple>

#include "../../common/tensor.h"

namespace roiops {
namespace cpu {

std::tuple<Tensor, Tensor> roi_align_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                                 bool aligned, std::string pool_mode);

Tensor roi_align_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              std::string pool_mode, bool deterministic);

}  // namespace cpu
}  // namespace roiops
