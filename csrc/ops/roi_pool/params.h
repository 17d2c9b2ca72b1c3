// roi_pool's parameters and per-box geometry, shared by the CPU and CUDA kernels.
#pragma once

#include "../../common/checks.h"
#include "../../common/geometry.h"

namespace roiops {

// roi_pool needs nothing beyond what every RoI op call has.
using PoolParams = RoiCall;

// The geometry of a box (kBoxWidth values in acc_t).
template <typename acc_t>
ROIOPS_HOST_DEVICE PoolGeometry<acc_t> box_geometry(const acc_t* box, const PoolParams& p) {
  return pool_geometry<acc_t>(box, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w);
}

}  // namespace roiops
