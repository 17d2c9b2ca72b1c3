#include "position_sensitive.h"

namespace roiops {
namespace {

void check_channels(int64_t channels, int64_t pooled_height, int64_t pooled_width, const char* op_name) {
  check(channels % (pooled_height * pooled_width) == 0, op_name, ": input channels (", channels,
        ") must be a multiple of output_size[0] * output_size[1] (", pooled_height, " * ", pooled_width, " = ",
        pooled_height * pooled_width, ")");
}

PsCall with_out_channels(const RoiCall& call, int64_t out_channels) {
  PsCall p;
  static_cast<RoiCall&>(p) = call;
  p.out_channels = out_channels;
  return p;
}

}  // namespace

PsCall ps_forward_call(const Tensor& input, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                       int64_t pooled_width, const char* op_name, bool check_values) {
  const RoiCall call =
      forward_call(input, rois, spatial_scale, pooled_height, pooled_width, op_name, check_values, kBoxWidth);
  check_channels(call.channels, pooled_height, pooled_width, op_name);
  return with_out_channels(call, call.channels / (pooled_height * pooled_width));
}

PsCall ps_backward_call(const Tensor& grad, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                        const char* op_name, bool check_values) {
  // (An output size out of range is left to backward_call, which names it.)
  const bool sized = pooled_height > 0 && pooled_width > 0 && pooled_height <= kMaxPooledSize &&
                     pooled_width <= kMaxPooledSize && channels >= 0;
  if (sized) check_channels(channels, pooled_height, pooled_width, op_name);
  const int64_t out_channels = sized ? channels / (pooled_height * pooled_width) : channels;
  RoiCall call = backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, out_channels, height,
                               width, op_name, check_values, kBoxWidth);
  call.channels = channels;
  return with_out_channels(call, out_channels);
}

void check_channel_mapping(const Tensor& mapping, const Tensor& grad, const char* op_name) {
  bool same_shape = mapping.dim() == grad.dim();
  for (int64_t d = 0; same_shape && d < grad.dim(); ++d) same_shape = mapping.size(d) == grad.size(d);
  check(mapping.scalar_type() == ScalarType::Int && same_shape, op_name,
        ": channel_mapping must be int32 with the shape of grad ", format_sizes(grad));
  check(mapping.device() == grad.device(), op_name, ": channel_mapping must be on the device of grad (",
        format_device(grad), "), but is on ", format_device(mapping));
}

}  // namespace roiops
