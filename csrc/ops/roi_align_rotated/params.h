// roi_align_rotated's parameters and per-box geometry, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "../../common/checks.h"
#include "geometry.h"

namespace roiops {

struct RotatedParams : RoiCall {
  int sampling_ratio;  // a positive grid side, or 0: adaptive
  bool aligned, clockwise;
};

RotatedParams rotated_params(const RoiCall& call, int64_t sampling_ratio, bool aligned, bool clockwise,
                             const char* op_name);

// The geometry of a box (kRotatedBoxWidth values in acc_t).
template <typename acc_t>
ROIOPS_HOST_DEVICE RotatedGeometry<acc_t> box_geometry(const acc_t* box, const RotatedParams& p) {
  return rotated_geometry<acc_t>(box, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w, p.sampling_ratio,
                                 p.aligned, p.clockwise);
}

template <typename acc_t>
ROIOPS_HOST_DEVICE bool within_sample_limit(const RotatedGeometry<acc_t>& g, const RotatedParams& p) {
  return within_rotated_limit(g, p.pooled_h, p.pooled_w, p.sampling_ratio);
}

// The error for box k (its values as doubles) whose adaptive grid would take `samples` samples.
[[noreturn]] void fail_rotated_samples(const char* op_name, int64_t k, const double* box, double samples);

}  // namespace roiops
