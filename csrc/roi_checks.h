// Argument checks shared by every kernel of every device. The Python layer checks the same things
// first with friendlier wording; these keep a direct call of the op (torch.ops.roiops.*) safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace roiops {

// input is 4-D floating point, rois is [K, 5] of the same dtype and device, sizes are positive, and
// the box values are finite with an integral batch index in [0, input.size(0)).
void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                        int64_t pooled_width, const char* op_name);

// The same for a backward call, which knows the input only by its sizes.
void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size,
                         int64_t channels, int64_t height, int64_t width, int64_t pooled_height,
                         int64_t pooled_width, const char* op_name);

// The roi_align modes: "avg" or "max".
bool is_max_mode(const std::string& pool_mode);

// True where a tensor is laid out channels-last (and not also plain contiguous): the kernels then
// use their NHWC path and produce NHWC results. Mirrored by _memory_format in roiops/_ops.py for the fake kernels.
bool use_channels_last(const at::Tensor& t);

}  // namespace roiops
