#include "params.h"

namespace roiops {

PrroiParams rois_backward_call(const Tensor& grad, const Tensor& input, const Tensor& rois, double spatial_scale,
                               int64_t pooled_height, int64_t pooled_width, bool aligned, const char* op_name,
                               bool check_values) {
  const RoiCall call =
      forward_call(input, rois, spatial_scale, pooled_height, pooled_width, op_name, check_values, kBoxWidth);
  check(grad.dim() == 4 && grad.size(0) == call.num_rois && grad.size(1) == call.channels &&
            grad.size(2) == pooled_height && grad.size(3) == pooled_width,
        op_name, ": grad must have shape [", call.num_rois, ", ", call.channels, ", ", pooled_height, ", ",
        pooled_width, "], but got ", format_sizes(grad));
  check(grad.scalar_type() == input.scalar_type(), op_name, ": grad must have the dtype of input (",
        format_dtype(input.scalar_type()), "), but got ", format_dtype(grad.scalar_type()));
  check(grad.device() == input.device(), op_name, ": grad must be on the device of input (", format_device(input),
        "), but is on ", format_device(grad));
  return prroi_params(call, aligned);
}

}  // namespace roiops
