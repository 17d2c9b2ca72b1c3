// roi_pool's CPU kernels, the registered functions, also for ops built on them (multilevel_pool).
#pragma once

#include <cstdint>
#include <tuple>

#include "../../common/tensor.h"

namespace roiops {
namespace cpu {

std::tuple<Tensor, Tensor> roi_pool_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                int64_t pooled_height, int64_t pooled_width);

Tensor roi_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                             int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                             int64_t height, int64_t width, bool deterministic);

}  // namespace cpu
}  // namespace roiops
