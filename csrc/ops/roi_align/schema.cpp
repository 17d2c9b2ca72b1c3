// Schema of roi_align and its backward. Kernels register per device (cpu.cpp, cuda.cu beside this file);
// autograd, fake kernels and argument defaults come from the op's spec in roiops/_specs.py.
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, argmax). argmax holds, in "max" mode, the index of the winning sample within its
  // bin's sampling grid (-1 where the bin has no sample); in "avg" mode it is an empty int32 tensor.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, str pool_mode) -> (Tensor, Tensor)");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned, str pool_mode, bool deterministic) -> Tensor");
}
