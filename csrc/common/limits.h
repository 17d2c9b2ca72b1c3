// The limits on the ops' arguments, each defined once. checks.cpp and the kernels enforce them;
// roiops._C.limits hands them to the Python layer and the fake kernels. They bound the work and
// memory of one call and keep per-plane and per-bin indices within 32 bits (docs/semantics.md, Limits).
#pragma once

#include <cstdint>

namespace roiops {

// Bins per side of the output (output_size).
constexpr int64_t kMaxPooledSize = int64_t(1) << 20;
// Samples per RoIAlign bin: a sampling_ratio above 4096, or an adaptive grid that large, is refused.
constexpr int64_t kMaxSamplesPerBin = int64_t(1) << 24;
// Samples per box (all bins) of an adaptive rotated RoIAlign grid: rotated samples cannot be clipped
// to the map a row at a time, so each is visited; about one sample per cell, a box of 2048 x 2048
// cells. (A positive sampling_ratio is bounded by kMaxSamplesPerBin, whatever the box.)
constexpr int64_t kMaxRotatedSamplesPerBox = int64_t(1) << 22;
// Cells per feature map plane (H * W), so that a plane offset fits an int32.
constexpr int64_t kMaxPlaneCells = (int64_t(1) << 31) - 1;

}  // namespace roiops
