// Rotated RoIAlign on the CPU: forward and backward (average pooling), NCHW and channels-last.
//
// Rotated samples are not separable along the axes, so there is no per-axis clipping or tap cache
// here: every sample of a bin is visited (its cost bounded by the sampling limits). The sample taps of
// a bin are computed once, in chunks, and used for every channel.
// Forward: RoIs handed out to threads one at a time. Backward: each thread owns a range of channels of
// the gradient, into which every RoI is scattered in order (no atomics; the result does not depend on
// the thread count).
#include "../../common/tensor.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "../../common/checks.h"
#include "../../common/cpu/channel_blocks.h"
#include "../../common/cpu/output_parts.h"
#include "../../common/cpu/parallel.h"
#include "../../common/cpu/tuning.h"
#include "../../common/cpu/vector_loops.h"
#include "../../common/library.h"
#include "geometry.h"
#include "params.h"

namespace roiops {
namespace cpu {
namespace {

constexpr const char* kOp = "roi_align_rotated";
constexpr const char* kBackwardOp = "_roi_align_rotated_backward";

// The geometry of every box; refuses adaptive grids over the limit (box values are checked already).
template <typename scalar_t>
std::vector<RotatedGeometry<opmath_t<scalar_t>>> all_geometry(const Tensor& rois, const RotatedParams& p,
                                                              const char* op_name) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* data = rois.const_data_ptr<scalar_t>();
  std::vector<RotatedGeometry<acc_t>> geometry(rois.size(0));
  for (int64_t k = 0; k < rois.size(0); ++k) {
    acc_t box[kRotatedBoxWidth];
    load_box<kRotatedBoxWidth>(data, k, box);
    geometry[k] = box_geometry(box, p);
    if (!within_sample_limit(geometry[k], p)) {
      double values[kRotatedBoxWidth];
      for (int j = 0; j < kRotatedBoxWidth; ++j) values[j] = static_cast<double>(data[k * kRotatedBoxWidth + j]);
      fail_rotated_samples(op_name, k, values, rotated_samples_per_box(geometry[k], p.pooled_h, p.pooled_w));
    }
  }
  return geometry;
}

// Calls visit(taps, n) for the samples of bin (ph, pw) that touch the map, in row-major sample order,
// at most kTapsPerChunk at a time (a sample outside the map adds nothing: it is left out).
template <typename acc_t, typename F>
void for_each_tap_chunk(const RotatedGeometry<acc_t>& g, int ph, int pw, const RotatedParams& p,
                        std::vector<BilinearTaps<acc_t>>& buffer, const F& visit) {
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  buffer.clear();
  for (int iy = 0; iy < g.grid_h; ++iy) {
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const BilinearTaps<acc_t> t = rotated_sample_taps(g, ph, pw, iy, ix, H, W);
      if (!t.valid) continue;
      buffer.push_back(t);
      if (static_cast<int64_t>(buffer.size()) == kTapsPerChunk) {
        visit(buffer.data(), static_cast<int64_t>(buffer.size()));
        buffer.clear();
      }
    }
  }
  if (!buffer.empty()) visit(buffer.data(), static_cast<int64_t>(buffer.size()));
}

// Pools every RoI from `map` ([N, H, W, channels] with each cell's channels contiguous when nhwc,
// else [N, channels, H, W]) into output channels [c0, c0 + channels).
template <typename scalar_t>
void forward_channels(const scalar_t* map, bool nhwc, int64_t channels, int64_t c0,
                      const std::vector<RotatedGeometry<opmath_t<scalar_t>>>& geometry, Tensor& output,
                      const RotatedParams& p) {
  using acc_t = opmath_t<scalar_t>;
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  const int64_t C = channels, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  parallel_for_each_dynamic_with(
      static_cast<int64_t>(geometry.size()), C * p.pooled_h * p.pooled_w * 4,
      [&] { return std::make_pair(std::vector<acc_t>(C), std::vector<BilinearTaps<acc_t>>()); },
      [&](auto& scratch, int64_t k) {
        auto& [acc, taps] = scratch;
        const RotatedGeometry<acc_t>& g = geometry[k];
        const scalar_t* image = map + g.batch * C * HW;
        for (int ph = 0; ph < p.pooled_h; ++ph) {
          for (int pw = 0; pw < p.pooled_w; ++pw) {
            std::fill(acc.begin(), acc.end(), acc_t(0));
            for_each_tap_chunk(g, ph, pw, p, taps, [&](const BilinearTaps<acc_t>* t, int64_t n) {
              if (nhwc) {
                bin_sum_nhwc(image, C, t, n, /*first=*/false, acc.data());
                return;
              }
              for (int64_t c = 0; c < C; ++c) {
                const scalar_t* plane = image + c * HW;
                acc_t sum = acc[c];
                for (int64_t s = 0; s < n; ++s) {
                  sum += t[s].w1 * static_cast<acc_t>(plane[t[s].o1]) + t[s].w2 * static_cast<acc_t>(plane[t[s].o2]) +
                         t[s].w3 * static_cast<acc_t>(plane[t[s].o3]) + t[s].w4 * static_cast<acc_t>(plane[t[s].o4]);
                }
                acc[c] = sum;
              }
            });
            for (int64_t c = 0; c < C; ++c) {
              out_data[out_at.at(k, c0 + c, ph, pw)] = static_cast<scalar_t>(acc[c] / g.count);
            }
          }
        }
      });
}

// Channels-last maps are pooled as they are. An NCHW map that the samples read densely is packed one
// block of channels at a time (channel_blocks.h, tuning.h: kPackSampleFraction): a bin's samples then
// read contiguous channel vectors of a block that stays in cache, instead of one cell of every plane.
template <typename scalar_t>
void forward(const Tensor& input, const std::vector<RotatedGeometry<opmath_t<scalar_t>>>& geometry, Tensor& output,
             const RotatedParams& p) {
  const Tensor in = make_contiguous(input, p.nhwc);
  if (p.nhwc) return forward_channels(in.const_data_ptr<scalar_t>(), true, p.channels, 0, geometry, output, p);
  double samples = 0;
  for (const auto& g : geometry) samples += rotated_samples_per_box(g, p.pooled_h, p.pooled_w);
  if (p.channels < kMinPackedChannels ||
      samples * kPackSampleFraction < static_cast<double>(p.batch * p.height * p.width)) {
    return forward_channels(in.const_data_ptr<scalar_t>(), false, p.channels, 0, geometry, output, p);
  }
  for_each_channel_block<scalar_t>(in, false, [&](const scalar_t* block, int64_t c0, int64_t n) {
    forward_channels(block, true, n, c0, geometry, output, p);
  });
}

// A sample's taps as the backward holds them: int32 offsets within a plane (a plane has fewer than
// 2^31 cells), 32 bytes in float, so that a chunk read once per channel stays small.
template <typename acc_t>
struct PlaneTaps {
  int32_t o1, o2, o3, o4;
  acc_t w1, w2, w3, w4;
};

// A run of consecutive taps of one bin, in a chunk of the backward.
struct Run {
  int64_t k;
  int ph, pw;
  int64_t begin, end;
};

// The gradient in acc_t, NCHW or channels-last like grad: the taps of all RoIs, in (RoI, bin, sample)
// order, gathered in chunks of at most kSharedTaps; each chunk is scattered by threads that each own a
// range of channels. grad_in comes zeroed if channels-last; NCHW planes are zeroed by the thread that
// owns them, in its first round, while they are in its cache (no separate pass over the gradient).
template <typename scalar_t>
void backward(const Tensor& grad, const std::vector<RotatedGeometry<opmath_t<scalar_t>>>& geometry, Tensor& grad_in,
              const RotatedParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  acc_t* gi_data = grad_in.mutable_data_ptr<acc_t>();
  const int64_t C = p.channels, HW = p.height * p.width;
  const Strides4 grad_at = strides_of(grad);
  std::vector<PlaneTaps<acc_t>> taps;
  std::vector<BilinearTaps<acc_t>> bin_taps;
  std::vector<Run> runs;
  bool zeroed = p.nhwc;

  const auto scatter = [&] {
    parallel_for_ranges(C, static_cast<int64_t>(taps.size()) * 4, [&](int64_t c0, int64_t c1) {
      const PlaneTaps<acc_t>* t = taps.data();
      if (!p.nhwc) {
        // Channel by channel: the planes of one channel stay in cache while every run is scattered.
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t b = 0; b < p.batch && !zeroed; ++b) {
            acc_t* plane = gi_data + (b * C + c) * HW;
            prefault(plane, HW * sizeof(acc_t));
            std::fill_n(plane, HW, acc_t(0));
          }
          for (const Run& r : runs) {
            const RotatedGeometry<acc_t>& g = geometry[r.k];
            const acc_t gv = static_cast<acc_t>(grad_data[grad_at.at(r.k, c, r.ph, r.pw)]);
            if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
            const acc_t s = gv / g.count;
            acc_t* plane = gi_data + (g.batch * C + c) * HW;
            for (int64_t i = r.begin; i < r.end; ++i) {
              plane[t[i].o1] += t[i].w1 * s;
              plane[t[i].o2] += t[i].w2 * s;
              plane[t[i].o3] += t[i].w3 * s;
              plane[t[i].o4] += t[i].w4 * s;
            }
          }
        }
        return;
      }
      // Channels-last: run by run, each tap a vector of this thread's channels.
      std::vector<acc_t> gs(c1 - c0);
      const int64_t n = c1 - c0;
      for (const Run& r : runs) {
        const RotatedGeometry<acc_t>& g = geometry[r.k];
        for (int64_t c = c0; c < c1; ++c) {
          gs[c - c0] = static_cast<acc_t>(grad_data[grad_at.at(r.k, c, r.ph, r.pw)]) / g.count;
        }
        acc_t* image = gi_data + g.batch * HW * C + c0;
        for (int64_t i = r.begin; i < r.end; ++i) {
          // One tap after the other: taps may coincide (clamped at the border).
          scaled_add(image + t[i].o1 * C, t[i].w1, gs.data(), n);
          scaled_add(image + t[i].o2 * C, t[i].w2, gs.data(), n);
          scaled_add(image + t[i].o3 * C, t[i].w3, gs.data(), n);
          scaled_add(image + t[i].o4 * C, t[i].w4, gs.data(), n);
        }
      }
    });
    taps.clear();
    runs.clear();
    zeroed = true;
  };

  for (int64_t k = 0; k < static_cast<int64_t>(geometry.size()); ++k) {
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      for (int pw = 0; pw < p.pooled_w; ++pw) {
        for_each_tap_chunk(geometry[k], ph, pw, p, bin_taps, [&](const BilinearTaps<acc_t>* t, int64_t n) {
          if (static_cast<int64_t>(taps.size()) + n > kSharedTaps) scatter();
          runs.push_back(Run{k, ph, pw, static_cast<int64_t>(taps.size()), static_cast<int64_t>(taps.size()) + n});
          for (int64_t i = 0; i < n; ++i) {
            taps.push_back(PlaneTaps<acc_t>{static_cast<int32_t>(t[i].o1), static_cast<int32_t>(t[i].o2),
                                            static_cast<int32_t>(t[i].o3), static_cast<int32_t>(t[i].o4), t[i].w1,
                                            t[i].w2, t[i].w3, t[i].w4});
          }
        });
      }
    }
  }
  if (!taps.empty()) scatter();
  if (!zeroed) zero(grad_in);  // (no sample touched the map)
}

std::tuple<Tensor, Tensor> roi_align_rotated_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                         int64_t pooled_height, int64_t pooled_width,
                                                         int64_t sampling_ratio, bool aligned, bool clockwise) {
  const RotatedParams p =
      rotated_params(forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, true, kRotatedBoxWidth),
                     sampling_ratio, aligned, clockwise, kOp);
  const std::array<int64_t, 4> sizes{p.num_rois, p.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  const Tensor argmax = empty_1d(0, ScalarType::Int, input);
  if (output.numel() == 0) return {output, argmax};
  const Tensor r = make_contiguous(rois);
  dispatch_floating(input.scalar_type(), kOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    forward<scalar_t>(input, all_geometry<scalar_t>(r, p, kOp), output, p);
  });
  return {output, argmax};
}

Tensor roi_align_rotated_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& /*argmax: none*/,
                                      double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                      int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                      int64_t sampling_ratio, bool aligned, bool clockwise,
                                      bool /*deterministic: the CPU backward always is*/) {
  const RotatedParams p =
      rotated_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                                   width, kBackwardOp, true, kRotatedBoxWidth),
                     sampling_ratio, aligned, clockwise, kBackwardOp);
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  const ScalarType dtype = grad.scalar_type();
  // (Tested size by size: a product of four sizes could overflow.)
  if (grad.numel() == 0 || batch_size == 0 || channels == 0 || height == 0 || width == 0) {
    return zero(empty_4d(sizes, dtype, grad, p.nhwc));
  }
  const Tensor r = make_contiguous(rois);
  Tensor grad_in;
  dispatch_floating(dtype, kBackwardOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const auto geometry = all_geometry<scalar_t>(r, p, kBackwardOp);
    // Accumulated in opmath (float for the half types), converted once at the end.
    grad_in = empty_4d(sizes, opmath_type(dtype), grad, p.nhwc);
    if (p.nhwc) zero(grad_in);
    backward<scalar_t>(grad, geometry, grad_in, p);
  });
  return to_dtype(grad_in, dtype);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("roi_align_rotated", TORCH_BOX(&roi_align_rotated_forward_cpu));
  m.impl("_roi_align_rotated_backward", TORCH_BOX(&roi_align_rotated_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
