// Position-sensitive RoIPool on the CPU. Forward: parallel over boxes. Backward: split by rows or planes
// of the input (common/cpu/ps_backward.h): race-free and in a fixed order, so deterministic with no
// extra path.
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

constexpr const char* kOp = "ps_roi_pool";

// Parallel over boxes. A bin's mean is a sum in a fixed order (rows, then columns, as torchvision's
// kernel adds them, so equal bins are equal bit for bit); a block of output channels is summed together, cell by cell,
// so that the block's independent sums overlap instead of each waiting on its previous addition.
template <typename scalar_t>
void forward(const Tensor& input, const Tensor& rois, Tensor& output, Tensor& mapping, const PsCall& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  int32_t* map = mapping.mutable_data_ptr<int32_t>();
  const Strides4 at = strides_of(output);
  const PsMapLayout layout(p);
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w;
  parallel_for_each_dynamic(p.num_rois, p.out_channels * bins * 16, [&](int64_t k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    const PoolGeometry<acc_t> g = ps_pool_geometry(box, p);
    for (int i = 0; i < p.pooled_h; ++i) {
      const CellRange rows = pool_bin_range(g.start_h, g.bin_h, i, H);
      for (int j = 0; j < p.pooled_w; ++j) {
        const CellRange cols = pool_bin_range(g.start_w, g.bin_w, j, W);
        const int64_t area = static_cast<int64_t>(rows.end - rows.begin) * (cols.end - cols.begin);
        // Output channel c reads input channel c * bins + b: a stride of bins channels.
        const scalar_t* bin_plane = in + layout.plane(g.batch, ps_input_channel(0, i, j, p.pooled_h, p.pooled_w));
        const int64_t c_step = bins * layout.channel;
        for (int64_t c0 = 0; c0 < p.out_channels; c0 += kPsChannelBlock) {
          const int64_t n = std::min(kPsChannelBlock, p.out_channels - c0);
          acc_t sums[kPsChannelBlock] = {};
          for (int h = rows.begin; h < rows.end; ++h) {
            for (int w = cols.begin; w < cols.end; ++w) {
              const scalar_t* v = bin_plane + (static_cast<int64_t>(h) * W + w) * layout.cell + c0 * c_step;
              for (int64_t c = 0; c < n; ++c) sums[c] += static_cast<acc_t>(v[c * c_step]);
            }
          }
          for (int64_t c = 0; c < n; ++c) {
            const int64_t o = at.at(k, c0 + c, i, j);
            out[o] = static_cast<scalar_t>(area > 0 ? sums[c] / static_cast<acc_t>(area) : acc_t(0));
            map[o] = static_cast<int32_t>(ps_input_channel(c0 + c, i, j, p.pooled_h, p.pooled_w));
          }
        }
      }
    }
  });
}

// Each cell of bin (i, j) of box k receives grad / area once (visited as runs of a row, ps_backward.h).
template <typename scalar_t>
Tensor backward(const Tensor& grad, const Tensor& rois, const PsCall& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* r = rois.const_data_ptr<scalar_t>();
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  std::vector<PoolGeometry<acc_t>> boxes(p.num_rois);
  for (int64_t k = 0; k < p.num_rois; ++k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    boxes[k] = ps_pool_geometry(box, p);
  }
  const auto area = [&](int64_t k, int i, int j) {
    const CellRange rows = pool_bin_range(boxes[k].start_h, boxes[k].bin_h, i, H);
    const CellRange cols = pool_bin_range(boxes[k].start_w, boxes[k].bin_w, j, W);
    return static_cast<int64_t>(rows.end - rows.begin) * (cols.end - cols.begin);
  };
  return ps_backward<scalar_t>(
      grad, p, [&](int64_t k, int i, int j) { return static_cast<acc_t>(area(k, i, j)); },
      [&](int64_t n, int y_begin, int y_end, const auto& sink) {
        for (int64_t k = 0; k < p.num_rois; ++k) {
          const PoolGeometry<acc_t>& g = boxes[k];
          if (g.batch != n) continue;
          for (int i = 0; i < p.pooled_h; ++i) {
            const CellRange rows = pool_bin_range(g.start_h, g.bin_h, i, H);
            const int first = std::max(rows.begin, y_begin), end = std::min(rows.end, y_end);
            if (first >= end) continue;
            for (int j = 0; j < p.pooled_w; ++j) {
              const CellRange cols = pool_bin_range(g.start_w, g.bin_w, j, W);
              for (int y = first; y < end; ++y) sink.add_run(k, i, j, y, cols.begin, cols.end);
            }
          }
        }
      });
}

std::tuple<Tensor, Tensor> ps_roi_pool_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                   int64_t pooled_height, int64_t pooled_width) {
  const PsCall p = ps_forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, true);
  const std::array<int64_t, 4> sizes{p.num_rois, p.out_channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  Tensor mapping = empty_4d(sizes, ScalarType::Int, input, p.nhwc);
  if (output.numel() == 0) return {output, mapping};
  const Tensor r = make_contiguous(rois);
  const Tensor in = make_contiguous(input, p.nhwc);
  dispatch_floating(input.scalar_type(), kOp,
                    [&](auto type_tag) { forward<decltype(type_tag)>(in, r, output, mapping, p); });
  return {output, mapping};
}

Tensor ps_roi_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& channel_mapping,
                                double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                int64_t channels, int64_t height, int64_t width,
                                bool /*deterministic: the CPU backward always is*/) {
  const char* op = "_ps_roi_pool_backward";
  const PsCall p = ps_backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                                    height, width, op, true);
  check_channel_mapping(channel_mapping, grad, op);
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  if (grad.numel() == 0 || std::find(sizes.begin(), sizes.end(), 0) != sizes.end()) {
    return zero(empty_4d(sizes, grad.scalar_type(), grad, p.nhwc));
  }
  Tensor grad_in;  // allocated by ps_backward, which gives each element one owner
  const Tensor r = make_contiguous(rois);
  dispatch_floating(grad.scalar_type(), op, [&](auto type_tag) { grad_in = backward<decltype(type_tag)>(grad, r, p); });
  return grad_in;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("ps_roi_pool", TORCH_BOX(&ps_roi_pool_forward_cpu));
  m.impl("_ps_roi_pool_backward", TORCH_BOX(&ps_roi_pool_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
