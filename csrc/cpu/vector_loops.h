// Inner loops of the channels-last (NHWC) CPU kernels: one RoI bin against contiguous channel
// vectors. They are compiled twice on x86-64 (baseline SSE2 and AVX2, picked at load time by an
// ifunc) and work on fixed-size channel blocks that the compiler keeps in vector registers.
// Arithmetic is element-wise per channel in the same order in both clones, so results do not
// depend on which clone runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../roi_geometry.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ROIOPS_NO_CLONES)
#define ROIOPS_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ROIOPS_SIMD_CLONES
#endif

namespace roiops {
namespace cpu {

constexpr int64_t kChannelBlock = 32;

// out[c] = (sum over the bin's samples of the bilinear value at channel c) / count.
// Samples outside the map (valid == false) contribute 0.
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void bin_average_nhwc(const scalar_t* __restrict image, int64_t channels,
                                         const BilinearTaps<acc_t>* __restrict taps, int64_t samples, acc_t count,
                                         acc_t* __restrict out) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, channels - c0);
    acc_t acc[kChannelBlock] = {};
    for (int64_t s = 0; s < samples; ++s) {
      const BilinearTaps<acc_t>& t = taps[s];
      if (!t.valid) continue;
      const scalar_t* p1 = image + t.o1 * channels + c0;
      const scalar_t* p2 = image + t.o2 * channels + c0;
      const scalar_t* p3 = image + t.o3 * channels + c0;
      const scalar_t* p4 = image + t.o4 * channels + c0;
      if (n == kChannelBlock) {
        for (int64_t j = 0; j < kChannelBlock; ++j) {
          acc[j] += t.w1 * static_cast<acc_t>(p1[j]) + t.w2 * static_cast<acc_t>(p2[j]) +
                    t.w3 * static_cast<acc_t>(p3[j]) + t.w4 * static_cast<acc_t>(p4[j]);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          acc[j] += t.w1 * static_cast<acc_t>(p1[j]) + t.w2 * static_cast<acc_t>(p2[j]) +
                    t.w3 * static_cast<acc_t>(p3[j]) + t.w4 * static_cast<acc_t>(p4[j]);
        }
      }
    }
    for (int64_t j = 0; j < n; ++j) out[c0 + j] = acc[j] / count;
  }
}

// out[c] / arg[c] = the largest bilinear sample of the bin at channel c and its index (first wins;
// an outside sample is a 0 that can win; no sample at all gives 0 and -1).
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void bin_max_nhwc(const scalar_t* __restrict image, int64_t channels,
                                     const BilinearTaps<acc_t>* __restrict taps, int64_t samples, acc_t* __restrict out,
                                     int32_t* __restrict arg) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, channels - c0);
    acc_t top[kChannelBlock];
    int32_t top_s[kChannelBlock];
    for (int64_t j = 0; j < kChannelBlock; ++j) {
      top[j] = -std::numeric_limits<acc_t>::infinity();
      top_s[j] = -1;
    }
    for (int64_t s = 0; s < samples; ++s) {
      const BilinearTaps<acc_t>& t = taps[s];
      const int32_t si = static_cast<int32_t>(s);
      const scalar_t* p1 = image + t.o1 * channels + c0;
      const scalar_t* p2 = image + t.o2 * channels + c0;
      const scalar_t* p3 = image + t.o3 * channels + c0;
      const scalar_t* p4 = image + t.o4 * channels + c0;
      for (int64_t j = 0; j < n; ++j) {
        const acc_t v = t.valid ? t.w1 * static_cast<acc_t>(p1[j]) + t.w2 * static_cast<acc_t>(p2[j]) +
                                      t.w3 * static_cast<acc_t>(p3[j]) + t.w4 * static_cast<acc_t>(p4[j])
                                : acc_t(0);
        // A branch-free select (all ones where v wins) that the compiler vectorizes. The first sample
        // always wins, so a bin of -inf samples gives -inf (not "no sample").
        const bool win = v > top[j] || top_s[j] < 0;
        const int32_t mask = -static_cast<int32_t>(win);
        top[j] = win ? v : top[j];
        top_s[j] = (si & mask) | (top_s[j] & ~mask);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      out[c0 + j] = top_s[j] >= 0 ? top[j] : acc_t(0);
      arg[c0 + j] = top_s[j];
    }
  }
}

// RoIPool: out[c] / arg[c] = the maximum of the bin's cells at channel c and its cell h * W + w
// (first wins; an empty bin gives 0 and -1). Compared in acc_t (float for the half types, which
// converts exactly and vectorizes, where comparing half types directly does not).
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void cell_max_nhwc(const scalar_t* __restrict image, int64_t channels, int64_t width, CellRange rows,
                                      CellRange cols, acc_t* __restrict out, int32_t* __restrict arg) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, channels - c0);
    acc_t top[kChannelBlock];
    int32_t top_i[kChannelBlock];
    for (int64_t j = 0; j < kChannelBlock; ++j) {
      top[j] = -std::numeric_limits<acc_t>::infinity();
      top_i[j] = -1;
    }
    for (int h = rows.begin; h < rows.end; ++h) {
      for (int w = cols.begin; w < cols.end; ++w) {
        const int32_t i = static_cast<int32_t>(h * width + w);
        const scalar_t* cell = image + static_cast<int64_t>(i) * channels + c0;
        for (int64_t j = 0; j < n; ++j) {
          const acc_t v = static_cast<acc_t>(cell[j]);
          const bool win = v > top[j] || top_i[j] < 0;  // the first cell always counts (-inf too)
          const int32_t mask = -static_cast<int32_t>(win);
          top[j] = win ? v : top[j];
          top_i[j] = (i & mask) | (top_i[j] & ~mask);
        }
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      out[c0 + j] = top_i[j] >= 0 ? top[j] : acc_t(0);
      arg[c0 + j] = top_i[j];
    }
  }
}

// RoIPool on an NCHW plane, one row of bins: top[j] / top_row[j] = the largest value of column
// first + j over rows [rows.begin, rows.end) and the first row holding it (-1 when no value beats
// -inf: a column of -inf or NaN). Vectorized across the columns.
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void column_max(const scalar_t* __restrict plane, int64_t width, CellRange rows, int first,
                                   int64_t n, acc_t* __restrict top, int32_t* __restrict top_row) {
  for (int64_t j = 0; j < n; ++j) {
    top[j] = -std::numeric_limits<acc_t>::infinity();
    top_row[j] = -1;
  }
  for (int h = rows.begin; h < rows.end; ++h) {
    const scalar_t* row = plane + static_cast<int64_t>(h) * width + first;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(row[j]);
      const int32_t mask = -static_cast<int32_t>(v > top[j]);
      top[j] = v > top[j] ? v : top[j];
      top_row[j] = (h & mask) | (top_row[j] & ~mask);
    }
  }
}

// dst[c] += w * src[c]: one tap of the RoIAlign backward scatter.
template <typename acc_t>
ROIOPS_SIMD_CLONES void scaled_add(acc_t* __restrict dst, acc_t w, const acc_t* __restrict src, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] += w * src[c];
}

}  // namespace cpu
}  // namespace roiops
