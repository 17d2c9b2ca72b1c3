// RoIPool on CUDA: forward and backward, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (csrc/cpu/roi_pool_kernel.cpp), written once in
// csrc/roi_geometry.h: boxes rounded half away from zero, bins floor/ceil'ed and clipped to the map,
// max over the bin's cells in row-major order by max_rule_wins (the first NaN, else the first
// maximum; a bin of -inf gives -inf), an empty bin gives
// 0 with argmax -1, argmax = h * W + w. The geometry is computed in the opmath type
// (float for the half types), as on the CPU.
//
// Work split: one thread per pooled element (k, c, ph, pw), pw-fastest for NCHW and c-fastest for
// channels-last tensors. The backward adds each grad element into the cell its argmax names, with
// float atomics (fast path) or 64-bit fixed-point integer atomics (deterministic path, see
// cuda_common.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "../roi_checks.h"
#include "../roi_geometry.h"
#include "box_checks.cuh"
#include "cuda_common.cuh"

namespace roiops {
namespace cuda {
namespace {

struct PoolArgs {
  double spatial_scale;
  int pooled_h, pooled_w;
  bool nhwc;  // layout of the map (forward: input; backward: grad and grad_input)
  int64_t batch_size, channels, height, width;
};

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    roi_pool_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                            scalar_t* __restrict__ output, int32_t* __restrict__ argmax, Strides4 out_strides,
                            PoolArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  const int64_t HW = a.height * a.width;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    acc_t roi[5];
#pragma unroll
    for (int j = 0; j < 5; ++j) roi[j] = static_cast<acc_t>(rois[static_cast<int64_t>(k) * 5 + j]);
    const int64_t o = out_strides.at(k, c, ph, pw);
    if (!box_usable(roi[0], a.batch_size)) {  // possible only when box values went unchecked: NaN, visibly
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      argmax[o] = -1;
      continue;
    }
    const PoolGeometry<acc_t> g =
        pool_geometry<acc_t>(roi, static_cast<acc_t>(a.spatial_scale), a.pooled_h, a.pooled_w);
    const CellRange rows = pool_bin_range(g.start_h, g.bin_h, static_cast<int>(ph), H);
    const CellRange cols = pool_bin_range(g.start_w, g.bin_w, static_cast<int>(pw), W);
    const scalar_t* plane;
    int64_t cs;
    if (a.nhwc) {
      plane = input + g.batch * HW * a.channels + c;
      cs = a.channels;
    } else {
      plane = input + (g.batch * a.channels + c) * HW;
      cs = 1;
    }
    // Comparing in acc_t is comparing the scalar_t values: the conversion is exact and monotone.
    acc_t top = -std::numeric_limits<acc_t>::infinity();
    int32_t top_i = -1;
    for (int h = rows.begin; h < rows.end; ++h) {
      for (int w = cols.begin; w < cols.end; ++w) {
        const int32_t cell = h * W + w;
        const acc_t v = static_cast<acc_t>(plane[static_cast<int64_t>(cell) * cs]);
        if (max_rule_wins(v, top, top_i)) {
          top = v;
          top_i = cell;
        }
      }
    }
    output[o] = static_cast<scalar_t>(top_i >= 0 ? top : acc_t(0));
    argmax[o] = top_i;
  }
}

template <typename scalar_t, typename index_t, typename Adder>
__global__ void __launch_bounds__(kThreads)
    roi_pool_backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                             const scalar_t* __restrict__ rois, const int32_t* __restrict__ argmax,
                             Strides4 arg_strides, Adder adder, PoolArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = a.height * a.width;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    const int32_t cell = argmax[arg_strides.at(k, c, ph, pw)];
    // argmax comes from the caller: anything outside the plane is ignored, never written.
    if (cell < 0 || cell >= HW) continue;
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    const acc_t batch_index = static_cast<acc_t>(rois[static_cast<int64_t>(k) * 5]);
    if (!box_usable(batch_index, a.batch_size)) continue;  // (box values are not checked in backward)
    const int64_t n = static_cast<int64_t>(batch_index);
    const int64_t offset = a.nhwc ? (n * HW + cell) * a.channels + c : (n * a.channels + c) * HW + cell;
    adder.channel(static_cast<int64_t>(c))(offset, gv);
  }
}

// Same check and message as the CPU kernel's make_params.
PoolArgs make_args(double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                   int64_t channels, int64_t height, int64_t width, bool nhwc) {
  check_spatial_scale(spatial_scale, "roi_pool");
  return PoolArgs{spatial_scale,
                  static_cast<int>(pooled_height),
                  static_cast<int>(pooled_width),
                  nhwc,
                  batch_size,
                  channels,
                  height,
                  width};
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_height,
                                                         int64_t pooled_width) {
  check_forward_args(input, rois, pooled_height, pooled_width, "roi_pool", /*check_values=*/false);
  const bool nhwc = use_channels_last(input);
  const PoolArgs a = make_args(spatial_scale, pooled_height, pooled_width, input.size(0), input.size(1), input.size(2),
                               input.size(3), nhwc);
  const DeviceGuard device_guard(input.device());
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t K = rois.size(0);
  at::Tensor output = at::empty({K, a.channels, pooled_height, pooled_width}, input.options(), layout);
  at::Tensor argmax = at::empty({K, a.channels, pooled_height, pooled_width}, input.options().dtype(at::kInt), layout);
  if (output.numel() == 0) return {output, argmax};
  const at::Tensor in = nhwc ? input : input.contiguous();
  const at::Tensor r = rois.contiguous();
  const cudaStream_t stream = current_stream();
  const int64_t total = output.numel();
  const Strides4 os = strides_of(output);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    check_boxes_on_device<scalar_t>(r, a.batch_size, NoLimit{}, "roi_pool", stream);
    const scalar_t* in_p = in.const_data_ptr<scalar_t>();
    const scalar_t* roi_p = r.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    int32_t* arg_p = argmax.mutable_data_ptr<int32_t>();
    const int blocks = num_blocks(total);
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(blocks, kThreads, stream, roi_pool_forward_kernel<scalar_t, index_t>)(
          static_cast<index_t>(total), in_p, roi_p, out_p, arg_p, os, a);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

template <typename scalar_t, typename Adder>
void launch_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, const Adder& add,
                     const PoolArgs& a, cudaStream_t stream) {
  const int64_t total = grad.numel();
  const scalar_t* g_p = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_p = rois.const_data_ptr<scalar_t>();
  const int32_t* arg_p = argmax.const_data_ptr<int32_t>();
  const Strides4 gs = strides_of(grad);
  const Strides4 as = strides_of(argmax);
  const int blocks = num_blocks(total);
  with_index_type(total, [&](auto index) {
    using index_t = decltype(index);
    ROIOPS_LAUNCH(blocks, kThreads, stream, roi_pool_backward_kernel<scalar_t, index_t, Adder>)(
        static_cast<index_t>(total), g_p, gs, roi_p, arg_p, as, add, a);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, bool deterministic) {
  check_backward_args(grad, rois, batch_size, channels, height, width, pooled_height, pooled_width,
                      "_roi_pool_backward", /*check_values=*/false);
  check_argmax(argmax, grad, "_roi_pool_backward");
  const bool nhwc = use_channels_last(grad);
  const PoolArgs a = make_args(spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, nhwc);
  const DeviceGuard device_guard(grad.device());
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  const bool no_input = batch_size == 0 || channels == 0 || height == 0 || width == 0;
  // (at::zeros would drop a memory format given in its options: allocate with the layout, then zero.)
  if (grad.numel() == 0 || no_input) return at::empty(sizes, grad.options(), layout).zero_();
  const at::Tensor r = rois.contiguous();
  const cudaStream_t stream = current_stream();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
    result = scatter_grad_input<scalar_t>(grad, sizes, layout, nhwc, deterministic, stream, [&](auto adder) {
      launch_backward<scalar_t>(grad, r, argmax, adder, a, stream);
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("roi_pool", TORCH_FN(roi_pool_forward_cuda));
  m.impl("_roi_pool_backward", TORCH_FN(roi_pool_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
