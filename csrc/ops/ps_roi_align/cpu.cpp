// Position-sensitive RoIAlign on the CPU. Forward: parallel over boxes; each bin's bilinear taps are
// computed once and reused for every output channel. Backward: split by rows or planes of the input
// (common/cpu/ps_backward.h): race-free and in a fixed order, so deterministic with no extra path.
#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../../common/checks.h"
#include "../../common/cpu/parallel.h"
#include "../../common/cpu/ps_backward.h"
#include "../../common/library.h"
#include "../../common/tensor.h"
#include "params.h"

namespace roiops {
namespace cpu {
namespace {

constexpr const char* kOp = "ps_roi_align";

// Refuses (as roi_align does) a box whose adaptive grid would exceed kMaxSamplesPerBin.
template <typename scalar_t>
void check_sample_limits(const Tensor& rois, const PsAlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  for (int64_t k = 0; k < p.num_rois; ++k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    const AlignGeometry<acc_t> g = ps_align_geometry(box, p);
    if (!within_sample_limit(g)) {
      double b[kBoxWidth];
      for (int j = 0; j < kBoxWidth; ++j) b[j] = static_cast<double>(box[j]);
      fail_ps_samples_per_bin(b, static_cast<int64_t>(g.grid_h) * g.grid_w);
    }
  }
}

template <typename scalar_t>
void forward(const Tensor& input, const Tensor& rois, Tensor& output, Tensor& mapping, const PsAlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  int32_t* map = mapping.mutable_data_ptr<int32_t>();
  const Strides4 at = strides_of(output);
  const PsMapLayout layout(p);
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const int64_t work = p.out_channels * p.pooled_h * p.pooled_w * 16;
  parallel_for_each_dynamic(p.num_rois, work, [&](int64_t k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    const AlignGeometry<acc_t> g = ps_align_geometry(box, p);
    std::vector<BilinearTaps<acc_t>> taps;
    for (int i = 0; i < p.pooled_h; ++i) {
      for (int j = 0; j < p.pooled_w; ++j) {
        taps.clear();
        for_each_map_sample(g, i, j, H, W, [&](const BilinearTaps<acc_t>& t) { taps.push_back(t); });
        // Output channel c reads input channel c * bins + b: a stride of bins channels. A block of
        // channels is summed together, tap by tap, so that its independent sums overlap; each sum keeps
        // its order (torchvision's: equal bit for bit).
        const scalar_t* bin_plane = in + layout.plane(g.batch, ps_input_channel(0, i, j, p.pooled_h, p.pooled_w));
        const int64_t c_step = static_cast<int64_t>(p.pooled_h) * p.pooled_w * layout.channel, s = layout.cell;
        for (int64_t c0 = 0; c0 < p.out_channels; c0 += kPsChannelBlock) {
          const int64_t n = std::min(kPsChannelBlock, p.out_channels - c0);
          acc_t sums[kPsChannelBlock] = {};
          for (const BilinearTaps<acc_t>& t : taps) {
            const scalar_t* v = bin_plane + c0 * c_step;
            for (int64_t c = 0; c < n; ++c, v += c_step) {
              sums[c] += t.w1 * static_cast<acc_t>(v[t.o1 * s]) + t.w2 * static_cast<acc_t>(v[t.o2 * s]) +
                         t.w3 * static_cast<acc_t>(v[t.o3 * s]) + t.w4 * static_cast<acc_t>(v[t.o4 * s]);
            }
          }
          for (int64_t c = 0; c < n; ++c) {
            const int64_t o = at.at(k, c0 + c, i, j);
            out[o] = static_cast<scalar_t>(sums[c] / g.count);
            map[o] = static_cast<int32_t>(ps_input_channel(c0 + c, i, j, p.pooled_h, p.pooled_w));
          }
        }
      }
    }
  });
}

// One box of the backward: its geometry and the rows [first, last] its samples' taps reach.
template <typename acc_t>
struct AlignBoxRows {
  AlignGeometry<acc_t> g;
  int first, last;
};

// The taps of bin (i, j)'s samples on rows [y_begin, y_end) (ps_backward.h): sample (iy, ix) adds its
// taps on those rows in the order of bilinear_taps (o1, o2 on row ty.low, o3, o4 on ty.high), with the
// weights bilinear_taps computes. Rows and columns are the samples for_each_map_sample visits.
template <typename scalar_t>
Tensor backward(const Tensor& grad, const Tensor& rois, const PsAlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  std::vector<AlignBoxRows<acc_t>> boxes(p.num_rois);
  for (int64_t k = 0; k < p.num_rois; ++k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    AlignBoxRows<acc_t>& b = boxes[k];
    b.g = ps_align_geometry(box, p);
    b.first = H;
    b.last = -1;
    for (int i = 0; i < p.pooled_h; ++i) {
      const SampleRange rows = touching_samples(b.g.start_h, b.g.bin_h, i, b.g.grid_h, H);
      for (int iy = rows.begin; iy < rows.end; ++iy) {
        const AxisTaps<acc_t> ty = axis_taps(sample_coordinate(b.g.start_h, b.g.bin_h, i, iy, b.g.grid_h), H);
        if (!ty.valid) continue;
        b.first = std::min(b.first, ty.low);
        b.last = std::max(b.last, ty.high);
      }
    }
  }
  return ps_backward<scalar_t>(
      grad, p, [&](int64_t k, int, int) { return boxes[k].g.count; },
      [&](int64_t n, int y_begin, int y_end, const auto& sink) {
        for (int64_t k = 0; k < p.num_rois; ++k) {
          const AlignGeometry<acc_t>& g = boxes[k].g;
          if (g.batch != n || y_end <= boxes[k].first || y_begin > boxes[k].last) continue;
          for (int i = 0; i < p.pooled_h; ++i) {
            const SampleRange rows = touching_samples(g.start_h, g.bin_h, i, g.grid_h, H);
            for (int iy = rows.begin; iy < rows.end; ++iy) {
              const AxisTaps<acc_t> ty = axis_taps(sample_coordinate(g.start_h, g.bin_h, i, iy, g.grid_h), H);
              const bool low = ty.valid && ty.low >= y_begin && ty.low < y_end;
              const bool high = ty.valid && ty.high >= y_begin && ty.high < y_end;
              if (!low && !high) continue;
              for (int j = 0; j < p.pooled_w; ++j) {
                const SampleRange cols = touching_samples(g.start_w, g.bin_w, j, g.grid_w, W);
                for (int ix = cols.begin; ix < cols.end; ++ix) {
                  const AxisTaps<acc_t> tx = axis_taps(sample_coordinate(g.start_w, g.bin_w, j, ix, g.grid_w), W);
                  if (!tx.valid) continue;
                  if (low) {
                    sink.add(k, i, j, ty.low, tx.low, ty.w_low * tx.w_low);
                    sink.add(k, i, j, ty.low, tx.high, ty.w_low * tx.w_high);
                  }
                  if (high) {
                    sink.add(k, i, j, ty.high, tx.low, ty.w_high * tx.w_low);
                    sink.add(k, i, j, ty.high, tx.high, ty.w_high * tx.w_high);
                  }
                }
              }
            }
          }
        }
      });
}

std::tuple<Tensor, Tensor> ps_roi_align_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                    int64_t pooled_height, int64_t pooled_width,
                                                    int64_t sampling_ratio) {
  const PsAlignParams p = ps_align_params(
      ps_forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, /*check_values=*/true),
      sampling_ratio, kOp);
  const std::array<int64_t, 4> sizes{p.num_rois, p.out_channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  Tensor mapping = empty_4d(sizes, ScalarType::Int, input, p.nhwc);
  if (output.numel() == 0) return {output, mapping};
  const Tensor r = make_contiguous(rois);
  const Tensor in = make_contiguous(input, p.nhwc);
  dispatch_floating(input.scalar_type(), kOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    check_sample_limits<scalar_t>(r, p);
    forward<scalar_t>(in, r, output, mapping, p);
  });
  return {output, mapping};
}

Tensor ps_roi_align_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& channel_mapping,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                 bool /*deterministic: the CPU backward always is*/) {
  const char* op = "_ps_roi_align_backward";
  const PsAlignParams p = ps_align_params(ps_backward_call(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                           batch_size, channels, height, width, op, true),
                                          sampling_ratio, op);
  check_channel_mapping(channel_mapping, grad, op);
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  if (grad.numel() == 0 || std::find(sizes.begin(), sizes.end(), 0) != sizes.end()) {
    return zero(empty_4d(sizes, grad.scalar_type(), grad, p.nhwc));
  }
  Tensor grad_in;  // allocated by ps_backward, which gives each element one owner
  const Tensor r = make_contiguous(rois);
  dispatch_floating(grad.scalar_type(), op, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    check_sample_limits<scalar_t>(r, p);
    grad_in = backward<scalar_t>(grad, r, p);
  });
  return grad_in;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("ps_roi_align", TORCH_BOX(&ps_roi_align_forward_cpu));
  m.impl("_ps_roi_align_backward", TORCH_BOX(&ps_roi_align_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
