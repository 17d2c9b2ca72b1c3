// roi_align's parameters and per-box geometry, shared by the CPU and CUDA kernels: built and
// validated once (params.cpp), with the one samples-per-bin limit and its message.
#pragma once

#include <cstdint>
#include <string>

#include "../../common/checks.h"
#include "../../common/geometry.h"
#include "../../common/limits.h"

namespace roiops {

struct AlignParams : RoiCall {
  int sampling_ratio;  // a positive grid side, or 0: adaptive
  bool aligned, max_mode;
};

AlignParams align_params(const RoiCall& call, int64_t sampling_ratio, bool aligned, const std::string& pool_mode,
                         const char* op_name);

// The geometry of a box (kBoxWidth values in acc_t).
template <typename acc_t>
ROIOPS_HOST_DEVICE AlignGeometry<acc_t> box_geometry(const acc_t* box, const AlignParams& p) {
  return align_geometry<acc_t>(box, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w, p.sampling_ratio,
                               p.aligned);
}

// The error for box k (its values as doubles) whose bins would take `samples` samples each.
[[noreturn]] void fail_samples_per_bin(const double* box, int64_t samples, const AlignParams& p);

}  // namespace roiops
