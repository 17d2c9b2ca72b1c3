#include "params.h"

#include <string>

namespace roiops {

PsAlignParams ps_align_params(const PsCall& call, int64_t sampling_ratio, const char* op_name) {
  PsAlignParams p;
  static_cast<PsCall&>(p) = call;
  p.sampling_ratio = sampling_grid(sampling_ratio, op_name);
  return p;
}

void fail_ps_samples_per_bin(const double* box, int64_t samples) {
  fail("ps_roi_align: adaptive sampling (sampling_ratio <= 0) of box ", box[1], ", ", box[2], ", ", box[3], ", ",
       box[4], " would take ", samples, " samples per bin (limit ", kMaxSamplesPerBin,
       "); pass a positive sampling_ratio");
}

}  // namespace roiops
