// The one validating parameter builder of every op and device. The Python layer checks Python-level
// types and shapes first (roiops/_validation.py, with the same words); these keep a direct call of an
// op (torch.ops.roiops.*) safe and produce the parameters the CPU and CUDA kernels both take.
#pragma once

#include <cstdint>
#include <string>

#include "geometry.h"
#include "limits.h"
#include "tensor.h"

namespace roiops {

// What every RoI op call has: the map's sizes and layout, the output bins and the scale.
struct RoiCall {
  double spatial_scale;
  int pooled_h, pooled_w;
  int64_t batch, channels, height, width;
  bool nhwc;  // the map (forward: input; backward: grad and grad_input) is channels-last
  int64_t num_rois;
  // A call may pool only some boxes: those whose roi_levels[k] is `level` (multilevel_pool runs one
  // call per pyramid level over all boxes); all boxes when roi_levels is null.
  const int64_t* roi_levels;
  int64_t level;

  ROIOPS_HOST_DEVICE bool pools(int64_t k) const { return roi_levels == nullptr || roi_levels[k] == level; }
};

// A forward call: input is 4-D floating point, rois is [K, box_width] of input's dtype and device,
// the output size and scale are in range and, with check_values (CPU tensors only: reading them is
// free there), the box values are finite with an integral batch index in [0, N). The CUDA kernels
// check the values on the device instead (cuda/box_checks.cuh), so as not to stall the host.
RoiCall forward_call(const Tensor& input, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, const char* op_name, bool check_values, int box_width = kBoxWidth);

// The same for a backward call, which knows the input only by its sizes.
RoiCall backward_call(const Tensor& grad, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                      int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                      const char* op_name, bool check_values, int box_width = kBoxWidth);

// sampling_ratio as the kernels take it: a positive grid side (at most kMaxSamplesPerBin samples per
// bin), or 0 for adaptive (any value <= 0, however large its magnitude).
int sampling_grid(int64_t sampling_ratio, const char* op_name);

// The roi_align modes: "avg" or "max".
bool is_max_mode(const std::string& pool_mode);

// A backward call's argmax is int32, on grad's device, with grad's shape.
void check_argmax(const Tensor& argmax, const Tensor& grad, const char* op_name);

// The messages of the box value checks, shared by the CPU and device checks.
[[noreturn]] void fail_nonfinite_box(const char* op_name, int64_t k, double value, int column);
[[noreturn]] void fail_batch_index(const char* op_name, int64_t k, double value, int64_t batch_size);

// Whether the CUDA forward checks box values with a blocking host sync per call (never during
// CUDA-graph capture). Off by default, so the CUDA path never stalls the host: a bad box then gives NaN
// and no gradient. ROIOPS_DEVICE_BOX_CHECKS=1 in the environment or
// torch.ops.roiops.set_device_box_checks(True) turns it on. Returns the previous setting.
bool device_box_checks();
bool set_device_box_checks(bool enabled);

}  // namespace roiops
