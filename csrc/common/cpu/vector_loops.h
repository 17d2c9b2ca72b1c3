// Inner loops of the channels-last (NHWC) CPU kernels: one RoI bin against contiguous channel
// vectors. They are compiled twice on x86-64 (baseline SSE2 and AVX2, picked at load time by an
// ifunc) and work on fixed-size channel blocks that the compiler keeps in vector registers.
// Arithmetic is element-wise per channel in the same order in both clones, so results do not
// depend on which clone runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../geometry.h"
#include "tuning.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ROIOPS_NO_CLONES)
#define ROIOPS_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ROIOPS_SIMD_CLONES
#endif

namespace roiops {
namespace cpu {

// sum[c] += the bilinear value of each of the bin's samples at channel c, in order (sum[c] starts
// from 0 when `first`: a bin may come in pieces). Samples outside the map (valid == false) add nothing.
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void bin_sum_nhwc(const scalar_t* __restrict image, int64_t channels,
                                     const BilinearTaps<acc_t>* __restrict taps, int64_t samples, bool first,
                                     acc_t* __restrict sum) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, channels - c0);
    acc_t acc[kChannelBlock];
    for (int64_t j = 0; j < kChannelBlock; ++j) acc[j] = first || j >= n ? acc_t(0) : sum[c0 + j];
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
    for (int64_t j = 0; j < n; ++j) sum[c0 + j] = acc[j];
  }
}

// top[c] / arg[c] = the maximum of the bin's samples at channel c by the max rule and its sample
// index (ids[s] for the s-th of `samples`), carried over from the bin's earlier pieces unless
// `first` (then arg[c] starts at -1: no sample yet). An outside sample is a 0 that can win.
template <typename scalar_t, typename acc_t>
ROIOPS_SIMD_CLONES void bin_max_nhwc(const scalar_t* __restrict image, int64_t channels,
                                     const BilinearTaps<acc_t>* __restrict taps, const int32_t* __restrict ids,
                                     int64_t samples, bool first, acc_t* __restrict top_io, int32_t* __restrict arg) {
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, channels - c0);
    acc_t top[kChannelBlock];
    int32_t top_s[kChannelBlock];
    for (int64_t j = 0; j < kChannelBlock; ++j) {
      const bool fresh = first || j >= n;
      top[j] = fresh ? -std::numeric_limits<acc_t>::infinity() : top_io[c0 + j];
      top_s[j] = fresh ? -1 : arg[c0 + j];
    }
    for (int64_t s = 0; s < samples; ++s) {
      const BilinearTaps<acc_t>& t = taps[s];
      const int32_t si = ids[s];
      const scalar_t* p1 = image + t.o1 * channels + c0;
      const scalar_t* p2 = image + t.o2 * channels + c0;
      const scalar_t* p3 = image + t.o3 * channels + c0;
      const scalar_t* p4 = image + t.o4 * channels + c0;
      // The validity test sits outside the channel loops, and a full block runs with a fixed trip
      // count: the half types' conversions vectorize only so (bfloat16 was 4-5x float32 before).
      const auto fold = [&](int64_t len, auto value) {
        for (int64_t j = 0; j < len; ++j) {
          const acc_t v = value(j);
          const int32_t mask = -static_cast<int32_t>(max_rule_wins(v, top[j], top_s[j]));
          top[j] = mask ? v : top[j];
          top_s[j] = (si & mask) | (top_s[j] & ~mask);
        }
      };
      const auto sample = [&](int64_t j) {
        return t.w1 * static_cast<acc_t>(p1[j]) + t.w2 * static_cast<acc_t>(p2[j]) + t.w3 * static_cast<acc_t>(p3[j]) +
               t.w4 * static_cast<acc_t>(p4[j]);
      };
      const auto outside = [](int64_t) { return acc_t(0); };
      if (!t.valid) {
        fold(n, outside);
      } else if (n == kChannelBlock) {
        fold(kChannelBlock, sample);
      } else {
        fold(n, sample);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      top_io[c0 + j] = top[j];
      arg[c0 + j] = top_s[j];
    }
  }
}

// RoIPool: out[c] / arg[c] = the maximum of the bin's cells at channel c by the max rule and its
// cell h * W + w (an empty bin gives 0 and -1). Compared in acc_t (float for the half types, which converts exactly and
// vectorizes, where comparing half types directly does not).
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
        const auto fold = [&](int64_t len) {
          for (int64_t j = 0; j < len; ++j) {
            const acc_t v = static_cast<acc_t>(cell[j]);
            const int32_t mask = -static_cast<int32_t>(max_rule_wins(v, top[j], top_i[j]));
            top[j] = mask ? v : top[j];
            top_i[j] = (i & mask) | (top_i[j] & ~mask);
          }
        };
        if (n == kChannelBlock) {  // a fixed trip count: the half types' conversions vectorize only so
          fold(kChannelBlock);
        } else {
          fold(n);
        }
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      out[c0 + j] = top_i[j] >= 0 ? top[j] : acc_t(0);
      arg[c0 + j] = top_i[j];
    }
  }
}

// RoIPool on an NCHW plane, one row of bins: top[j] / top_row[j] = the maximum of column first + j
// over rows [rows.begin, rows.end) by the max rule (its first NaN, else its largest value) and the
// first row holding it. Vectorized across the columns.
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
      const int32_t mask = -static_cast<int32_t>(max_rule_wins(v, top[j], top_row[j]));
      top[j] = mask ? v : top[j];
      top_row[j] = (h & mask) | (top_row[j] & ~mask);
    }
  }
}

// dst[c] += w * src[c]: one tap of a backward scatter, or one weighted cell of a channels-last sum.
template <typename acc_t, typename src_t>
ROIOPS_SIMD_CLONES void scaled_add(acc_t* __restrict dst, acc_t w, const src_t* __restrict src, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] += w * static_cast<acc_t>(src[c]);
}

}  // namespace cpu
}  // namespace roiops
