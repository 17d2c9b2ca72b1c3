// Schema of ps_roi_pool (position-sensitive RoIPool, R-FCN: the average of each rounded bin) and its
// backward, with torchvision's argument order. Kernels register per device (cpu.cpp, cuda.cu beside
// this file); autograd, fake kernels and argument defaults come from the op's spec in roiops/_ops.py.
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, channel_mapping), as ps_roi_align.
  m.def(
      "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) -> "
      "(Tensor, Tensor)");
  m.def(
      "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "bool deterministic) -> Tensor");
}
