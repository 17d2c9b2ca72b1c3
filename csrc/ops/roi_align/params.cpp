#include "params.h"

namespace roiops {

AlignParams align_params(const RoiCall& call, int64_t sampling_ratio, bool aligned, const std::string& pool_mode,
                         const char* op_name) {
  AlignParams p;
  static_cast<RoiCall&>(p) = call;
  p.sampling_ratio = sampling_grid(sampling_ratio, op_name);
  p.aligned = aligned;
  p.max_mode = is_max_mode(pool_mode);
  return p;
}

void fail_samples_per_bin(const double* box, int64_t samples, const AlignParams& p) {
  const bool fixed = p.sampling_ratio > 0;
  fail("roi_align: ", fixed ? "sampling_ratio " : "adaptive sampling (sampling_ratio <= 0)",
       fixed ? std::to_string(p.sampling_ratio) : std::string(), " of box ", box[1], ", ", box[2], ", ", box[3], ", ",
       box[4], " would take ", samples, " samples per bin (limit ", kMaxSamplesPerBin, "); pass ",
       fixed ? "a smaller" : "a positive", " sampling_ratio");
}

}  // namespace roiops
