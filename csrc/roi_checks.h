// Argument checks shared by every kernel of every device. The Python layer checks the same things
// first with friendlier wording; these keep a direct call of the op (torch.ops.roiops.*) safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace roiops {

// input is 4-D floating point, rois is [K, 5] of the same dtype and device, sizes are positive,
// and, with check_values (CPU tensors only: reading them is free there), the box values are finite
// with an integral batch index in [0, input.size(0)). The CUDA kernels check the values on the
// device instead (csrc/cuda/box_checks.cuh), so as not to stall the host.
void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                        const char* op_name, bool check_values = true);

// The same for a backward call, which knows the input only by its sizes.
void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size, int64_t channels,
                         int64_t height, int64_t width, int64_t pooled_height, int64_t pooled_width,
                         const char* op_name, bool check_values = true);

// The messages of the box value checks, shared by the CPU and device checks.
[[noreturn]] void fail_nonfinite_box(const char* op_name, int64_t k, double value, int column);
[[noreturn]] void fail_batch_index(const char* op_name, int64_t k, double value, int64_t batch_size);

// Whether the CUDA forward checks box values (one host sync per call; never during CUDA-graph
// capture). On by default; ROIOPS_DEVICE_BOX_CHECKS=0 in the environment or
// torch.ops.roiops.set_device_box_checks(False) turns it off. Returns the previous setting.
bool device_box_checks();
bool set_device_box_checks(bool enabled);

// spatial_scale is positive and finite.
void check_spatial_scale(double spatial_scale, const char* op_name);

// A positive sampling_ratio takes at most kMaxSamplesPerBin samples per bin (roi_limits.h).
void check_sampling_ratio(int64_t sampling_ratio, const char* op_name);

// A backward call's argmax is int32, on grad's device, with grad's shape.
void check_argmax(const at::Tensor& argmax, const at::Tensor& grad, const char* op_name);

// The roi_align modes: "avg" or "max".
bool is_max_mode(const std::string& pool_mode);

// True where a tensor is laid out channels-last (and not also plain contiguous): the kernels then
// use their NHWC path and produce NHWC results. Mirrored by _memory_format in roiops/_ops.py for the fake kernels.
bool use_channels_last(const at::Tensor& t);

}  // namespace roiops
