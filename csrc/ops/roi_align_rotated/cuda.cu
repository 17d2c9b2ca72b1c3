// Rotated RoIAlign on CUDA: forward and backward (average pooling), NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file), written once in geometry.h
// beside this file: the same sample positions, taps, weights and sample order, float accumulation for
// the half types. One thread per pooled output element (k, c, ph, pw), visiting every sample of its
// bin (rotated samples are not separable: no clipping). The backward scatters with float atomics or,
// deterministic, with the fixed-point adder of cuda_common.cuh.
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "geometry.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

constexpr const char* kOp = "roi_align_rotated";

// The geometry of box k, or false for a box the kernels skip: not finite, a bad batch index, or an
// adaptive grid over kMaxRotatedSamplesPerBox (only when the box values went unchecked, see box_checks.cuh).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ bool load_geometry(const scalar_t* rois, int64_t k, const RotatedParams& p,
                                              RotatedGeometry<acc_t>& g) {
  acc_t box[kRotatedBoxWidth];
  load_box<kRotatedBoxWidth>(rois, k, box);
  if (!box_usable(box, p.batch)) return false;
  g = box_geometry(box, p);
  return within_sample_limit(g, p);
}

// The device check's op-specific limit (box_checks.cuh): the adaptive grid of a box.
struct RotatedLimit {
  RotatedParams p;
  template <typename acc_t>
  __device__ __forceinline__ bool operator()(const acc_t* box) const {
    return !within_sample_limit(box_geometry(box, p), p);
  }
};

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                   scalar_t* __restrict__ output, Strides4 out_strides, RotatedParams p) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, p.nhwc, static_cast<index_t>(p.channels), p.pooled_h, p.pooled_w, k, c, ph, pw);
    const int64_t o = out_strides.at(k, c, ph, pw);
    RotatedGeometry<acc_t> g;
    if (!load_geometry(rois, k, p, g)) {  // a refused box: NaN, visibly
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    int64_t base, cs;
    plane_base(p, g.batch, c, base, cs);
    const scalar_t* plane = input + base;
    acc_t sum = acc_t(0);
    for (int iy = 0; iy < g.grid_h; ++iy) {
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const BilinearTaps<acc_t> t = rotated_sample_taps(g, static_cast<int>(ph), static_cast<int>(pw), iy, ix, H, W);
        if (!t.valid) continue;
        sum += t.w1 * static_cast<acc_t>(plane[t.o1 * cs]) + t.w2 * static_cast<acc_t>(plane[t.o2 * cs]) +
               t.w3 * static_cast<acc_t>(plane[t.o3 * cs]) + t.w4 * static_cast<acc_t>(plane[t.o4 * cs]);
      }
    }
    output[o] = static_cast<scalar_t>(sum / g.count);
  }
}

template <typename scalar_t, typename index_t, typename Adder>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                    const scalar_t* __restrict__ rois, Adder adder, RotatedParams p) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, p.nhwc, static_cast<index_t>(p.channels), p.pooled_h, p.pooled_w, k, c, ph, pw);
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    RotatedGeometry<acc_t> g;
    if (!load_geometry(rois, k, p, g)) continue;  // a refused box takes no gradient
    int64_t base, cs;
    plane_base(p, g.batch, c, base, cs);
    const auto add = adder.channel(static_cast<int64_t>(c));
    const acc_t gs = gv / g.count;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const BilinearTaps<acc_t> t = rotated_sample_taps(g, static_cast<int>(ph), static_cast<int>(pw), iy, ix, H, W);
        if (!t.valid) continue;
        add(base + t.o1 * cs, t.w1 * gs);
        add(base + t.o2 * cs, t.w2 * gs);
        add(base + t.o3 * cs, t.w3 * gs);
        add(base + t.o4 * cs, t.w4 * gs);
      }
    }
  }
}

std::tuple<Tensor, Tensor> roi_align_rotated_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                          int64_t pooled_height, int64_t pooled_width,
                                                          int64_t sampling_ratio, bool aligned, bool clockwise) {
  const RotatedParams p = rotated_params(forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp,
                                                      /*check_values=*/false, kRotatedBoxWidth),
                                         sampling_ratio, aligned, clockwise, kOp);
  const DeviceGuard device_guard(input);
  const std::array<int64_t, 4> sizes{p.num_rois, p.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  const Tensor argmax = empty_1d(0, ScalarType::Int, input);
  if (output.numel() == 0) return {output, argmax};
  const Tensor in = p.nhwc ? input : make_contiguous(input);
  const Tensor r = make_contiguous(rois);
  const cudaStream_t stream = current_stream(input);
  const int64_t total = output.numel();
  dispatch_floating(input.scalar_type(), kOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    using acc_t = opmath_t<scalar_t>;
    if (const auto refused =
            check_boxes_on_device<scalar_t, RotatedLimit, kRotatedBoxWidth>(r, p.batch, RotatedLimit{p}, kOp, stream)) {
      const std::vector<double> box = row_on_host(r, *refused);
      acc_t values[kRotatedBoxWidth];
      for (int j = 0; j < kRotatedBoxWidth; ++j) values[j] = static_cast<acc_t>(box[j]);
      fail_rotated_samples(kOp, *refused, box.data(),
                           rotated_samples_per_box(box_geometry(values, p), p.pooled_h, p.pooled_w));
    }
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(num_blocks(total), kThreads, stream, forward_kernel<scalar_t, index_t>)(
          static_cast<index_t>(total), in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), strides_of(output), p);
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

Tensor roi_align_rotated_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& /*argmax: none*/,
                                       double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                       int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                       int64_t sampling_ratio, bool aligned, bool clockwise, bool deterministic) {
  const char* op = "_roi_align_rotated_backward";
  const RotatedParams p =
      rotated_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                                   width, op, /*check_values=*/false, kRotatedBoxWidth),
                     sampling_ratio, aligned, clockwise, op);
  const DeviceGuard device_guard(grad);
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  if (grad.numel() == 0 || batch_size == 0 || channels == 0 || height == 0 || width == 0) {
    return zero(empty_4d(sizes, grad.scalar_type(), grad, p.nhwc));
  }
  const Tensor r = make_contiguous(rois);
  const cudaStream_t stream = current_stream(grad);
  const int64_t total = grad.numel();
  Tensor result;
  dispatch_floating(grad.scalar_type(), op, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    result = scatter_grad_input<scalar_t>(grad, sizes, p.nhwc, deterministic, stream, [&](auto adder) {
      using Adder = decltype(adder);
      with_index_type(total, [&](auto index) {
        using index_t = decltype(index);
        ROIOPS_LAUNCH(num_blocks(total), kThreads, stream, backward_kernel<scalar_t, index_t, Adder>)(
            static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), strides_of(grad),
            r.const_data_ptr<scalar_t>(), adder, p);
      });
      ROIOPS_KERNEL_LAUNCH_CHECK();
    });
  });
  return result;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("roi_align_rotated", TORCH_BOX(&roi_align_rotated_forward_cuda));
  m.impl("_roi_align_rotated_backward", TORCH_BOX(&roi_align_rotated_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
