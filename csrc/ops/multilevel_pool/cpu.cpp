// multilevel_pool on the CPU: per level, that level's boxes are gathered and pooled by the
// single-level kernel (roi_align's or roi_pool's), and its rows are scattered into the output. The
// backward gathers each level's rows of grad and runs the single-level backward for that level's map.
// Host-side gathering costs no sync here; results are those of the single-level ops, bit for bit.
#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "../../common/cpu/parallel.h"
#include "../../common/library.h"
#include "../../common/tensor.h"
#include "../roi_align/cpu_kernels.h"
#include "../roi_pool/cpu_kernels.h"
#include "params.h"

namespace roiops {
namespace cpu {
namespace {

// The boxes of each level, in box order.
std::vector<std::vector<int64_t>> boxes_by_level(const Tensor& levels, size_t num_levels) {
  std::vector<std::vector<int64_t>> by_level(num_levels);
  const Tensor l = make_contiguous(levels);
  const int64_t* v = l.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < l.size(0); ++k) by_level[v[k]].push_back(k);
  return by_level;
}

// Rows `index` of a [K, width] box tensor. (Copied by hand: index_select is not in the stable API of
// torch 2.13, the oldest torch this library supports.)
Tensor box_rows(const Tensor& rois, const std::vector<int64_t>& index) {
  const Tensor r = make_contiguous(rois);
  const int64_t width = r.size(1), bytes = width * static_cast<int64_t>(r.element_size());
  Tensor rows =
      torch::stable::empty({static_cast<int64_t>(index.size()), width}, r.scalar_type(), std::nullopt, r.device());
  const char* from = static_cast<const char*>(r.const_data_ptr());
  char* to = static_cast<char*>(rows.mutable_data_ptr());
  for (size_t i = 0; i < index.size(); ++i) std::memcpy(to + i * bytes, from + index[i] * bytes, bytes);
  return rows;
}

// dst[rows[i]] = src[i] (or dst[i] = src[rows[i]] with gather) for 4-D tensors of one shape but the
// first dimension; a row (one box's [C, h, w]) is one block when both have the same layout.
void copy_rows(const Tensor& src, Tensor& dst, const std::vector<int64_t>& rows, bool gather) {
  if (rows.empty()) return;
  const Strides4 s = strides_of(src), d = strides_of(dst);
  const int64_t C = src.size(1), H = src.size(2), W = src.size(3), bytes = static_cast<int64_t>(src.element_size());
  const bool same_layout = s.s1 == d.s1 && s.s2 == d.s2 && s.s3 == d.s3 && s.s0 == C * H * W && d.s0 == s.s0;
  const char* from = static_cast<const char*>(src.const_data_ptr());
  char* to = static_cast<char*>(dst.mutable_data_ptr());
  parallel_for_ranges(static_cast<int64_t>(rows.size()), C * H * W, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t src_row = gather ? rows[i] : i, dst_row = gather ? i : rows[i];
      if (same_layout) {
        std::memcpy(to + dst_row * d.s0 * bytes, from + src_row * s.s0 * bytes, s.s0 * bytes);
        continue;
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            std::memcpy(to + d.at(dst_row, c, h, w) * bytes, from + s.at(src_row, c, h, w) * bytes, bytes);
    }
  });
}

Tensor gather_rows(const Tensor& src, const std::vector<int64_t>& rows) {
  Tensor dst = empty_4d({static_cast<int64_t>(rows.size()), src.size(1), src.size(2), src.size(3)}, src.scalar_type(),
                        src, use_channels_last(src));
  copy_rows(src, dst, rows, /*gather=*/true);
  return dst;
}

std::tuple<Tensor, Tensor> multilevel_pool_cpu(std::vector<Tensor> features, const Tensor& rois, const Tensor& levels,
                                               std::vector<double> spatial_scales, int64_t pooled_height,
                                               int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                               std::string mode) {
  const MultilevelCall call = multilevel_forward_call(features, rois, levels, spatial_scales, pooled_height,
                                                      pooled_width, sampling_ratio, aligned, mode, true);
  const AlignParams& first = call.levels[0];
  const std::array<int64_t, 4> sizes{first.num_rois, first.channels, pooled_height, pooled_width};
  const Tensor& like = features[0];
  Tensor output = empty_4d(sizes, like.scalar_type(), like, first.nhwc);
  Tensor argmax = call.mode == MultilevelMode::kAlignAvg ? empty_1d(0, ScalarType::Int, like)
                                                         : empty_4d(sizes, ScalarType::Int, like, first.nhwc);
  if (output.numel() == 0) return {output, argmax};
  const auto by_level = boxes_by_level(levels, features.size());
  for (size_t l = 0; l < features.size(); ++l) {
    if (by_level[l].empty()) continue;
    const Tensor rois_l = box_rows(rois, by_level[l]);
    const auto [out_l, arg_l] =
        call.mode == MultilevelMode::kPool
            ? roi_pool_forward_cpu(features[l], rois_l, spatial_scales[l], pooled_height, pooled_width)
            : roi_align_forward_cpu(features[l], rois_l, spatial_scales[l], pooled_height, pooled_width, sampling_ratio,
                                    aligned, align_mode_name(call.mode));
    copy_rows(out_l, output, by_level[l], /*gather=*/false);
    if (call.mode != MultilevelMode::kAlignAvg) copy_rows(arg_l, argmax, by_level[l], /*gather=*/false);
  }
  return {output, argmax};
}

std::vector<Tensor> multilevel_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                                 const Tensor& argmax, std::vector<double> spatial_scales,
                                                 int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                                 int64_t channels, std::vector<int64_t> heights,
                                                 std::vector<int64_t> widths, int64_t sampling_ratio, bool aligned,
                                                 std::string mode, bool deterministic) {
  const MultilevelCall call =
      multilevel_backward_call(grad, rois, levels, argmax, spatial_scales, pooled_height, pooled_width, batch_size,
                               channels, heights, widths, sampling_ratio, aligned, mode, true);
  const auto by_level = boxes_by_level(levels, heights.size());
  std::vector<Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    const Tensor rois_l = box_rows(rois, by_level[l]);
    const Tensor grad_l = gather_rows(grad, by_level[l]);
    const Tensor arg_l = call.mode == MultilevelMode::kAlignAvg ? argmax : gather_rows(argmax, by_level[l]);
    grads.push_back(call.mode == MultilevelMode::kPool
                        ? roi_pool_backward_cpu(grad_l, rois_l, arg_l, spatial_scales[l], pooled_height, pooled_width,
                                                batch_size, channels, heights[l], widths[l], deterministic)
                        : roi_align_backward_cpu(grad_l, rois_l, arg_l, spatial_scales[l], pooled_height, pooled_width,
                                                 batch_size, channels, heights[l], widths[l], sampling_ratio, aligned,
                                                 align_mode_name(call.mode), deterministic));
  }
  return grads;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("multilevel_pool", TORCH_BOX(&multilevel_pool_cpu));
  m.impl("_multilevel_pool_backward", TORCH_BOX(&multilevel_pool_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
