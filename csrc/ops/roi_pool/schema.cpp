// Schema of roi_pool and its backward. Kernels register per device (cpu.cpp, cuda.cu beside this file);
// autograd, fake kernels and argument defaults come from the op's spec in roiops/_specs.py.
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, argmax); argmax is the winning cell h * W + w of each bin, -1 for an empty bin.
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) -> (Tensor, "
      "Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool deterministic) -> "
      "Tensor");
}
