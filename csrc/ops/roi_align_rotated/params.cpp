#include "params.h"

namespace roiops {

RotatedParams rotated_params(const RoiCall& call, int64_t sampling_ratio, bool aligned, bool clockwise,
                             const char* op_name) {
  RotatedParams p;
  static_cast<RoiCall&>(p) = call;
  p.sampling_ratio = sampling_grid(sampling_ratio, op_name);
  p.aligned = aligned;
  p.clockwise = clockwise;
  return p;
}

void fail_rotated_samples(const char* op_name, int64_t k, const double* box, double samples) {
  fail(op_name, ": adaptive sampling (sampling_ratio <= 0) of box ", k, " (", box[1], ", ", box[2], ", ", box[3], ", ",
       box[4], ", ", box[5], ") would take ", samples, " samples (limit ", kMaxRotatedSamplesPerBox,
       " per box: rotated samples are each visited); pass a positive sampling_ratio");
}

}  // namespace roiops
