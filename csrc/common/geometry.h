// Where RoIAlign samples and which cells RoIPool covers: the operator semantics, written once and
// shared by the CPU and CUDA kernels (host/device inline functions, no tensor types).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "limits.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ROIOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ROIOPS_HOST_DEVICE inline
#endif

namespace roiops {

// Boxes are rows of kBoxWidth values: (batch index, x1, y1, x2, y2).
constexpr int kBoxWidth = 5;

// Row k of a row-major [K, kWidth] box tensor, in the type the kernels compute in.
template <int kWidth, typename acc_t, typename scalar_t>
ROIOPS_HOST_DEVICE void load_box(const scalar_t* rois, int64_t k, acc_t (&box)[kWidth]) {
  for (int j = 0; j < kWidth; ++j) box[j] = static_cast<acc_t>(rois[k * kWidth + j]);
}

// Box coordinates are clamped to this many feature cells before they become integers, so that an
// enormous (but finite) box cannot overflow an int; every such box already covers the whole map.
constexpr double kMaxCoordinate = 1073741824.0;  // 2^30

template <typename T>
ROIOPS_HOST_DEVICE T clamp_coordinate(T v) {
  return v < T(-kMaxCoordinate) ? T(-kMaxCoordinate) : (v > T(kMaxCoordinate) ? T(kMaxCoordinate) : v);
}

// The max rule of both ops (docs/semantics.md): value v, in visiting order, replaces the maximum so
// far, top (at index top_at, -1 before the first value), if it comes first, if it is NaN and top is
// not (so the first NaN wins and stays, as in max_pool2d), or if it is strictly greater. The last two
// in two comparisons: !(v <= top) holds for a greater v and whenever v or top is NaN, and
// top == top excludes a NaN top. Written with & and | rather than && and || so that the CPU loops
// vectorize it.
template <typename T>
ROIOPS_HOST_DEVICE bool max_rule_wins(T v, T top, int32_t top_at) {
  return (top_at < 0) | (!(v <= top) & (top == top));
}

// One RoI of RoIAlign: its real-valued start, bin size and sampling grid.
template <typename T>
struct AlignGeometry {
  int64_t batch;
  T start_h, start_w;
  T bin_h, bin_w;
  int grid_h, grid_w;
  T count;  // samples per bin, at least 1 (the divisor of avg mode)
};

template <typename T>
ROIOPS_HOST_DEVICE AlignGeometry<T> align_geometry(const T* roi, T spatial_scale, int pooled_h, int pooled_w,
                                                   int sampling_ratio, bool aligned) {
  AlignGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? T(0.5) : T(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  const T end_w = roi[3] * spatial_scale - offset;
  const T end_h = roi[4] * spatial_scale - offset;
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {
    // Legacy behaviour: malformed boxes are forced to 1x1.
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  if (sampling_ratio > 0) {
    g.grid_h = g.grid_w = sampling_ratio;
  } else {
    // ceil() of a non-positive size is <= 0: an inverted box samples nothing.
    const T gh = ceil(roi_h / static_cast<T>(pooled_h));
    const T gw = ceil(roi_w / static_cast<T>(pooled_w));
    g.grid_h = gh > T(0) ? (gh < T(kMaxCoordinate) ? static_cast<int>(gh) : static_cast<int>(kMaxCoordinate)) : 0;
    g.grid_w = gw > T(0) ? (gw < T(kMaxCoordinate) ? static_cast<int>(gw) : static_cast<int>(kMaxCoordinate)) : 0;
  }
  const int64_t n = static_cast<int64_t>(g.grid_h) * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Whether a box's bins stay within kMaxSamplesPerBin samples (adaptive grids of huge boxes do not).
template <typename T>
ROIOPS_HOST_DEVICE bool within_sample_limit(const AlignGeometry<T>& g) {
  return static_cast<int64_t>(g.grid_h) * g.grid_w <= kMaxSamplesPerBin;
}

// Coordinate of sample `i` (of `grid`) in bin `p` along one axis.
template <typename T>
ROIOPS_HOST_DEVICE T sample_coordinate(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(i + T(0.5)) * bin / static_cast<T>(grid);
}

// The two cells a sample interpolates between along one axis, and their weights.
// A sample more than one cell outside the map contributes nothing (valid = false). So does a
// sample whose coordinate is NaN (a finite box whose extent overflows to inf gives 0 * inf), and
// every sample of an empty axis (size 0): there is no cell to read.
template <typename T>
struct AxisTaps {
  int low, high;
  T w_low, w_high;
  bool valid;
};

template <typename T>
ROIOPS_HOST_DEVICE AxisTaps<T> axis_taps(T v, int size) {
  AxisTaps<T> t;
  if (!(v >= T(-1) && v <= static_cast<T>(size)) || size <= 0) {
    t.low = t.high = 0;
    t.w_low = t.w_high = T(0);
    t.valid = false;
    return t;
  }
  if (v <= T(0)) v = T(0);
  t.low = static_cast<int>(v);
  if (t.low >= size - 1) {
    t.low = t.high = size - 1;
    v = static_cast<T>(t.low);
  } else {
    t.high = t.low + 1;
  }
  const T frac = v - static_cast<T>(t.low);
  t.w_high = frac;
  t.w_low = T(1) - frac;
  t.valid = true;
  return t;
}

// The four taps of one bilinear sample: offsets within an H x W plane (row-major) and weights.
template <typename T>
struct BilinearTaps {
  int64_t o1, o2, o3, o4;  // (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)
  T w1, w2, w3, w4;
  // False for a sample outside the map: its value is 0 and it must not touch any cell (a weight of
  // 0 times an inf or NaN cell would still poison the result).
  bool valid;
};

template <typename T>
ROIOPS_HOST_DEVICE BilinearTaps<T> outside_taps() {
  BilinearTaps<T> b;
  b.o1 = b.o2 = b.o3 = b.o4 = 0;
  b.w1 = b.w2 = b.w3 = b.w4 = T(0);
  b.valid = false;
  return b;
}

template <typename T>
ROIOPS_HOST_DEVICE BilinearTaps<T> bilinear_taps(T y, T x, int height, int width) {
  const AxisTaps<T> ty = axis_taps(y, height);
  const AxisTaps<T> tx = axis_taps(x, width);
  if (!ty.valid || !tx.valid) return outside_taps<T>();
  BilinearTaps<T> b;
  b.valid = true;
  b.o1 = static_cast<int64_t>(ty.low) * width + tx.low;
  b.o2 = static_cast<int64_t>(ty.low) * width + tx.high;
  b.o3 = static_cast<int64_t>(ty.high) * width + tx.low;
  b.o4 = static_cast<int64_t>(ty.high) * width + tx.high;
  b.w1 = ty.w_low * tx.w_low;
  b.w2 = ty.w_low * tx.w_high;
  b.w3 = ty.w_high * tx.w_low;
  b.w4 = ty.w_high * tx.w_high;
  return b;
}

// Bilinear taps of sample (iy, ix) of bin (ph, pw).
template <typename T>
ROIOPS_HOST_DEVICE BilinearTaps<T> align_sample_taps(const AlignGeometry<T>& g, int ph, int pw, int iy, int ix,
                                                     int height, int width) {
  const T y = sample_coordinate(g.start_h, g.bin_h, ph, iy, g.grid_h);
  const T x = sample_coordinate(g.start_w, g.bin_w, pw, ix, g.grid_w);
  return bilinear_taps(y, x, height, width);
}

// The same for sample `s` (row-major in the grid).
template <typename T>
ROIOPS_HOST_DEVICE BilinearTaps<T> align_sample_taps(const AlignGeometry<T>& g, int ph, int pw, int s, int height,
                                                     int width) {
  const int iy = s / g.grid_w;
  return align_sample_taps(g, ph, pw, iy, s - iy * g.grid_w, height, width);
}

// Clipping a bin's samples to the map
// -----------------------------------
// With adaptive sampling an absurd box (say 28,000 px on a 64 x 64 map) has millions of samples per
// bin, nearly all outside the map, where they contribute exactly 0. The kernels visit only the
// samples that can touch the map, so the cost of any box is bounded by the map, with the results of
// visiting every sample, bit for bit:
// - avg: outside samples add nothing and still count in the divisor (g.count is unchanged);
// - max: outside samples are 0 candidates, never NaN (they read no cell). Under the max rule (the
//   first sample counts; a later one wins if it is NaN and the maximum so far is not, or if it is
//   strictly greater) the maximum so far never decreases and a NaN maximum is final, so once one
//   outside 0 has been visited no later one can win: the first of them, in row-major order, stands
//   for all of them, visited at its place in the order.

// A run [begin, end) of sample indices along one axis of a bin.
struct SampleRange {
  int begin, end;
  ROIOPS_HOST_DEVICE int size() const { return end > begin ? end - begin : 0; }
};

// The samples of bin `p` (of `grid` samples) along one axis that lie in [-1, size], the ones
// axis_taps accepts. With a positive finite bin the coordinates never decrease with the index (each
// operation of sample_coordinate is monotone), so these samples are one run; it is found by bisection
// with sample_coordinate itself, so the decisions are those of testing every sample. Otherwise (an
// inverted or overflowing box) every index is returned, and the kernels test each sample as before.
template <typename T>
ROIOPS_HOST_DEVICE SampleRange touching_samples(T start, T bin, int p, int grid, int size) {
  if (grid <= 0) return SampleRange{0, 0};
  if (!(bin > T(0) && bin < std::numeric_limits<T>::infinity())) return SampleRange{0, grid};
  if (size <= 0) return SampleRange{0, 0};
  const T low = T(-1), high = static_cast<T>(size);
  if (sample_coordinate(start, bin, p, 0, grid) >= low && sample_coordinate(start, bin, p, grid - 1, grid) <= high) {
    return SampleRange{0, grid};  // the common case: the whole bin is on the map
  }
  int lo = 0, hi = grid;  // first index at or above -1
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (sample_coordinate(start, bin, p, mid, grid) >= low) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int begin = lo;
  hi = grid;  // first index above size
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (sample_coordinate(start, bin, p, mid, grid) > high) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return SampleRange{begin, lo};
}

// The samples of one bin to visit: the rectangle rows x cols of its grid, and first_outside, the
// row-major index of the first sample outside that rectangle (-1 if none), which stands for all
// samples outside.
struct BinSamples {
  SampleRange rows, cols;
  int grid_w;
  int first_outside;

  // Samples visited: the rectangle and the stand-in for the outside.
  ROIOPS_HOST_DEVICE int64_t count() const {
    return static_cast<int64_t>(rows.size()) * cols.size() + (first_outside >= 0 ? 1 : 0);
  }

  // Calls visit(s, iy, ix) for every sample of the rectangle in row-major order (s = iy * grid_w +
  // ix), and visit(first_outside, -1, -1) at its place in that order (its taps: outside_taps()).
  template <typename F>
  ROIOPS_HOST_DEVICE void for_each(const F& visit) const {
    int outside = first_outside;
    for (int iy = rows.begin; iy < rows.end; ++iy) {
      for (int ix = cols.begin; ix < cols.end; ++ix) {
        const int s = iy * grid_w + ix;
        if (outside >= 0 && outside < s) {
          visit(outside, -1, -1);
          outside = -1;
        }
        visit(s, iy, ix);
      }
    }
    if (outside >= 0) visit(outside, -1, -1);
  }

  // The position of the stand-in in the visiting order of for_each (-1 if none): the number of
  // rectangle samples before it in row-major order.
  ROIOPS_HOST_DEVICE int64_t outside_position() const {
    if (first_outside < 0) return -1;
    const int oy = first_outside / grid_w, ox = first_outside - oy * grid_w;
    const int64_t full_rows = oy < rows.begin ? 0 : (oy < rows.end ? oy - rows.begin : rows.size());
    const int in_row =
        oy >= rows.begin && oy < rows.end ? (ox < cols.begin ? 0 : (ox < cols.end ? ox - cols.begin : cols.size())) : 0;
    return full_rows * cols.size() + in_row;
  }

  // The same as for_each, restricted to the visiting positions [begin, end) (0 <= begin <= end <=
  // count()): the kernels that hold a bin's taps in a buffer take a huge bin a piece at a time.
  template <typename F>
  ROIOPS_HOST_DEVICE void for_each_in(int64_t begin, int64_t end, const F& visit) const {
    const int64_t at_outside = outside_position();
    const int64_t n_cols = cols.size();
    for (int64_t q = begin; q < end;) {
      if (q == at_outside) {
        visit(first_outside, -1, -1);
        ++q;
        continue;
      }
      const int64_t r = at_outside >= 0 && q > at_outside ? q - 1 : q;  // index in the rectangle
      const int iy = rows.begin + static_cast<int>(r / n_cols);
      int ix = cols.begin + static_cast<int>(r % n_cols);
      // The rest of this row of the rectangle, up to end or the stand-in.
      int64_t stop = q + (cols.end - ix);
      stop = stop < end ? stop : end;
      if (at_outside > q && at_outside < stop) stop = at_outside;
      for (; q < stop; ++q, ++ix) visit(iy * grid_w + ix, iy, ix);
    }
  }
};

// rows, cols: touching_samples of the bin's row and column (of grid_h and grid_w samples).
ROIOPS_HOST_DEVICE BinSamples bin_samples(SampleRange rows, SampleRange cols, int grid_h, int grid_w) {
  BinSamples b;
  b.grid_w = grid_w;
  if (rows.size() == 0 || cols.size() == 0) {
    b.rows = b.cols = SampleRange{0, 0};
    b.first_outside = grid_h > 0 && grid_w > 0 ? 0 : -1;
    return b;
  }
  b.rows = rows;
  b.cols = cols;
  if (rows.begin > 0 || cols.begin > 0) {
    b.first_outside = 0;  // sample (0, 0)
  } else if (cols.end < grid_w) {
    b.first_outside = cols.end;  // in row 0
  } else if (rows.end < grid_h) {
    b.first_outside = rows.end * grid_w;  // a whole row below
  } else {
    b.first_outside = -1;
  }
  return b;
}

template <typename T>
ROIOPS_HOST_DEVICE BinSamples bin_samples(const AlignGeometry<T>& g, int ph, int pw, int height, int width) {
  return bin_samples(touching_samples(g.start_h, g.bin_h, ph, g.grid_h, height),
                     touching_samples(g.start_w, g.bin_w, pw, g.grid_w, width), g.grid_h, g.grid_w);
}

// The plain "visit every sample" path of an average: visit(taps) for each sample of bin (ph, pw) that
// reads the map, in row-major order. Samples outside the map add nothing to a sum, so skipping them
// (touching_samples) changes no result; an op that needs more (a max, separable caches) builds on the
// pieces above instead.
template <typename T, typename Visit>
ROIOPS_HOST_DEVICE void for_each_map_sample(const AlignGeometry<T>& g, int ph, int pw, int height, int width,
                                            const Visit& visit) {
  const SampleRange rows = touching_samples(g.start_h, g.bin_h, ph, g.grid_h, height);
  const SampleRange cols = touching_samples(g.start_w, g.bin_w, pw, g.grid_w, width);
  for (int iy = rows.begin; iy < rows.end; ++iy) {
    for (int ix = cols.begin; ix < cols.end; ++ix) {
      const BilinearTaps<T> t = align_sample_taps(g, ph, pw, iy, ix, height, width);
      if (t.valid) visit(t);
    }
  }
}

// One RoI of RoIPool: its box rounded to whole cells (C rounding, half away from zero).
template <typename T>
struct PoolGeometry {
  int64_t batch;
  int64_t start_h, start_w;
  T bin_h, bin_w;
};

template <typename T>
ROIOPS_HOST_DEVICE PoolGeometry<T> pool_geometry(const T* roi, T spatial_scale, int pooled_h, int pooled_w) {
  PoolGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.start_w = static_cast<int64_t>(round(clamp_coordinate(roi[1] * spatial_scale)));
  g.start_h = static_cast<int64_t>(round(clamp_coordinate(roi[2] * spatial_scale)));
  const int64_t end_w = static_cast<int64_t>(round(clamp_coordinate(roi[3] * spatial_scale)));
  const int64_t end_h = static_cast<int64_t>(round(clamp_coordinate(roi[4] * spatial_scale)));
  const int64_t roi_w = end_w - g.start_w + 1 > 1 ? end_w - g.start_w + 1 : 1;
  const int64_t roi_h = end_h - g.start_h + 1 > 1 ? end_h - g.start_h + 1 : 1;
  g.bin_h = static_cast<T>(roi_h) / static_cast<T>(pooled_h);
  g.bin_w = static_cast<T>(roi_w) / static_cast<T>(pooled_w);
  return g;
}

// The half-open cell range [begin, end) of bin `p` along one axis, clipped to [0, size).
struct CellRange {
  int begin, end;
};

template <typename T>
ROIOPS_HOST_DEVICE CellRange pool_bin_range(int64_t start, T bin, int p, int size) {
  int64_t b = static_cast<int64_t>(floor(static_cast<T>(p) * bin)) + start;
  int64_t e = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * bin)) + start;
  b = b < 0 ? 0 : (b > size ? size : b);
  e = e < 0 ? 0 : (e > size ? size : e);
  return CellRange{static_cast<int>(b), static_cast<int>(e)};
}

}  // namespace roiops
