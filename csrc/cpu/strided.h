// Element offsets into 4-D tensors of any layout, for kernels that read and write through strides.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace roiops {
namespace cpu {

// offset(a, b, c, d) = a * stride(0) + ... + d * stride(3); all strides are 0 for a tensor that is
// not 4-D (the empty argmax of avg mode), which is then never indexed.
struct Strides4 {
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  explicit Strides4(const at::Tensor& t) {
    if (t.dim() == 4) {
      s0 = t.stride(0), s1 = t.stride(1), s2 = t.stride(2), s3 = t.stride(3);
    }
  }
  int64_t operator()(int64_t a, int64_t b, int64_t c, int64_t d) const { return a * s0 + b * s1 + c * s2 + d * s3; }
};

}  // namespace cpu
}  // namespace roiops
