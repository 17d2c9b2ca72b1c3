// RoIPool on CUDA: forward and backward, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file), written once in
// csrc/common/geometry.h: boxes rounded half away from zero, bins floor/ceil'ed and clipped to the map,
// max over the bin's cells in row-major order by max_rule_wins (the first NaN, else the first
// maximum; a bin of -inf gives -inf), an empty bin gives
// 0 with argmax -1, argmax = h * W + w. The geometry is computed in the opmath type
// (float for the half types), as on the CPU.
//
// Work split: one thread per pooled element (k, c, ph, pw), pw-fastest for NCHW and c-fastest for
// channels-last tensors. The backward adds each grad element into the cell its argmax names, with
// float atomics (fast path) or 64-bit fixed-point integer atomics (deterministic path, see
// cuda_common.cuh).
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "../../common/geometry.h"
#include "cuda_kernels.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    roi_pool_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                            scalar_t* __restrict__ output, int32_t* __restrict__ argmax, Strides4 out_strides,
                            PoolParams a) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  const int64_t HW = a.height * a.width;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    if (!a.pools(k)) continue;  // (another call writes it)
    acc_t roi[kBoxWidth];
    load_box<kBoxWidth>(rois, static_cast<int64_t>(k), roi);
    const int64_t o = out_strides.at(k, c, ph, pw);
    if (!box_usable(roi, a.batch)) {  // possible only when box values went unchecked: NaN, visibly
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
                             Strides4 arg_strides, Adder adder, PoolParams a) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t HW = a.height * a.width;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    if (!a.pools(k)) continue;
    const int32_t cell = argmax[arg_strides.at(k, c, ph, pw)];
    // argmax comes from the caller: anything outside the plane is ignored, never written.
    if (cell < 0 || cell >= HW) continue;
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(rois, static_cast<int64_t>(k), box);
    if (!box_usable(box, a.batch)) continue;  // (box values are not checked in backward)
    const int64_t n = static_cast<int64_t>(box[0]);
    const int64_t offset = a.nhwc ? (n * HW + cell) * a.channels + c : (n * a.channels + c) * HW + cell;
    adder.channel(static_cast<int64_t>(c))(offset, gv);
  }
}

template <typename scalar_t, typename Adder>
void launch_backward(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const Adder& add,
                     const PoolParams& a, cudaStream_t stream) {
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
  ROIOPS_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void roi_pool_forward_into(const Tensor& input, const Tensor& rois, const PoolParams& a, Tensor& output, Tensor& argmax,
                           cudaStream_t stream) {
  const Tensor in = a.nhwc ? input : make_contiguous(input);
  const int64_t total = output.numel();
  const Strides4 os = strides_of(output);
  dispatch_floating(input.scalar_type(), "roi_pool", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* in_p = in.const_data_ptr<scalar_t>();
    const scalar_t* roi_p = rois.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    int32_t* arg_p = argmax.mutable_data_ptr<int32_t>();
    const int blocks = num_blocks(total);
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(blocks, kThreads, stream, roi_pool_forward_kernel<scalar_t, index_t>)(
          static_cast<index_t>(total), in_p, roi_p, out_p, arg_p, os, a);
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
}

Tensor roi_pool_backward_scatter(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const PoolParams& a,
                                 bool deterministic, cudaStream_t stream) {
  const std::array<int64_t, 4> sizes{a.batch, a.channels, a.height, a.width};
  Tensor result;
  dispatch_floating(grad.scalar_type(), "_roi_pool_backward", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    result = scatter_grad_input<scalar_t>(grad, sizes, a.nhwc, deterministic, stream, [&](auto adder) {
      launch_backward<scalar_t>(grad, rois, argmax, adder, a, stream);
    });
  });
  return result;
}

namespace {

std::tuple<Tensor, Tensor> roi_pool_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t pooled_height, int64_t pooled_width) {
  const PoolParams a = forward_call(input, rois, spatial_scale, pooled_height, pooled_width, "roi_pool",
                                    /*check_values=*/false);
  const DeviceGuard device_guard(input);
  const std::array<int64_t, 4> sizes{a.num_rois, a.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, a.nhwc);
  Tensor argmax = empty_4d(sizes, ScalarType::Int, input, a.nhwc);
  if (output.numel() == 0) return {output, argmax};
  const Tensor r = make_contiguous(rois);
  const cudaStream_t stream = current_stream(input);
  dispatch_floating(input.scalar_type(), "roi_pool", [&](auto type_tag) {
    check_boxes_on_device<decltype(type_tag)>(r, a.batch, NoLimit{}, "roi_pool", stream);
  });
  roi_pool_forward_into(input, r, a, output, argmax, stream);
  return {output, argmax};
}

Tensor roi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, bool deterministic) {
  const char* op = "_roi_pool_backward";
  const PoolParams a = backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                                     height, width, op, /*check_values=*/false);
  check_argmax(argmax, grad, op);
  const DeviceGuard device_guard(grad);
  const bool no_input = batch_size == 0 || channels == 0 || height == 0 || width == 0;
  if (grad.numel() == 0 || no_input) {
    return zero(empty_4d({batch_size, channels, height, width}, grad.scalar_type(), grad, a.nhwc));
  }
  return roi_pool_backward_scatter(grad, make_contiguous(rois), argmax, a, deterministic, current_stream(grad));
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("roi_pool", TORCH_BOX(&roi_pool_forward_cuda));
  m.impl("_roi_pool_backward", TORCH_BOX(&roi_pool_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
