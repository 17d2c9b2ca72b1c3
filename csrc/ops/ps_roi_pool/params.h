// ps_roi_pool's per-box geometry, shared by the CPU and CUDA kernels (docs/semantics.md): the box is
// rounded to whole cells as RoIPool's, but its extent is end - start (at least 1), not end - start + 1
// (torchvision's position-sensitive RoIPool); the bins have RoIPool's floor/ceil edges clipped to the
// map, and each takes the average of its cells (an empty bin gives 0).
#pragma once

#include "../../common/geometry.h"
#include "../../common/position_sensitive.h"

namespace roiops {

template <typename T>
ROIOPS_HOST_DEVICE PoolGeometry<T> ps_pool_geometry(const T* roi, const PsCall& p) {
  const T scale = static_cast<T>(p.spatial_scale);
  PoolGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.start_w = static_cast<int64_t>(round(clamp_coordinate(roi[1] * scale)));
  g.start_h = static_cast<int64_t>(round(clamp_coordinate(roi[2] * scale)));
  const int64_t end_w = static_cast<int64_t>(round(clamp_coordinate(roi[3] * scale)));
  const int64_t end_h = static_cast<int64_t>(round(clamp_coordinate(roi[4] * scale)));
  const int64_t roi_w = end_w - g.start_w > 1 ? end_w - g.start_w : 1;
  const int64_t roi_h = end_h - g.start_h > 1 ? end_h - g.start_h : 1;
  g.bin_h = static_cast<T>(roi_h) / static_cast<T>(p.pooled_h);
  g.bin_w = static_cast<T>(roi_w) / static_cast<T>(p.pooled_w);
  return g;
}

}  // namespace roiops
