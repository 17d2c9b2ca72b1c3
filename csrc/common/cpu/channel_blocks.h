// Channel blocks: a dense RoI op reads each map cell many times, RoI after RoI; a whole map does not
// stay in cache (111 MB for an FPN P2 level), a block of kChannelBlock of its channels does (14 MB).
// The kernels pack one block at a time into a scratch, cell after cell with the block's channels
// contiguous (the layout the channels-last SIMD loops read), and pool every RoI from it.
#pragma once

#include "../tensor.h"

#include <algorithm>
#include <cstdint>

#include "parallel.h"
#include "tuning.h"
#include "vector_loops.h"

namespace roiops {
namespace cpu {

// Packs channels [c0, c0 + n) of an [N, C, H, W] map, NCHW or channels-last (nhwc), into dst as
// [N, H, W, n]. Map rows are handed out to threads.
template <typename scalar_t>
void pack_channel_block(const scalar_t* in, bool nhwc, int64_t N, int64_t C, int64_t H, int64_t W, int64_t c0,
                        int64_t n, scalar_t* dst) {
  const int64_t HW = H * W;
  parallel_for_ranges(N * H, W * n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // map row r: image r / H, row r % H
      scalar_t* row = dst + r * W * n;
      if (nhwc) {
        const scalar_t* src = in + r * W * C + c0;
        for (int64_t w = 0; w < W; ++w) std::copy(src + w * C, src + w * C + n, row + w * n);
      } else {
        const scalar_t* src = in + ((r / H * C + c0) * H + r % H) * W;
        for (int64_t w = 0; w < W; ++w)
          for (int64_t j = 0; j < n; ++j) row[w * n + j] = src[j * HW + w];
      }
    }
  });
}

// Calls pool(block, c0, n) for the blocks [c0, c0 + n) of kChannelBlock channels of `in` ([N, C, H, W],
// contiguous in its layout: channels-last when nhwc), each packed in turn into one scratch as [N, H, W, n].
template <typename scalar_t, typename F>
void for_each_channel_block(const Tensor& in, bool nhwc, const F& pool) {
  const int64_t N = in.size(0), C = in.size(1), H = in.size(2), W = in.size(3);
  const Tensor scratch = empty_1d(N * H * W * std::min(C, kChannelBlock), in.scalar_type(), in);
  scalar_t* block = scratch.mutable_data_ptr<scalar_t>();
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
    const int64_t n = std::min(kChannelBlock, C - c0);
    pack_channel_block(in.const_data_ptr<scalar_t>(), nhwc, N, C, H, W, c0, n, block);
    pool(static_cast<const scalar_t*>(block), c0, n);
  }
}

}  // namespace cpu
}  // namespace roiops
