// Position-sensitive RoIPool on the CPU. Forward: parallel over boxes. Backward: a gather by rows of
// the input (common/cpu/ps_backward.h): race-free and in a fixed order, so deterministic with no
// extra path.
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
  parallel_for_each_dynamic(p.num_rois, p.out_channels * p.pooled_h * p.pooled_w * 16, [&](int64_t k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(r, k, box);
    const PoolGeometry<acc_t> g = ps_pool_geometry(box, p);
    for (int i = 0; i < p.pooled_h; ++i) {
      const CellRange rows = pool_bin_range(g.start_h, g.bin_h, i, H);
      for (int j = 0; j < p.pooled_w; ++j) {
        const CellRange cols = pool_bin_range(g.start_w, g.bin_w, j, W);
        const int64_t area = static_cast<int64_t>(rows.end - rows.begin) * (cols.end - cols.begin);
        for (int64_t c = 0; c < p.out_channels; ++c) {
          const int64_t c_in = ps_input_channel(c, i, j, p.pooled_h, p.pooled_w);
          const scalar_t* plane = in + layout.plane(g.batch, c_in);
          acc_t sum = 0;
          for (int h = rows.begin; h < rows.end; ++h) {
            for (int w = cols.begin; w < cols.end; ++w) {
              sum += static_cast<acc_t>(plane[(static_cast<int64_t>(h) * W + w) * layout.cell]);
            }
          }
          const int64_t o = at.at(k, c, i, j);
          out[o] = static_cast<scalar_t>(area > 0 ? sum / static_cast<acc_t>(area) : acc_t(0));
          map[o] = static_cast<int32_t>(c_in);
        }
      }
    }
  });
}

// Each cell of bin (i, j) of box k receives grad / area once, gathered row by row (ps_backward.h).
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
  return ps_backward_by_rows<scalar_t>(
      grad, p, [&](int64_t k, int i, int j) { return static_cast<acc_t>(area(k, i, j)); },
      [&](int64_t n, int y, const PsGradRow<acc_t>& row) {
        for (int64_t k = 0; k < p.num_rois; ++k) {
          const PoolGeometry<acc_t>& g = boxes[k];
          if (g.batch != n) continue;
          for (int i = 0; i < p.pooled_h; ++i) {
            const CellRange rows = pool_bin_range(g.start_h, g.bin_h, i, H);
            if (y < rows.begin || y >= rows.end) continue;
            for (int j = 0; j < p.pooled_w; ++j) {
              const CellRange cols = pool_bin_range(g.start_w, g.bin_w, j, W);
              const acc_t* s = row.share(k, i, j);
              for (int x = cols.begin; x < cols.end; ++x) row.add(x, i, j, s);
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
  Tensor grad_in = empty_4d({batch_size, channels, height, width}, grad.scalar_type(), grad, p.nhwc);
  if (grad_in.numel() == 0) return grad_in;
  if (grad.numel() == 0) return zero(grad_in);
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
