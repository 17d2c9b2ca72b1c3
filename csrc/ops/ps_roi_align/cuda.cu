// Position-sensitive RoIAlign on CUDA: forward and backward, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file): RoIAlign's average with
// aligned=True over input channel (c * PH + i) * PW + j (common/position_sensitive.h), visiting the
// samples that read the map (for_each_map_sample in common/geometry.h), in the opmath type.
//
// Work split: one thread per pooled element (k, c, i, j). The backward adds each grad element's
// share into the taps of its bin's samples in its own input channel, with float atomics (fast path)
// or fixed-point integer atomics (deterministic path), per input channel (ps_grad_input).
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "../../common/cuda/position_sensitive.cuh"
#include "../../common/geometry.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

constexpr const char* kOp = "ps_roi_align";

// The geometry of box k, or false for a box the kernels skip (see box_checks.cuh).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ bool load_geometry(const scalar_t* rois, int64_t k, const PsAlignParams& a,
                                              AlignGeometry<acc_t>& g) {
  acc_t box[kBoxWidth];
  load_box<kBoxWidth>(rois, k, box);
  if (!box_usable(box, a.batch)) return false;
  g = ps_align_geometry(box, a);
  return within_sample_limit(g);
}

struct PsSamplesLimit {
  PsAlignParams a;
  template <typename acc_t>
  __device__ __forceinline__ bool operator()(const acc_t* box) const {
    return !within_sample_limit(ps_align_geometry(box, a));
  }
};

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    ps_roi_align_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                scalar_t* __restrict__ output, int32_t* __restrict__ mapping, Strides4 out_strides,
                                PsAlignParams a, PsMapLayout layout) {
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
    AlignGeometry<acc_t> g;
    if (!load_geometry(rois, static_cast<int64_t>(k), a, g)) {  // only when box values went unchecked
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    const scalar_t* plane = input + layout.plane(g.batch, c_in);
    const int64_t s = layout.cell;
    acc_t sum = 0;
    for_each_map_sample(g, static_cast<int>(i), static_cast<int>(j), H, W, [&](const BilinearTaps<acc_t>& t) {
      sum += t.w1 * static_cast<acc_t>(plane[t.o1 * s]) + t.w2 * static_cast<acc_t>(plane[t.o2 * s]) +
             t.w3 * static_cast<acc_t>(plane[t.o3 * s]) + t.w4 * static_cast<acc_t>(plane[t.o4 * s]);
    });
    output[o] = static_cast<scalar_t>(sum / g.count);
  }
}

template <typename scalar_t, typename index_t, typename Adder>
__global__ void __launch_bounds__(kThreads)
    ps_roi_align_backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                                 const scalar_t* __restrict__ rois, Adder adder, PsAlignParams a, PsMapLayout layout) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, i, j;
    decompose_pooled_index<index_t>(e, a.nhwc, static_cast<index_t>(a.out_channels), a.pooled_h, a.pooled_w, k, c, i,
                                    j);
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, i, j)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    AlignGeometry<acc_t> g;
    if (!load_geometry(rois, static_cast<int64_t>(k), a, g)) continue;
    const int64_t c_in = ps_input_channel(c, i, j, a.pooled_h, a.pooled_w);
    const int64_t base = layout.plane(g.batch, c_in);
    const int64_t s = layout.cell;
    const acc_t share = gv / g.count;
    const auto add = adder.channel(c_in);
    for_each_map_sample(g, static_cast<int>(i), static_cast<int>(j), H, W, [&](const BilinearTaps<acc_t>& t) {
      add(base + t.o1 * s, share * t.w1);
      add(base + t.o2 * s, share * t.w2);
      add(base + t.o3 * s, share * t.w3);
      add(base + t.o4 * s, share * t.w4);
    });
  }
}

std::tuple<Tensor, Tensor> ps_roi_align_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio) {
  const PsAlignParams a = ps_align_params(
      ps_forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, /*check_values=*/false),
      sampling_ratio, kOp);
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
    if (const auto refused = check_boxes_on_device<scalar_t>(r, a.batch, PsSamplesLimit{a}, kOp, stream)) {
      const std::vector<double> box = row_on_host(r, *refused);
      opmath_t<scalar_t> values[kBoxWidth];
      for (int j = 0; j < kBoxWidth; ++j) values[j] = static_cast<opmath_t<scalar_t>>(box[j]);
      const AlignGeometry<opmath_t<scalar_t>> g = ps_align_geometry(values, a);
      fail_ps_samples_per_bin(box.data(), static_cast<int64_t>(g.grid_h) * g.grid_w);
    }
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(num_blocks(total), kThreads, stream, ps_roi_align_forward_kernel<scalar_t, index_t>)(
          static_cast<index_t>(total), in.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
          output.mutable_data_ptr<scalar_t>(), mapping.mutable_data_ptr<int32_t>(), strides_of(output), a,
          PsMapLayout(a));
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
  return {output, mapping};
}

Tensor ps_roi_align_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& channel_mapping,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool deterministic) {
  const char* op = "_ps_roi_align_backward";
  const PsAlignParams a = ps_align_params(ps_backward_call(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                           batch_size, channels, height, width, op, false),
                                          sampling_ratio, op);
  check_channel_mapping(channel_mapping, grad, op);
  const DeviceGuard device_guard(grad);
  const Tensor r = make_contiguous(rois);
  return ps_grad_input(grad, a, deterministic, op, [&](auto type_tag, auto adder, cudaStream_t stream) {
    using scalar_t = decltype(type_tag);
    const int64_t total = grad.numel();
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      ROIOPS_LAUNCH(num_blocks(total), kThreads, stream,
                    ps_roi_align_backward_kernel<scalar_t, index_t, decltype(adder)>)(
          static_cast<index_t>(total), grad.const_data_ptr<scalar_t>(), strides_of(grad), r.const_data_ptr<scalar_t>(),
          adder, a, PsMapLayout(a));
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("ps_roi_align", TORCH_BOX(&ps_roi_align_forward_cuda));
  m.impl("_ps_roi_align_backward", TORCH_BOX(&ps_roi_align_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
