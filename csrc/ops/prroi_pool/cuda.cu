// Precise RoI Pooling on CUDA: forward, input backward and box backward, NCHW and channels-last.
//
// Semantics are those of the CPU kernels (cpu.cpp beside this file), written once in geometry.h beside
// this file, float accumulation for the half types. Forward and input backward: one thread per pooled
// output element (k, c, ph, pw), the cell weights of its bin computed as it goes; the backward
// scatters with float atomics or, deterministic, with the fixed-point adder of cuda_common.cuh (each
// bin's weights sum to at most 1, the bound that adder assumes). Box backward: one thread per bin
// (k, ph, pw) sums its channels into a per-bin partial, then one thread per box adds its bins in order,
// so it is deterministic either way.
#include <array>
#include <cmath>
#include <limits>

#include "../../common/checks.h"
#include "../../common/cuda/box_checks.cuh"
#include "../../common/cuda/cuda_common.cuh"
#include "geometry.h"
#include "params.h"

namespace roiops {
namespace cuda {
namespace {

constexpr const char* kOp = "prroi_pool";

// The geometry of box k, or false for a box the kernels skip: not finite or a bad batch index (only
// when the box values went unchecked, see box_checks.cuh).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ bool load_geometry(const scalar_t* rois, int64_t k, const PrroiParams& p,
                                              PrroiGeometry<acc_t>& g) {
  acc_t box[kBoxWidth];
  load_box<kBoxWidth>(rois, k, box);
  if (!box_usable(box, p.batch)) return false;
  g = box_geometry(box, p);
  return true;
}

// Offset of cell 0 of (batch, channel) in the map, and the distance between two cells of a plane.
__device__ __forceinline__ void plane_base(const PrroiParams& p, int64_t batch, int64_t c, int64_t& base,
                                           int64_t& cell_stride) {
  const int64_t HW = p.height * p.width;
  if (p.nhwc) {
    base = batch * HW * p.channels + c;
    cell_stride = p.channels;
  } else {
    base = (batch * p.channels + c) * HW;
    cell_stride = 1;
  }
}

// For each row of bin (ph, pw): begin_row(wy) with the row's weight, then visit(cell offset within the
// plane, wx) for each of its cells with the column's weight (the order of the CPU kernels' sums).
template <typename acc_t, typename BeginRow, typename Visit, typename EndRow>
__device__ __forceinline__ void for_each_bin_cell(const PrroiGeometry<acc_t>& g, int ph, int pw, const PrroiParams& p,
                                                  const BeginRow& begin_row, const Visit& visit,
                                                  const EndRow& end_row) {
  const BinAxis<acc_t> ay = bin_axis(g.start_h, g.bin_h, ph), ax = bin_axis(g.start_w, g.bin_w, pw);
  const CellSpan rows = ay.cells(static_cast<int>(p.height)), cols = ax.cells(static_cast<int>(p.width));
  for (int r = rows.begin; r < rows.end; ++r) {
    const acc_t wy = ay.weight(r);
    begin_row(wy);
    for (int c = cols.begin; c < cols.end; ++c) visit(static_cast<int64_t>(r) * p.width + c, ax.weight(c));
    end_row(wy);
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(index_t total, const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                   scalar_t* __restrict__ output, Strides4 out_strides, PrroiParams p) {
  using acc_t = opmath_t<scalar_t>;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, p.nhwc, static_cast<index_t>(p.channels), p.pooled_h, p.pooled_w, k, c, ph, pw);
    const int64_t o = out_strides.at(k, c, ph, pw);
    PrroiGeometry<acc_t> g;
    if (!load_geometry(rois, k, p, g)) {  // a refused box: NaN, visibly
      output[o] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      continue;
    }
    acc_t sum = acc_t(0);
    if (!g.empty) {
      int64_t base, cs;
      plane_base(p, g.batch, c, base, cs);
      const scalar_t* plane = input + base;
      acc_t row = acc_t(0);
      for_each_bin_cell(
          g, static_cast<int>(ph), static_cast<int>(pw), p, [&](acc_t) { row = acc_t(0); },
          [&](int64_t cell, acc_t wx) { row += wx * static_cast<acc_t>(plane[cell * cs]); },
          [&](acc_t wy) { sum += wy * row; });
    }
    output[o] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t, typename Adder>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(index_t total, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                    const scalar_t* __restrict__ rois, Adder adder, PrroiParams p) {
  using acc_t = opmath_t<scalar_t>;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    index_t k, c, ph, pw;
    decompose_pooled_index<index_t>(i, p.nhwc, static_cast<index_t>(p.channels), p.pooled_h, p.pooled_w, k, c, ph, pw);
    const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
    if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
    PrroiGeometry<acc_t> g;
    if (!load_geometry(rois, k, p, g) || g.empty) continue;  // no gradient
    int64_t base, cs;
    plane_base(p, g.batch, c, base, cs);
    const auto add = adder.channel(static_cast<int64_t>(c));
    acc_t gy = acc_t(0);
    for_each_bin_cell(
        g, static_cast<int>(ph), static_cast<int>(pw), p, [&](acc_t wy) { gy = gv * wy; },
        [&](int64_t cell, acc_t wx) { add(base + cell * cs, gy * wx); }, [](acc_t) {});
  }
}

// The value at x along one axis of a row or column: sum of hat(x - c) * value(c) over its two cells.
template <typename acc_t, typename Value>
__device__ __forceinline__ acc_t at_point(acc_t x, int size, const Value& value) {
  const CellSpan s = point_span(x, size);
  acc_t sum = acc_t(0);
  for (int c = s.begin; c < s.end; ++c) sum += hat(x, c) * value(c);
  return sum;
}

// partial[(k * PH + ph) * PW + pw][0..3]: the box gradient of bin (ph, pw) of box k, over its channels.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rois_partial_kernel(int64_t bins, const scalar_t* __restrict__ grad, Strides4 grad_strides,
                        const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                        opmath_t<scalar_t>* __restrict__ partial, PrroiParams p) {
  using acc_t = opmath_t<scalar_t>;
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bins;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int pw = static_cast<int>(i % p.pooled_w), ph = static_cast<int>(i / p.pooled_w % p.pooled_h);
    const int64_t k = i / p.pooled_w / p.pooled_h;
    acc_t total[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    PrroiGeometry<acc_t> g;
    if (load_geometry(rois, k, p, g) && !g.empty) {
      const BinAxis<acc_t> ay = bin_axis(g.start_h, g.bin_h, ph), ax = bin_axis(g.start_w, g.bin_w, pw);
      const CellSpan rows = ay.cells(H), cols = ax.cells(W);
      for (int64_t c = 0; c < p.channels; ++c) {
        const acc_t gv = static_cast<acc_t>(grad[grad_strides.at(k, c, ph, pw)]);
        if (gv == acc_t(0)) continue;
        int64_t base, cs;
        plane_base(p, g.batch, c, base, cs);
        const scalar_t* plane = input + base;
        const auto v = [&](int r, int col) {
          return static_cast<acc_t>(plane[(static_cast<int64_t>(r) * W + col) * cs]);
        };
        EdgeMeans<acc_t> m{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (int r = rows.begin; r < rows.end; ++r) {
          const acc_t wy = ay.weight(r);
          acc_t inside = acc_t(0);
          for (int col = cols.begin; col < cols.end; ++col) inside += ax.weight(col) * v(r, col);
          m.out += wy * inside;
          m.x0 += wy * at_point(ax.lo, W, [&](int col) { return v(r, col); });
          m.x1 += wy * at_point(ax.hi, W, [&](int col) { return v(r, col); });
        }
        for (int col = cols.begin; col < cols.end; ++col) {
          const acc_t wx = ax.weight(col);
          m.y0 += wx * at_point(ay.lo, H, [&](int r) { return v(r, col); });
          m.y1 += wx * at_point(ay.hi, H, [&](int r) { return v(r, col); });
        }
        add_box_gradient(m, gv, ph, pw, p.pooled_h, p.pooled_w, g.bin_h, g.bin_w, static_cast<acc_t>(p.spatial_scale),
                         total);
      }
    }
    for (int j = 0; j < 4; ++j) partial[i * 4 + j] = total[j];
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rois_sum_kernel(int64_t K, int64_t bins_per_box, const opmath_t<scalar_t>* __restrict__ partial,
                    scalar_t* __restrict__ grad_rois) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    acc_t total[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    for (int64_t b = 0; b < bins_per_box; ++b) {
      for (int j = 0; j < 4; ++j) total[j] += partial[(k * bins_per_box + b) * 4 + j];
    }
    grad_rois[k * kBoxWidth] = scalar_t(0);
    for (int j = 0; j < 4; ++j) grad_rois[k * kBoxWidth + 1 + j] = static_cast<scalar_t>(total[j]);
  }
}

std::tuple<Tensor, Tensor> prroi_pool_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                   int64_t pooled_height, int64_t pooled_width, bool aligned) {
  const PrroiParams p = prroi_params(
      forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, /*check_values=*/false), aligned);
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
    check_boxes_on_device<scalar_t>(r, p.batch, NoLimit{}, kOp, stream);
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

Tensor prroi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& /*argmax: none*/,
                                double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                int64_t channels, int64_t height, int64_t width, bool aligned, bool deterministic) {
  const char* op = "_prroi_pool_backward";
  const PrroiParams p = prroi_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                                   channels, height, width, op, /*check_values=*/false),
                                     aligned);
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

Tensor prroi_pool_rois_backward_cuda(const Tensor& grad, const Tensor& input, const Tensor& rois, double spatial_scale,
                                     int64_t pooled_height, int64_t pooled_width, bool aligned) {
  const char* op = "_prroi_pool_rois_backward";
  const PrroiParams p = rois_backward_call(grad, input, rois, spatial_scale, pooled_height, pooled_width, aligned, op,
                                           /*check_values=*/false);
  const DeviceGuard device_guard(input);
  Tensor grad_rois = zero(empty_2d(p.num_rois, kBoxWidth, rois.scalar_type(), rois));
  if (grad.numel() == 0) return grad_rois;
  const Tensor in = p.nhwc ? input : make_contiguous(input);
  const Tensor r = make_contiguous(rois);
  const cudaStream_t stream = current_stream(input);
  const int64_t bins = p.num_rois * p.pooled_h * p.pooled_w;
  dispatch_floating(input.scalar_type(), op, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    using acc_t = opmath_t<scalar_t>;
    Tensor partial = empty_1d(bins * 4, scalar_type_of<acc_t>(), input);
    ROIOPS_LAUNCH(num_blocks(bins), kThreads, stream, rois_partial_kernel<scalar_t>)(
        bins, grad.const_data_ptr<scalar_t>(), strides_of(grad), in.const_data_ptr<scalar_t>(),
        r.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), p);
    ROIOPS_KERNEL_LAUNCH_CHECK();
    ROIOPS_LAUNCH(num_blocks(p.num_rois), kThreads, stream, rois_sum_kernel<scalar_t>)(
        p.num_rois, static_cast<int64_t>(p.pooled_h) * p.pooled_w, partial.const_data_ptr<acc_t>(),
        grad_rois.mutable_data_ptr<scalar_t>());
    ROIOPS_KERNEL_LAUNCH_CHECK();
  });
  return grad_rois;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, ROIOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("prroi_pool", TORCH_BOX(&prroi_pool_forward_cuda));
  m.impl("_prroi_pool_backward", TORCH_BOX(&prroi_pool_backward_cuda));
  m.impl("_prroi_pool_rois_backward", TORCH_BOX(&prroi_pool_rois_backward_cuda));
}

}  // namespace cuda
}  // namespace roiops
