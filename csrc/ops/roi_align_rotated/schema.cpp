// Schema of roi_align_rotated and its backward. Kernels register per device (cpu.cpp, cuda.cu beside
// this file); autograd, fake kernels and argument defaults come from the op's spec in roiops/_ops.py.
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // rois: [K, 6] (batch index, centre x, centre y, width, height, angle in degrees). Returns (output,
  // argmax); average pooling only, so argmax is always an empty int32 tensor (the common convention).
  m.def(
      "roi_align_rotated(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, bool clockwise) -> (Tensor, Tensor)");
  m.def(
      "_roi_align_rotated_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned, bool clockwise, bool deterministic) -> Tensor");
}
