// Schema of roi_pool and its backward. Kernels register per device (cpu/, cuda/); autograd, fake
// kernels and argument defaults live in roiops/_ops.py.
#include <torch/library.h>

#include "library.h"

TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, argmax); argmax is the winning cell h * W + w of each bin, -1 for an empty bin.
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) -> (Tensor, "
      "Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool deterministic) -> "
      "Tensor");
}
