// Schema of prroi_pool (Precise RoI Pooling: the exact mean of each bin) and its two backwards, one
// for the input and one for the boxes. Kernels register per device (cpu.cpp, cuda.cu beside this
// file); autograd, fake kernels and argument defaults come from the op's spec in roiops/_ops.py.
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, argmax); average pooling only, so argmax is always an empty int32 tensor (the
  // common convention).
  m.def(
      "prroi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "bool aligned) -> (Tensor, Tensor)");
  m.def(
      "_prroi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool aligned, "
      "bool deterministic) -> Tensor");
  // The gradient of the boxes ([K, 5]; the batch index column gets 0), which needs the input itself.
  m.def(
      "_prroi_pool_rois_backward(Tensor grad, Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, bool aligned) -> Tensor");
}
