// Position-sensitive RoI pooling (R-FCN), shared by ps_roi_align and ps_roi_pool, CPU and CUDA: output
// channel c of bin (i, j) reads input channel (c * PH + i) * PW + j, so the input holds PH * PW times
// the output's channels, and that channel of the output element is its "channel mapping" (the second
// output, in the place of an argmax).
#pragma once

#include <cstdint>

#include "checks.h"

namespace roiops {

ROIOPS_HOST_DEVICE int64_t ps_input_channel(int64_t c, int64_t i, int64_t j, int64_t pooled_h, int64_t pooled_w) {
  return (c * pooled_h + i) * pooled_w + j;
}

// A call of a position-sensitive op: RoiCall's checks, with `channels` the input's channels (a multiple
// of PH * PW, checked here) and out_channels = channels / (PH * PW).
struct PsCall : RoiCall {
  int64_t out_channels;
};

PsCall ps_forward_call(const Tensor& input, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                       int64_t pooled_width, const char* op_name, bool check_values);

// grad is [K, channels / (PH * PW), PH, PW]; `channels` is the input's.
PsCall ps_backward_call(const Tensor& grad, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                        const char* op_name, bool check_values);

// Where channel c of image n of an input-sized map (this call's layout) starts, and the step between
// its cells.
struct PsMapLayout {
  int64_t image, channel, cell;
  explicit PsMapLayout(const PsCall& p)
      : image(p.channels * p.height * p.width),
        channel(p.nhwc ? 1 : p.height * p.width),
        cell(p.nhwc ? p.channels : 1) {}
  ROIOPS_HOST_DEVICE int64_t plane(int64_t n, int64_t c) const { return n * image + c * channel; }
};

// The channel mapping a backward call receives: int32 with grad's shape, on grad's device. (Its values
// are not read: each element's channel follows from its position.)
void check_channel_mapping(const Tensor& mapping, const Tensor& grad, const char* op_name);

}  // namespace roiops
