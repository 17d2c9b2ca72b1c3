// Element offsets into 4-D tensors of any layout, for the CPU and CUDA kernels that read and write
// through strides.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "roi_geometry.h"  // ROIOPS_HOST_DEVICE

namespace roiops {

// at(a, b, c, d) = a * stride(0) + b * stride(1) + c * stride(2) + d * stride(3).
struct Strides4 {
  int64_t s0, s1, s2, s3;
  ROIOPS_HOST_DEVICE int64_t at(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return a * s0 + b * s1 + c * s2 + d * s3;
  }
};

// All strides are 0 for a tensor that is not 4-D (the empty argmax of avg mode), never indexed then.
inline Strides4 strides_of(const at::Tensor& t) {
  if (t.dim() != 4) return Strides4{0, 0, 0, 0};
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

}  // namespace roiops
