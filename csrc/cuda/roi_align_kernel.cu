// RoIAlign on CUDA: forward and backward, avg and max modes, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (csrc/cpu/roi_align_kernel.cpp), written once in
// csrc/roi_geometry.h: the same sample positions, taps, weights, sample order and max rule
// (max_rule_wins: the first NaN, else the first maximum; a bin of -inf samples gives -inf), the
// same argmax encoding (sample index iy * grid_w + ix in the bin's grid, -1 for a bin without
// samples), float accumulation for the half types. The extension
// is compiled with --fmad=false, so each sample's arithmetic rounds as on the CPU.
//
// Work split: one thread per pooled output element (k, c, ph, pw) in both directions. Threads are
// ordered pw-fastest for NCHW tensors and c-fastest for channels-last ones, so that a warp reads
// (forward) or adds into (backward) neighbouring memory. The backward scatters with float atomics
// (fast path) or with 64-bit fixed-point integer atomics (deterministic path, see cuda_common.cuh).
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
#include "../roi_limits.h"
#include "box_checks.cuh"
#include "cuda_common.cuh"

namespace roiops {
namespace cuda {
namespace {

// Same limit as the CPU kernel: adaptive sampling of an absurdly large box is refused.

struct AlignArgs {
  double spatial_scale;
  int pooled_h, pooled_w, sampling_ratio;
  bool aligned;
  bool nhwc;  // layout of the map (forward: input; backward: grad and grad_input)
  int64_t batch_size, channels, height, width;
};

// The geometry of box k, or false for a box the kernels skip: a bad batch index, or more samples per
// bin than kMaxSamplesPerBin (only when the box values went unchecked, see box_checks.cuh).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ bool load_geometry(const scalar_t* rois, int64_t k, const AlignArgs& a,
                                              AlignGeometry<acc_t>& g) {
  acc_t roi[5];
#pragma unroll
  for (int j = 0; j < 5; ++j) roi[j] = static_cast<acc_t>(rois[k * 5 + j]);
  if (!box_usable(roi[0], a.batch_size)) return false;
  g = align_geometry<acc_t>(roi, static_cast<acc_t>(a.spatial_scale), a.pooled_h, a.pooled_w, a.sampling_ratio,
                            a.aligned);
  return static_cast<int64_t>(g.grid_h) * g.grid_w <= kMaxSamplesPerBin;
}

// Refuses the boxes of adaptive sampling whose bins would take more than kMaxSamplesPerBin samples,
// as the CPU kernel does (the device check of box_checks.cuh).
struct SamplesLimit {
  AlignArgs a;
  template <typename acc_t>
  __device__ __forceinline__ bool operator()(const acc_t* roi) const {
    const AlignGeometry<acc_t> g = align_geometry<acc_t>(roi, static_cast<acc_t>(a.spatial_scale), a.pooled_h,
                                                         a.pooled_w, a.sampling_ratio, a.aligned);
    return static_cast<int64_t>(g.grid_h) * g.grid_w > kMaxSamplesPerBin;
  }
};

// Offset of cell 0 of (batch, channel) in the map, and the distance between two cells of a plane.
__device__ __forceinline__ void plane_base(const AlignArgs& a, int64_t batch, int64_t c, int64_t& base,
                                           int64_t& cell_stride) {
  const int64_t HW = a.height * a.width;
  if (a.nhwc) {
    base = batch * HW * a.channels + c;
    cell_stride = a.channels;
  } else {
    base = (batch * a.channels + c) * HW;
    cell_stride = 1;
  }
}

template <typename scalar_t, typename index_t, bool kMax>
__global__ void __launch_bounds__(kThreads)
    roi_align_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                             scalar_t* __restrict__ output, int32_t* __restrict__ argmax, Strides4 out_strides,
                             AlignArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    const int64_t o = out_strides.at(k, c, ph, pw);
    AlignGeometry<acc_t> g;
    if (!load_geometry(rois, k, a, g)) {  // a refused box: NaN, visibly
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      if (kMax) argmax[o] = -1;
      continue;
    }
    int64_t base, cs;
    plane_base(a, g.batch, c, base, cs);
    const scalar_t* plane = input + base;

    acc_t sum = acc_t(0);
    acc_t top = -std::numeric_limits<acc_t>::infinity();
    int32_t top_s = -1;
    // Only the samples that can touch the map, and one stand-in for the others (roi_geometry.h).
    const int bin_h = static_cast<int>(ph), bin_w = static_cast<int>(pw);
    bin_samples(g, bin_h, bin_w, H, W).for_each([&](int s, int iy, int ix) {
      const BilinearTaps<acc_t> t = iy < 0 ? outside_taps<acc_t>() : align_sample_taps(g, bin_h, bin_w, iy, ix, H, W);
      if (!kMax) {
        if (!t.valid) return;
        sum += t.w1 * static_cast<acc_t>(plane[t.o1 * cs]) + t.w2 * static_cast<acc_t>(plane[t.o2 * cs]) +
               t.w3 * static_cast<acc_t>(plane[t.o3 * cs]) + t.w4 * static_cast<acc_t>(plane[t.o4 * cs]);
      } else {
        // A sample outside the map is a 0 that can still win.
        // (bilinear_taps also calls every sample of an empty map, H or W = 0, outside.)
        const acc_t v =
            !t.valid ? acc_t(0)
                     : t.w1 * static_cast<acc_t>(plane[t.o1 * cs]) + t.w2 * static_cast<acc_t>(plane[t.o2 * cs]) +
                           t.w3 * static_cast<acc_t>(plane[t.o3 * cs]) + t.w4 * static_cast<acc_t>(plane[t.o4 * cs]);
        if (max_rule_wins(v, top, top_s)) {
          top = v;
          top_s = s;
        }
      }
    });
    if (!kMax) {
      output[o] = static_cast<scalar_t>(sum / g.count);
    } else {
      output[o] = static_cast<scalar_t>(top_s >= 0 ? top : acc_t(0));
      argmax[o] = top_s;
    }
  }
}

template <typename scalar_t, typename index_t, bool kMax, typename Adder>
__global__ void __launch_bounds__(kThreads)
    roi_align_backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                              const scalar_t* __restrict__ rois, const int32_t* __restrict__ argmax,
                              Strides4 arg_strides, Adder adder, AlignArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    AlignGeometry<acc_t> g;
    if (!load_geometry(rois, k, a, g)) continue;  // a refused box
    const int64_t per_bin = static_cast<int64_t>(g.grid_h) * g.grid_w;
    if (per_bin == 0) continue;
    int64_t base, cs;
    plane_base(a, g.batch, c, base, cs);
    const auto add = adder.channel(static_cast<int64_t>(c));

    if (!kMax) {
      const acc_t gs = gv / g.count;
      const int bin_h = static_cast<int>(ph), bin_w = static_cast<int>(pw);
      bin_samples(g, bin_h, bin_w, H, W).for_each([&](int, int iy, int ix) {
        if (iy < 0) return;  // the samples outside the map take no gradient
        const BilinearTaps<acc_t> t = align_sample_taps(g, bin_h, bin_w, iy, ix, H, W);
        if (!t.valid) return;
        add(base + t.o1 * cs, t.w1 * gs);
        add(base + t.o2 * cs, t.w2 * gs);
        add(base + t.o3 * cs, t.w3 * gs);
        add(base + t.o4 * cs, t.w4 * gs);
      });
    } else {
      const int32_t s = argmax[arg_strides.at(k, c, ph, pw)];
      // argmax comes from the caller: anything outside the bin's grid is ignored, never followed.
      if (s < 0 || s >= per_bin) continue;
      const BilinearTaps<acc_t> t = align_sample_taps(g, static_cast<int>(ph), static_cast<int>(pw), s, H, W);
      if (!t.valid) continue;
      add(base + t.o1 * cs, t.w1 * gv);
      add(base + t.o2 * cs, t.w2 * gv);
      add(base + t.o3 * cs, t.w3 * gv);
      add(base + t.o4 * cs, t.w4 * gv);
    }
  }
}

// Same checks and messages as the CPU kernel's make_params.
AlignArgs make_args(double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                    bool aligned, int64_t batch_size, int64_t channels, int64_t height, int64_t width, bool nhwc) {
  check_sampling_ratio(sampling_ratio, "roi_align");
  check_spatial_scale(spatial_scale, "roi_align");
  return AlignArgs{spatial_scale,
                   static_cast<int>(pooled_height),
                   static_cast<int>(pooled_width),
                   static_cast<int>(sampling_ratio),
                   aligned,
                   nhwc,
                   batch_size,
                   channels,
                   height,
                   width};
}

// A box whose bins would take more than kMaxSamplesPerBin samples is refused, as on the CPU: for a
// fixed sampling_ratio from the arguments alone (make_args), for adaptive sampling by the device box
// check (SamplesLimit), whose message reads the refused box back.
template <typename scalar_t>
[[noreturn]] void fail_samples_per_bin(const at::Tensor& rois, int64_t k, const AlignArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor row = to_host(rois[k].to(at::kDouble));  // (an error: syncs freely)
  const double* r = row.const_data_ptr<double>();
  acc_t roi[5];
  for (int j = 0; j < 5; ++j) roi[j] = static_cast<acc_t>(r[j]);
  const AlignGeometry<acc_t> g = align_geometry<acc_t>(roi, static_cast<acc_t>(a.spatial_scale), a.pooled_h, a.pooled_w,
                                                       a.sampling_ratio, a.aligned);
  TORCH_CHECK_VALUE(false, "roi_align: adaptive sampling (sampling_ratio <= 0) of box ", r[1], ", ", r[2], ", ", r[3],
                    ", ", r[4], " would take ", static_cast<int64_t>(g.grid_h) * g.grid_w, " samples per bin (limit ",
                    kMaxSamplesPerBin, "); pass a positive sampling_ratio");
}

std::tuple<at::Tensor, at::Tensor> roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                          double spatial_scale, int64_t pooled_height,
                                                          int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                          std::string pool_mode) {
  check_forward_args(input, rois, pooled_height, pooled_width, "roi_align", /*check_values=*/false);
  const bool nhwc = use_channels_last(input);
  const AlignArgs a = make_args(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, input.size(0),
                                input.size(1), input.size(2), input.size(3), nhwc);
  const bool max_mode = is_max_mode(pool_mode);
  const DeviceGuard device_guard(input.device());
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t K = rois.size(0);
  at::Tensor output = at::empty({K, a.channels, pooled_height, pooled_width}, input.options(), layout);
  at::Tensor argmax =
      max_mode ? at::empty({K, a.channels, pooled_height, pooled_width}, input.options().dtype(at::kInt), layout)
               : at::empty({0}, input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const at::Tensor in = nhwc ? input : input.contiguous();
  const at::Tensor r = rois.contiguous();
  const cudaStream_t stream = current_stream();
  const int64_t total = output.numel();
  const Strides4 os = strides_of(output);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    if (const auto refused = check_boxes_on_device<scalar_t>(r, a.batch_size, SamplesLimit{a}, "roi_align", stream)) {
      fail_samples_per_bin<scalar_t>(r, *refused, a);
    }
    const scalar_t* in_p = in.const_data_ptr<scalar_t>();
    const scalar_t* roi_p = r.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    int32_t* arg_p = max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    const int blocks = num_blocks(total);
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      with_flag(max_mode, [&](auto is_max) {
        ROIOPS_LAUNCH(blocks, kThreads, stream, roi_align_forward_kernel<scalar_t, index_t, is_max.value>)(
            static_cast<index_t>(total), in_p, roi_p, out_p, arg_p, os, a);
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

template <typename scalar_t, typename Adder>
void launch_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, bool max_mode,
                     const Adder& add, const AlignArgs& a, cudaStream_t stream) {
  const int64_t total = grad.numel();
  const scalar_t* g_p = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_p = rois.const_data_ptr<scalar_t>();
  const int32_t* arg_p = max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  const Strides4 gs = strides_of(grad);
  const Strides4 as = max_mode ? strides_of(argmax) : Strides4{0, 0, 0, 0};
  const int blocks = num_blocks(total);
  with_index_type(total, [&](auto index) {
    using index_t = decltype(index);
    with_flag(max_mode, [&](auto is_max) {
      ROIOPS_LAUNCH(blocks, kThreads, stream, roi_align_backward_kernel<scalar_t, index_t, is_max.value, Adder>)(
          static_cast<index_t>(total), g_p, gs, roi_p, arg_p, as, add, a);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                   double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                   int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                   int64_t sampling_ratio, bool aligned, std::string pool_mode, bool deterministic) {
  check_backward_args(grad, rois, batch_size, channels, height, width, pooled_height, pooled_width,
                      "_roi_align_backward", /*check_values=*/false);
  const bool nhwc = use_channels_last(grad);
  const AlignArgs a = make_args(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, batch_size,
                                channels, height, width, nhwc);
  const bool max_mode = is_max_mode(pool_mode);
  if (max_mode) {
    check_argmax(argmax, grad, "_roi_align_backward");
  }
  const DeviceGuard device_guard(grad.device());
  const auto layout = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  const bool no_input = batch_size == 0 || channels == 0 || height == 0 || width == 0;
  // (at::zeros would drop a memory format given in its options: allocate with the layout, then zero.)
  if (grad.numel() == 0 || no_input) return at::empty(sizes, grad.options(), layout).zero_();
  const at::Tensor r = rois.contiguous();
  const cudaStream_t stream = current_stream();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    result = scatter_grad_input<scalar_t>(grad, sizes, layout, nhwc, deterministic, stream, [&](auto adder) {
      launch_backward<scalar_t>(grad, r, argmax, max_mode, adder, a, stream);
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cuda));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
