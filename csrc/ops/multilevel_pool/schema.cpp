// Schema of multilevel_pool and its backward: FPN pooling in one call. Each box is pooled from the
// pyramid level levels[k] (computed by the caller's level rule, on the device), with that level's
// scale; the result equals a roi_align (mode "avg" or "max") or roi_pool (mode "roi_pool") call per
// level on that level's boxes. Kernels: cpu.cpp and cuda.cu beside this file; fake kernel and
// autograd: roiops/_ops.py (MULTILEVEL).
#include "../../common/library.h"
#include "../../common/tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Returns (output, argmax); argmax as the single-level op of the mode gives it (empty for "avg").
  m.def(
      "multilevel_pool(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned, str mode) -> (Tensor, Tensor)");
  // Returns the gradient of every level's map.
  m.def(
      "_multilevel_pool_backward(Tensor grad, Tensor rois, Tensor levels, Tensor argmax, float[] spatial_scales, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, SymInt[] widths, "
      "int sampling_ratio, bool aligned, str mode, bool deterministic) -> Tensor[]");
}
