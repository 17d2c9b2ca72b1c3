// Box values on CUDA. By default nothing is checked on the host: the kernels meet a bad box
// themselves (box_usable) and give it NaN and no gradient, never reading out of bounds, so a forward
// call never waits for the GPU. On demand (set_device_box_checks(True)) one small kernel finds the
// first box that is not finite, has a bad batch index, or breaks an op-specific limit, and the host
// reads the result with a single sync to raise the CPU kernels' errors; never while a CUDA graph is
// being captured. The backward never checks: its boxes are those of the forward that built the graph.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include "../checks.h"
#include "../geometry.h"
#include "cuda_common.cuh"

namespace roiops {
namespace cuda {

// Whether kernels may use a box whose values were possibly not checked: its batch index is an
// integer in [0, batch_size) (a NaN, fractional or out-of-range index would read out of bounds) and
// its coordinates are finite (a NaN box gives NaN, as the docs promise, not what its rounding gives).
template <int kWidth, typename acc_t>
__device__ __forceinline__ bool box_usable(const acc_t (&box)[kWidth], int64_t batch_size) {
  bool finite = true;
  for (int j = 1; j < kWidth; ++j) finite = finite && std::isfinite(box[j]);
  const acc_t b = box[0];
  return finite && b >= acc_t(0) && b < static_cast<acc_t>(batch_size) && b == floor(b);
}

// first_bad[0 / 1 / 2]: the lowest index of a box that is not finite / has a bad batch index / is
// refused by `limit` (a functor on the box's kWidth values in acc_t); K where there is none.
template <typename scalar_t, typename Limit, int kWidth>
__global__ void __launch_bounds__(kThreads)
    find_bad_boxes_kernel(int64_t K, const scalar_t* rois, int64_t batch_size, Limit limit, long long* first_bad) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    acc_t roi[kWidth];
    load_box<kWidth>(rois, k, roi);
    bool finite = true;
    for (int j = 0; j < kWidth; ++j) finite = finite && std::isfinite(roi[j]);
    if (!finite) {
      atomicMin(first_bad, static_cast<long long>(k));
    } else if (!box_usable(roi, batch_size)) {
      atomicMin(first_bad + 1, static_cast<long long>(k));
    } else if (limit(roi)) {
      atomicMin(first_bad + 2, static_cast<long long>(k));
    }
  }
}

// A limit that refuses nothing (RoIPool).
struct NoLimit {
  template <typename acc_t>
  __device__ __forceinline__ bool operator()(const acc_t*) const {
    return false;
  }
};

// Checks the values of `rois` (contiguous, [K, kWidth], K > 0) on the device. Throws the CPU kernels'
// errors for non-finite boxes and bad batch indices; returns the first box `limit` refuses (for the
// caller's own message), or nothing. Skipped (returns nothing) when the checks are off or the
// stream is capturing a CUDA graph.
template <typename scalar_t, typename Limit, int kWidth = kBoxWidth>
std::optional<int64_t> check_boxes_on_device(const Tensor& rois, int64_t batch_size, const Limit& limit,
                                             const char* op_name, cudaStream_t stream) {
  if (!device_box_checks() || stream_is_capturing(stream)) return std::nullopt;
  const int64_t K = rois.size(0);
  Tensor first_bad = fill(empty_1d(3, ScalarType::Long, rois), static_cast<double>(K));
  ROIOPS_LAUNCH(num_blocks(K), kThreads, stream, find_bad_boxes_kernel<scalar_t, Limit, kWidth>)(
      K, rois.const_data_ptr<scalar_t>(), batch_size, limit,
      reinterpret_cast<long long*>(first_bad.mutable_data_ptr<int64_t>()));
  ROIOPS_KERNEL_LAUNCH_CHECK();
  const Tensor host = to_host(first_bad);  // the one sync
  const int64_t* bad = host.const_data_ptr<int64_t>();
  // As the CPU check reports them: the first box with either fault, non-finite first. (An error may
  // sync again, to read the box.)
  if (bad[0] < K && bad[0] <= bad[1]) {
    const std::vector<double> r = row_on_host(rois, bad[0]);
    int j = 0;
    while (j < kWidth - 1 && std::isfinite(r[j])) ++j;
    fail_nonfinite_box(op_name, bad[0], r[j], j);
  }
  if (bad[1] < K) fail_batch_index(op_name, bad[1], row_on_host(rois, bad[1])[0], batch_size);
  if (bad[2] < K) return bad[2];
  return std::nullopt;
}

}  // namespace cuda
}  // namespace roiops
