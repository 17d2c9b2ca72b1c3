// RoIAlign on CUDA: forward and backward, avg and max modes, NCHW and channels-last layouts.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file), written once in
// csrc/common/geometry.h: the same sample positions, taps, weights, sample order and max rule
// (max_rule_wins: the first NaN, else the first maximum; a bin of -inf samples gives -inf), the
// same argmax encoding (sample index iy * grid_w + ix in the bin's grid, -1 for a bin without
// samples), float accumulation for the half types. The extension
// is compiled with --fmad=false, so each sample's arithmetic rounds as on the CPU.
//
// Work split: one thread per pooled output element (k, c, ph, pw) in both directions. Threads are
// ordered pw-fastest for NCHW tensors and c-fastest for channels-last ones, so that a warp reads
// (forward) or adds into (backward) neighbouring memory. The backward scatters with float atomics
// (fast path) or with 64-bit fixed-point integer atomics (deterministic path, see cuda_common.cuh).
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "../../common/geometry.h"
#include "../../common/limits.h"
#include "cuda_kernels.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

// The geometry of box k, or false for a box the kernels skip: not finite, a bad batch index, or more
// samples per bin than kMaxSamplesPerBin (only when the box values went unchecked, see box_checks.cuh).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ bool load_geometry(const scalar_t* rois, int64_t k, const AlignParams& a,
                                              AlignGeometry<acc_t>& g) {
  acc_t box[kBoxWidth];
  load_box<kBoxWidth>(rois, k, box);
  if (!box_usable(box, a.batch)) return false;
  g = box_geometry(box, a);
  return within_sample_limit(g);
}

// Refuses the boxes whose bins would take more than kMaxSamplesPerBin samples, as the CPU kernel
// does (the device check of box_checks.cuh).
struct SamplesLimit {
  AlignParams a;
  template <typename acc_t>
  __device__ __forceinline__ bool operator()(const acc_t* box) const {
    return !within_sample_limit(box_geometry(box, a));
  }
};

template <typename scalar_t, typename index_t, bool kMax>
__global__ void __launch_bounds__(kThreads)
    roi_align_forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                             scalar_t* __restrict__ output, int32_t* __restrict__ argmax, Strides4 out_strides,
                             AlignParams a) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    if (!a.pools(k)) continue;  // (another call writes it)
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
    // Only the samples that can touch the map, and one stand-in for the others (common/geometry.h).
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
                              Strides4 arg_strides, Adder adder, AlignParams a) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(a.height), W = static_cast<int>(a.width);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, a.nhwc, static_cast<index_t>(a.channels), a.pooled_h, a.pooled_w, k, c, ph, pw);
    if (!a.pools(k)) continue;
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

template <typename scalar_t, typename Adder>
void launch_backward(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const Adder& add,
                     const AlignParams& a, cudaStream_t stream) {
  const int64_t total = grad.numel();
  const scalar_t* g_p = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_p = rois.const_data_ptr<scalar_t>();
  const int32_t* arg_p = a.max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  const Strides4 gs = strides_of(grad);
  const Strides4 as = a.max_mode ? strides_of(argmax) : Strides4{0, 0, 0, 0};
  const int blocks = num_blocks(total);
  with_index_type(total, [&](auto index) {
    using index_t = decltype(index);
    with_flag(a.max_mode, [&](auto is_max) {
      ROIOPS_LAUNCH(blocks, kThreads, stream, roi_align_backward_kernel<scalar_t, index_t, is_max.value, Adder>)(
          static_cast<index_t>(total), g_p, gs, roi_p, arg_p, as, add, a);
    });
  });
  ROIOPS_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void roi_align_forward_into(const Tensor& input, const Tensor& rois, const AlignParams& a, Tensor& output,
                            Tensor& argmax, cudaStream_t stream) {
  const Tensor in = a.nhwc ? input : make_contiguous(input);
  const int64_t total = output.numel();
  const Strides4 os = strides_of(output);
  dispatch_floating(input.scalar_type(), "roi_align", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* in_p = in.const_data_ptr<scalar_t>();
    const scalar_t* roi_p = rois.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    int32_t* arg_p = a.max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    const int blocks = num_blocks(total);
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      with_flag(a.max_mode, [&](auto is_max) {
        ROIOPS_LAUNCH(blocks, kThreads, stream, roi_align_forward_kernel<scalar_t, index_t, is_max.value>)(
            static_cast<index_t>(total), in_p, roi_p, out_p, arg_p, os, a);
      });
    });
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
}

Tensor roi_align_backward_scatter(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const AlignParams& a,
                                  bool deterministic, cudaStream_t stream) {
  const std::array<int64_t, 4> sizes{a.batch, a.channels, a.height, a.width};
  Tensor result;
  dispatch_floating(grad.scalar_type(), "_roi_align_backward", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    result = scatter_grad_input<scalar_t>(grad, sizes, a.nhwc, deterministic, stream, [&](auto adder) {
      launch_backward<scalar_t>(grad, rois, argmax, adder, a, stream);
    });
  });
  return result;
}

namespace {

std::tuple<Tensor, Tensor> roi_align_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                                  bool aligned, std::string pool_mode) {
  const AlignParams a = align_params(
      forward_call(input, rois, spatial_scale, pooled_height, pooled_width, "roi_align", /*check_values=*/false),
      sampling_ratio, aligned, pool_mode, "roi_align");
  const DeviceGuard device_guard(input);
  const std::array<int64_t, 4> sizes{a.num_rois, a.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, a.nhwc);
  Tensor argmax = a.max_mode ? empty_4d(sizes, ScalarType::Int, input, a.nhwc) : empty_1d(0, ScalarType::Int, input);
  if (output.numel() == 0) return {output, argmax};
  const Tensor r = make_contiguous(rois);
  const cudaStream_t stream = current_stream(input);
  dispatch_floating(input.scalar_type(), "roi_align", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    if (const auto refused = check_boxes_on_device<scalar_t>(r, a.batch, SamplesLimit{a}, "roi_align", stream)) {
      const std::vector<double> box = row_on_host(r, *refused);
      opmath_t<scalar_t> values[kBoxWidth];
      for (int j = 0; j < kBoxWidth; ++j) values[j] = static_cast<opmath_t<scalar_t>>(box[j]);
      const AlignGeometry<opmath_t<scalar_t>> g = box_geometry(values, a);
      fail_samples_per_bin(box.data(), static_cast<int64_t>(g.grid_h) * g.grid_w, a);
    }
  });
  roi_align_forward_into(input, r, a, output, argmax, stream);
  return {output, argmax};
}

Tensor roi_align_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                               int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                               int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                               std::string pool_mode, bool deterministic) {
  const char* op = "_roi_align_backward";
  const AlignParams a = align_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                                   channels, height, width, op, /*check_values=*/false),
                                     sampling_ratio, aligned, pool_mode, op);
  if (a.max_mode) check_argmax(argmax, grad, op);
  const DeviceGuard device_guard(grad);
  const bool no_input = batch_size == 0 || channels == 0 || height == 0 || width == 0;
  if (grad.numel() == 0 || no_input) {
    return zero(empty_4d({batch_size, channels, height, width}, grad.scalar_type(), grad, a.nhwc));
  }
  return roi_align_backward_scatter(grad, make_contiguous(rois), argmax, a, deterministic, current_stream(grad));
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("roi_align", TORCH_BOX(&roi_align_forward_cuda));
  m.impl("_roi_align_backward", TORCH_BOX(&roi_align_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
