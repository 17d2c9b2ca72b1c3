// roi_align's CUDA kernels as functions of validated parameters, for ops built on them
// (multilevel_pool). Included by .cu sources only.
#pragma once

#include "../../common/cuda/cuda_common.cuh"
#include "params.h"

namespace roiops {
namespace cuda {

// Pools the boxes `a` selects (AlignParams::pools) into output and argmax, allocated by the caller;
// rois contiguous. No box check and no host sync.
void roi_align_forward_into(const Tensor& input, const Tensor& rois, const AlignParams& a, Tensor& output,
                            Tensor& argmax, cudaStream_t stream);

// The input gradient [a.batch, a.channels, a.height, a.width] from the boxes `a` selects.
Tensor roi_align_backward_scatter(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const AlignParams& a,
                                  bool deterministic, cudaStream_t stream);

}  // namespace cuda
}  // namespace roiops
