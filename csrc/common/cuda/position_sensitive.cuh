// The backward of a position-sensitive op on CUDA (common/position_sensitive.h), shared by ps_roi_align
// and ps_roi_pool: the input gradient, into which the op's kernel scatters.
#pragma once

#include <array>

#include "../position_sensitive.h"
#include "cuda_common.cuh"

namespace roiops {
namespace cuda {

// Zeros for a call with nothing to scatter; otherwise launch(type_tag, adder, stream) launches the
// op's kernel with the fast or the deterministic adder (scatter_grad_input). The deterministic path's
// fixed-point exponents are per input channel: grad viewed as [K, C_in, 1, 1] has one column per input
// channel, and channel c_in receives only grad[:, c, i, j] of its own (c, i, j).
template <typename Launch>
Tensor ps_grad_input(const Tensor& grad, const PsCall& a, bool deterministic, const char* op_name,
                     const Launch& launch) {
  const std::array<int64_t, 4> sizes{a.batch, a.channels, a.height, a.width};
  const bool no_input = a.batch == 0 || a.channels == 0 || a.height == 0 || a.width == 0;
  if (grad.numel() == 0 || no_input) return zero(empty_4d(sizes, grad.scalar_type(), grad, a.nhwc));
  const cudaStream_t stream = current_stream(grad);
  const Tensor by_input_channel = torch::stable::reshape(make_contiguous(grad), {grad.size(0), a.channels, 1, 1});
  Tensor result;
  dispatch_floating(grad.scalar_type(), op_name, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    result = scatter_grad_input<scalar_t>(by_input_channel, sizes, a.nhwc, deterministic, stream,
                                          [&](auto adder) { launch(type_tag, adder, stream); });
  });
  return result;
}

}  // namespace cuda
}  // namespace roiops
