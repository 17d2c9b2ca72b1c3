// ps_roi_align's parameters and per-box geometry, shared by the CPU and CUDA kernels: RoIAlign's
// geometry with aligned=True (torchvision's position-sensitive RoIAlign shifts boxes by half a cell and
// does not enlarge small ones) and its one samples-per-bin limit.
#pragma once

#include <cstdint>

#include "../../common/geometry.h"
#include "../../common/limits.h"
#include "../../common/position_sensitive.h"

namespace roiops {

struct PsAlignParams : PsCall {
  int sampling_ratio;  // a positive grid side, or 0: adaptive
};

PsAlignParams ps_align_params(const PsCall& call, int64_t sampling_ratio, const char* op_name);

template <typename acc_t>
ROIOPS_HOST_DEVICE AlignGeometry<acc_t> ps_align_geometry(const acc_t* box, const PsAlignParams& p) {
  return align_geometry<acc_t>(box, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w, p.sampling_ratio,
                               /*aligned=*/true);
}

// The error for a box (its values as doubles) whose bins would take `samples` samples each.
[[noreturn]] void fail_ps_samples_per_bin(const double* box, int64_t samples);

}  // namespace roiops
