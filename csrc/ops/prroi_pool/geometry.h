// Precise RoI Pooling's semantics (docs/semantics.md, "Precise RoI Pooling"), shared by the CPU and
// CUDA kernels: each bin is the exact mean, over the bin, of the map interpolated bilinearly between
// cell centres, with cells outside the map taken as 0.
//
// That map is f(x, y) = sum over cells (r, c) of v[r, c] * hat(y - r) * hat(x - c), hat(t) =
// max(0, 1 - |t|), so the mean over a bin [x0, x1] x [y0, y1] is separable:
//   out = sum_{r, c} v[r, c] * wy_r * wx_c,   wx_c = (1 / (x1 - x0)) * integral_{x0}^{x1} hat(x - c) dx.
// A box of no area (width or height <= 0) gives 0 and no gradient, as in mmcv.
// hat(x - c) is linear on each unit interval between integers, so its integral over a piece [lo, hi]
// of one such interval is (hi - lo) * hat(mid - c), mid the middle of the piece: the value has no
// cancellation however thin the bin (the box gradient does, see docs). Only cells of the map carry weight, so a bin
// touches at most the map's cells in each direction (the cost of an absurd box is bounded by the map).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../../common/geometry.h"

namespace roiops {

// One box: its start and bin size along each axis, in feature cells (centre of cell c at c).
template <typename T>
struct PrroiGeometry {
  int64_t batch;
  T start_h, start_w;
  T bin_h, bin_w;
  // No area to average over (an empty or inverted box, or one whose extent overflows): every bin is 0
  // and passes no gradient.
  bool empty;
};

template <typename T>
ROIOPS_HOST_DEVICE PrroiGeometry<T> prroi_geometry(const T* roi, T spatial_scale, int pooled_h, int pooled_w,
                                                   bool aligned) {
  PrroiGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? T(0.5) : T(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  g.bin_w = (roi[3] * spatial_scale - offset - g.start_w) / static_cast<T>(pooled_w);
  g.bin_h = (roi[4] * spatial_scale - offset - g.start_h) / static_cast<T>(pooled_h);
  const T inf = std::numeric_limits<T>::infinity();
  g.empty = !(g.bin_w > T(0) && g.bin_w < inf && g.bin_h > T(0) && g.bin_h < inf);
  return g;
}

// The cells [begin, end) along one axis whose hat overlaps the interval [lo, hi], clipped to the map.
struct CellSpan {
  int begin, end;
  ROIOPS_HOST_DEVICE int size() const { return end > begin ? end - begin : 0; }
};

template <typename T>
ROIOPS_HOST_DEVICE CellSpan cell_span(T lo, T hi, int size) {
  // hat(x - c) is non-zero for c in (x - 1, x + 1). Clamped before the conversion to int.
  T b = floor(lo), e = ceil(hi) + T(1);
  b = b < T(0) ? T(0) : (b > static_cast<T>(size) ? static_cast<T>(size) : b);
  e = e < T(0) ? T(0) : (e > static_cast<T>(size) ? static_cast<T>(size) : e);
  return CellSpan{static_cast<int>(b), static_cast<int>(e)};
}

// integral_{lo}^{hi} hat(x - c) dx, for lo <= hi. Each piece is measured from the integer it starts
// at (a difference of nearby floats, exact), not through its absolute middle, which would lose the
// digits of the coordinate's magnitude.
template <typename T>
ROIOPS_HOST_DEVICE T hat_integral(T lo, T hi, int c) {
  const T cell = static_cast<T>(c);
  T sum = T(0);
  // The piece in [c - 1, c], where hat rises from 0: hat = t, t the offset from c - 1.
  const T t0 = (lo > cell - T(1) ? lo : cell - T(1)) - (cell - T(1));
  const T t1 = (hi < cell ? hi : cell) - (cell - T(1));
  if (t1 > t0) sum += (t1 - t0) * (t0 + t1) * T(0.5);
  // The piece in [c, c + 1], where it falls from 1: hat = 1 - u, u the offset from c.
  const T u0 = (lo > cell ? lo : cell) - cell;
  const T u1 = (hi < cell + T(1) ? hi : cell + T(1)) - cell;
  if (u1 > u0) sum += (u1 - u0) * (T(1) - (u0 + u1) * T(0.5));
  return sum;
}

// hat(x - c): the interpolation weight of cell c at the point x.
template <typename T>
ROIOPS_HOST_DEVICE T hat(T x, int c) {
  const T d = fabs(x - static_cast<T>(c));
  return d < T(1) ? T(1) - d : T(0);
}

// The cells a point x interpolates between with a non-zero weight (one at an integer x, else two),
// clipped to the map.
template <typename T>
ROIOPS_HOST_DEVICE CellSpan point_span(T x, int size) {
  return cell_span(x, x, size);  // [floor(x), ceil(x) + 1)
}

// One axis of bin p: its edges lo, hi, and the weight of a cell in it. The mean is taken over
// [lo, hi] as rounded (dividing by hi - lo, not by the nominal bin size, so that the weights sum to 1
// even where rounding the edges changed the width); a bin too thin to survive that rounding
// (lo == hi) takes the value at lo, the limit of the mean.
template <typename T>
struct BinAxis {
  T lo, hi, bin;
  ROIOPS_HOST_DEVICE T weight(int c) const { return hi > lo ? hat_integral(lo, hi, c) / (hi - lo) : hat(lo, c); }
  ROIOPS_HOST_DEVICE CellSpan cells(int size) const { return cell_span(lo, hi, size); }
};

template <typename T>
ROIOPS_HOST_DEVICE BinAxis<T> bin_axis(T start, T bin, int p) {
  return BinAxis<T>{start + static_cast<T>(p) * bin, start + static_cast<T>(p + 1) * bin, bin};
}

// The box gradient of one bin of one channel. With out the bin's value and E_x0, E_x1 the means over
// the bin's rows of f on its left and right edges (E_y0, E_y1 likewise over its columns):
//   d out / d x0 = (out - E_x0) / bin_w,   d out / d x1 = (E_x1 - out) / bin_w   (and so for y).
// Bin pw's edges are x0 = start + pw * bin_w and x1 = x0 + bin_w, bin_w = (box x2 - box x1) / PW, so
// d x0 / d box_x1 = 1 - pw / PW, d x0 / d box_x2 = pw / PW, d x1 / d box_x1 = 1 - (pw + 1) / PW,
// d x1 / d box_x2 = (pw + 1) / PW; each box coordinate is scaled by spatial_scale.
template <typename T>
struct EdgeMeans {
  T out, x0, x1, y0, y1;
};

// d (bin value) / d (box x1, y1, x2, y2) in image coordinates, times g, added to grad[0..3].
template <typename T>
ROIOPS_HOST_DEVICE void add_box_gradient(const EdgeMeans<T>& m, T g, int ph, int pw, int pooled_h, int pooled_w,
                                         T bin_h, T bin_w, T spatial_scale, T* grad) {
  const T d_x0 = (m.out - m.x0) / bin_w, d_x1 = (m.x1 - m.out) / bin_w;
  const T d_y0 = (m.out - m.y0) / bin_h, d_y1 = (m.y1 - m.out) / bin_h;
  const T fx0 = static_cast<T>(pw) / static_cast<T>(pooled_w), fx1 = static_cast<T>(pw + 1) / static_cast<T>(pooled_w);
  const T fy0 = static_cast<T>(ph) / static_cast<T>(pooled_h), fy1 = static_cast<T>(ph + 1) / static_cast<T>(pooled_h);
  const T s = g * spatial_scale;
  grad[0] += s * (d_x0 * (T(1) - fx0) + d_x1 * (T(1) - fx1));
  grad[1] += s * (d_y0 * (T(1) - fy0) + d_y1 * (T(1) - fy1));
  grad[2] += s * (d_x0 * fx0 + d_x1 * fx1);
  grad[3] += s * (d_y0 * fy0 + d_y1 * fy1);
}

}  // namespace roiops
