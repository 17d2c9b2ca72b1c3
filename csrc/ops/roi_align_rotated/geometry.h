// Where rotated RoIAlign samples: the operator's semantics (docs/semantics.md, "Rotated RoIAlign"),
// written once for the CPU and CUDA kernels (host/device inline functions, no tensor types). The
// bilinear rule of a sample is roi_align's (bilinear_taps in common/geometry.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "../../common/geometry.h"
#include "../../common/limits.h"

namespace roiops {

// Rotated boxes are rows of kRotatedBoxWidth values: (batch index, centre x, centre y, width, height,
// angle in degrees).
constexpr int kRotatedBoxWidth = 6;

// One rotated RoI: its centre, its sampling grid in box coordinates (relative to the centre, before
// rotation), and the rotation.
template <typename T>
struct RotatedGeometry {
  int64_t batch;
  T center_h, center_w;
  T start_h, start_w;  // -height / 2, -width / 2
  T bin_h, bin_w;
  T cos_t, sin_t;
  int grid_h, grid_w;
  T count;  // samples per bin, at least 1 (the divisor of the average)
};

// An adaptive grid side: ceil(extent / bins), 0 for a non-positive extent, clamped so that an
// enormous (finite) box still gives an int (the sample limit refuses it).
template <typename T>
ROIOPS_HOST_DEVICE int adaptive_grid(T extent, int bins) {
  const T g = ceil(extent / static_cast<T>(bins));
  return g > T(0) ? (g < T(kMaxCoordinate) ? static_cast<int>(g) : static_cast<int>(kMaxCoordinate)) : 0;
}

template <typename T>
ROIOPS_HOST_DEVICE RotatedGeometry<T> rotated_geometry(const T* roi, T spatial_scale, int pooled_h, int pooled_w,
                                                       int sampling_ratio, bool aligned, bool clockwise) {
  RotatedGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? T(0.5) : T(0);
  g.center_w = roi[1] * spatial_scale - offset;
  g.center_h = roi[2] * spatial_scale - offset;
  T roi_w = roi[3] * spatial_scale;
  T roi_h = roi[4] * spatial_scale;
  if (!aligned) {
    // Legacy (mmcv aligned=False): malformed boxes are forced to 1x1.
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  // Degrees to radians in double, then rounded once to T (as detectron2 does), so that float and
  // double boxes turn by the nearest representable angle.
  T theta = static_cast<T>(static_cast<double>(roi[5]) * 3.14159265358979323846 / 180.0);
  if (clockwise) theta = -theta;
#if defined(__CUDA_ARCH__)
  g.cos_t = cos(theta);
  g.sin_t = sin(theta);
#else
  // In double, rounded once: the same on every host whichever overloads a source has in scope (the
  // reference computes the same).
  g.cos_t = static_cast<T>(std::cos(static_cast<double>(theta)));
  g.sin_t = static_cast<T>(std::sin(static_cast<double>(theta)));
#endif
  g.start_h = -roi_h / T(2);
  g.start_w = -roi_w / T(2);
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  if (sampling_ratio > 0) {
    g.grid_h = g.grid_w = sampling_ratio;
  } else {
    g.grid_h = adaptive_grid(roi_h, pooled_h);
    g.grid_w = adaptive_grid(roi_w, pooled_w);
  }
  const int64_t n = static_cast<int64_t>(g.grid_h) * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Samples of one box, all bins together, as a double (no overflow for any grid).
template <typename T>
ROIOPS_HOST_DEVICE double rotated_samples_per_box(const RotatedGeometry<T>& g, int pooled_h, int pooled_w) {
  return static_cast<double>(g.grid_h) * g.grid_w * pooled_h * pooled_w;
}

// Whether an adaptive grid stays within kMaxRotatedSamplesPerBox (a fixed one is checked once per call).
template <typename T>
ROIOPS_HOST_DEVICE bool within_rotated_limit(const RotatedGeometry<T>& g, int pooled_h, int pooled_w,
                                             int sampling_ratio) {
  return sampling_ratio > 0 ||
         rotated_samples_per_box(g, pooled_h, pooled_w) <= static_cast<double>(kMaxRotatedSamplesPerBox);
}

// The taps of sample (iy, ix) of bin (ph, pw): its position in the box, turned about the centre by
// the angle and moved to the centre (counter-clockwise for a positive angle in detectron2's words:
// y' = y cos - x sin, x' = y sin + x cos), then roi_align's bilinear rule.
template <typename T>
ROIOPS_HOST_DEVICE BilinearTaps<T> rotated_sample_taps(const RotatedGeometry<T>& g, int ph, int pw, int iy, int ix,
                                                       int height, int width) {
  const T yy = sample_coordinate(g.start_h, g.bin_h, ph, iy, g.grid_h);
  const T xx = sample_coordinate(g.start_w, g.bin_w, pw, ix, g.grid_w);
  const T y = yy * g.cos_t - xx * g.sin_t + g.center_h;
  const T x = yy * g.sin_t + xx * g.cos_t + g.center_w;
  return bilinear_taps(y, x, height, width);
}

}  // namespace roiops
