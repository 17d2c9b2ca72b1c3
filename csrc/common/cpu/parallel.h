// Work distribution for the CPU kernels.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../tensor.h"
#include "tuning.h"

namespace roiops {
namespace cpu {

// Runs body(i) for i in [0, n) on ATen's thread pool, handing out items one at a time: RoIs differ
// in cost (adaptive sampling grids, clipped boxes), so a static split would leave threads idle.
// `work_per_item` is a rough cost estimate used only to decide whether to go parallel.
template <typename F>
void parallel_for_each_dynamic(int64_t n, int64_t work_per_item, const F& body) {
  if (n <= 0) return;
  if (n == 1 || n * work_per_item < kMinParallelWork) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, static_cast<int64_t>(torch::stable::get_num_threads()));
  torch::stable::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i);
  });
}

// Runs body(begin, end) over [0, n) in contiguous ranges, one per thread; for work that must be
// partitioned (disjoint channel ranges make the backward scatter race-free).
template <typename F>
void parallel_for_ranges(int64_t n, int64_t work_per_item, const F& body) {
  if (n <= 0) return;
  if (n * work_per_item < kMinParallelWork) {
    body(0, n);
    return;
  }
  torch::stable::parallel_for(0, n, 1, body);
}

// parallel_for_each_dynamic with per-worker state: make() is called once by each worker and its
// result passed to body(state, i) for the items that worker takes (scratch buffers allocated once
// per call and worker, not once per item).
template <typename Make, typename F>
void parallel_for_each_dynamic_with(int64_t n, int64_t work_per_item, const Make& make, const F& body) {
  if (n <= 0) return;
  if (n == 1 || n * work_per_item < kMinParallelWork) {
    auto state = make();
    for (int64_t i = 0; i < n; ++i) body(state, i);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, static_cast<int64_t>(torch::stable::get_num_threads()));
  torch::stable::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto state = make();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(state, i);
  });
}

}  // namespace cpu
}  // namespace roiops
