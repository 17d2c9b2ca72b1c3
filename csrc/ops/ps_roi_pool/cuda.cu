// Position-sensitive RoIPool on CUDA: forward and backward, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file; geometry in params.h): the
// average of input channel (c * PH + i) * PW + j over the rounded bin's cells, in the opmath type.
//
// Work split: one thread per pooled element (k, c, i, j). The backward adds each grad element's
// share to its bin's cells in its own input channel, with float atomics (fast path) or fixed-point
// integer atomics with per-input-channel exponents (deterministic path, ps_grad_input).
#include <array>
#include <cmath>
#include <limits>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "../../common/cuda/position_sensitive.cuh"
#include "../../common/geometry.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

constexpr const char* kOp = "ps_roi_pool";

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    ps_roi_pool_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                               scalar_t* __restrict__ output, int32_t* __restrict__ mapping, Strides4 out_strides,
                               PsCall a, PsMapLayout layout) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, i, j;
    decompose_pooled_index<index_t>(e, a.nhwc, static_cast<index_t>(a.out_channels), a.pooled_h, a.pooled_w, k, c, i,
                                    j);
    const int64_t c_in = ps_input_channel(c, i, j, a.pooled_h, a.pooled_w);
    const int64_t o = out_strides.at(k, c, i, j);
    mapping[o] = static_cast<int32_t>(c_in);
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(rois, static_cast<int64_t>(k), box);
    if (!box_usable(box, a.batch)) {  // only when box values went unchecked: NaN, visibly
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    const PoolGeometry<acc_t> g = ps_pool_geometry(box, a);
    const CellRange rows = pool_bin_range(g.start_h, g.bin_h, static_cast<int>(i), H);
    const CellRange cols = pool_bin_range(g.start_w, g.bin_w, static_cast<int>(j), W);
    const scalar_t* plane = input + layout.plane(g.batch, c_in);
    acc_t sum = 0;
    for (int h = rows.begin; h < rows.end; ++h) {
      for (int w = cols.begin; w < cols.end; ++w) {
        sum += static_cast<acc_t>(plane[(static_cast<int64_t>(h) * W + w) * layout.cell]);
      }
    }
    const int64_t area = static_cast<int64_t>(rows.end - rows.begin) * (cols.end - cols.begin);
    output[o] = static_cast<scalar_t>(area > 0 ? sum / static_cast<acc_t>(area) : acc_t(0));
  }
}

template <typename scalar_t, typename index_t, typename Adder>
__global__ void __launch_bounds__(kThreads)
    ps_roi_pool_backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                                const scalar_t* __restrict__ rois, Adder adder, PsCall a, PsMapLayout layout) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, i, j;
    decompose_pooled_index<index_t>(e, a.nhwc, static_cast<index_t>(a.out_channels), a.pooled_h, a.pooled_w, k, c, i,
                                    j);
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, i, j)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(rois, static_cast<int64_t>(k), box);
    if (!box_usable(box, a.batch)) continue;  // (box values are not checked in backward)
    const PoolGeometry<acc_t> g = ps_pool_geometry(box, a);
    const CellRange rows = pool_bin_range(g.start_h, g.bin_h, static_cast<int>(i), H);
    const CellRange cols = pool_bin_range(g.start_w, g.bin_w, static_cast<int>(j), W);
    const int64_t area = static_cast<int64_t>(rows.end - rows.begin) * (cols.end - cols.begin);
    if (area <= 0) continue;
    const int64_t c_in = ps_input_channel(c, i, j, a.pooled_h, a.pooled_w);
    const int64_t base = layout.plane(g.batch, c_in);
    const acc_t share = gv / static_cast<acc_t>(area);
    const auto add = adder.channel(c_in);
    for (int h = rows.begin; h < rows.end; ++h) {
      for (int w = cols.begin; w < cols.end; ++w) add(base + (static_cast<int64_t>(h) * W + w) * layout.cell, share);
    }
  }
}

std::tuple<Tensor, Tensor> ps_roi_pool_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                    int64_t pooled_height, int64_t pooled_width) {
  const PsCall a = ps_forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, false);
  const DeviceGuard device_guard(input);
  const std::array<int64_t, 4> sizes{a.num_rois, a.out_channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, a.nhwc);
  Tensor mapping = empty_4d(sizes, ScalarType::Int, input, a.nhwc);
  if (output.numel() == 0) return {output, mapping};
  const Tensor r = make_contiguous(rois);
  const Tensor in = make_contiguous(input, a.nhwc);
  const cudaStream_t stream = current_stream(input);
  const int64_t total = output.numel();
  dispatch_floating(input.scalar_type(), kOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    check_boxes_on_device<scalar_t>(r, a.batch, NoLimit{}, kOp, stream);
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(num_blocks(total), kThreads, stream, ps_roi_pool_forward_kernel<scalar_t, index_t>)(
          static_cast<index_t>(total), in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), mapping.mutable_data_ptr<int32_t>(), strides_of(output), a,
          PsMapLayout(a));
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
  return {output, mapping};
}

Tensor ps_roi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& channel_mapping,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width, bool deterministic) {
  const char* op = "_ps_roi_pool_backward";
  const PsCall a = ps_backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                                    height, width, op, false);
  check_channel_mapping(channel_mapping, grad, op);
  const DeviceGuard device_guard(grad);
  const Tensor r = make_contiguous(rois);
  return ps_grad_input(grad, a, deterministic, op, [&](auto type_tag, auto adder, cudaStream_t stream) {
    using scalar_t = decltype(type_tag);
    const int64_t total = grad.numel();
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(num_blocks(total), kThreads, stream,
                    ps_roi_pool_backward_kernel<scalar_t, index_t, decltype(adder)>)(
          static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), strides_of(grad), r.const_data_ptr<scalar_t>(),
          adder, a, PsMapLayout(a));
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("ps_roi_pool", TORCH_BOX(&ps_roi_pool_forward_cuda));
  m.impl("_ps_roi_pool_backward", TORCH_BOX(&ps_roi_pool_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
