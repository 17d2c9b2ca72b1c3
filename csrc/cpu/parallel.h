// Work distribution for the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

namespace roiops {
namespace cpu {

// Runs body(i) for i in [0, n) on ATen's thread pool, handing out items one at a time: RoIs differ
// in cost (adaptive sampling grids, clipped boxes), so a static split would leave threads idle.
template <typename F>
void parallel_for_each_dynamic(int64_t n, const F& body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i);
  });
}

// Runs body(begin, end) over [0, n) in contiguous ranges, one per thread; for work that must be
// partitioned (disjoint channel ranges make the backward scatter race-free).
template <typename F>
void parallel_for_ranges(int64_t n, const F& body) {
  if (n <= 0) return;
  at::parallel_for(0, n, 1, body);
}

}  // namespace cpu
}  // namespace roiops
