// Precise RoI Pooling on the CPU: forward, input backward and box backward, NCHW and channels-last.
//
// The weights of a bin's cells are separable (geometry.h): per bin, one weight per row and one per
// column of the cells it touches, computed once and used for every channel.
// Forward and box backward: RoIs handed out to threads one at a time (each RoI writes only its own
// output and its own box gradient). Input backward: each thread owns a range of channels of the
// gradient, into which every RoI is scattered in order (no atomics; the result does not depend on
// the thread count).
#include "../../common/tensor.h"

#include <algorithm>
#include <array>
#include <tuple>
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

constexpr const char* kOp = "prroi_pool";
constexpr const char* kBackwardOp = "_prroi_pool_backward";
constexpr const char* kRoisBackwardOp = "_prroi_pool_rois_backward";

// The cells of one bin along both axes and their weights (weights[i] for cell begin + i).
template <typename acc_t>
struct BinWeights {
  CellSpan rows, cols;
  std::vector<acc_t> wy, wx;

  void compute(const PrroiGeometry<acc_t>& g, int ph, int pw, const PrroiParams& p) {
    fill_axis(bin_axis(g.start_h, g.bin_h, ph), static_cast<int>(p.height), rows, wy);
    fill_axis(bin_axis(g.start_w, g.bin_w, pw), static_cast<int>(p.width), cols, wx);
  }

 private:
  static void fill_axis(const BinAxis<acc_t>& axis, int size, CellSpan& span, std::vector<acc_t>& w) {
    span = axis.cells(size);
    w.resize(span.size());
    for (int i = 0; i < span.size(); ++i) w[i] = axis.weight(span.begin + i);
  }
};

template <typename scalar_t>
PrroiGeometry<opmath_t<scalar_t>> load_geometry(const scalar_t* rois, int64_t k, const PrroiParams& p) {
  opmath_t<scalar_t> box[kBoxWidth];
  load_box<kBoxWidth>(rois, k, box);
  return box_geometry(box, p);
}

// The mean of one channel's plane (row stride W) over a bin: sum_r wy_r sum_c wx_c v[r, c].
template <typename scalar_t, typename acc_t>
acc_t plane_mean(const scalar_t* plane, int64_t W, const BinWeights<acc_t>& b) {
  acc_t sum = acc_t(0);
  for (int i = 0; i < b.rows.size(); ++i) {
    const scalar_t* row = plane + (b.rows.begin + i) * W + b.cols.begin;
    acc_t row_sum = acc_t(0);
    for (int j = 0; j < b.cols.size(); ++j) row_sum += b.wx[j] * static_cast<acc_t>(row[j]);
    sum += b.wy[i] * row_sum;
  }
  return sum;
}

// Pools every RoI from `map` ([N, H, W, channels] with each cell's channels contiguous when nhwc, else
// [N, channels, H, W]) into output channels [c0, c0 + channels).
template <typename scalar_t>
void forward_channels(const scalar_t* map, bool nhwc, int64_t channels, int64_t c0, const scalar_t* rois,
                      Tensor& output, const PrroiParams& p) {
  using acc_t = opmath_t<scalar_t>;
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  const int64_t C = channels, W = p.width, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  parallel_for_each_dynamic_with(
      p.num_rois, C * p.pooled_h * p.pooled_w * 16,
      [&] { return std::make_tuple(std::vector<acc_t>(C), std::vector<acc_t>(nhwc ? C : 0), BinWeights<acc_t>()); },
      [&](auto& scratch, int64_t k) {
        auto& [acc, row_sum, b] = scratch;
        const PrroiGeometry<acc_t> g = load_geometry(rois, k, p);
        const scalar_t* image = map + g.batch * C * HW;
        for (int ph = 0; ph < p.pooled_h; ++ph) {
          for (int pw = 0; pw < p.pooled_w; ++pw) {
            std::fill(acc.begin(), acc.end(), acc_t(0));
            if (!g.empty) {
              b.compute(g, ph, pw, p);
              if (nhwc) {
                // The arithmetic of plane_mean, a vector of channels at a time (the same results).
                for (int i = 0; i < b.rows.size(); ++i) {
                  std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
                  for (int j = 0; j < b.cols.size(); ++j) {
                    const int64_t cell = static_cast<int64_t>(b.rows.begin + i) * W + b.cols.begin + j;
                    scaled_add(row_sum.data(), b.wx[j], image + cell * C, C);
                  }
                  scaled_add(acc.data(), b.wy[i], row_sum.data(), C);
                }
              } else {
                for (int64_t c = 0; c < C; ++c) acc[c] = plane_mean(image + c * HW, W, b);
              }
            }
            for (int64_t c = 0; c < C; ++c) out_data[out_at.at(k, c0 + c, ph, pw)] = static_cast<scalar_t>(acc[c]);
          }
        }
      });
}

// The map's cells that the RoIs' bins read, counted per RoI (a bin reads the cells of its span).
template <typename scalar_t>
double cells_read(const scalar_t* rois, const PrroiParams& p) {
  using acc_t = opmath_t<scalar_t>;
  double cells = 0;
  for (int64_t k = 0; k < p.num_rois; ++k) {
    const PrroiGeometry<acc_t> g = load_geometry(rois, k, p);
    if (g.empty) continue;
    const BinAxis<acc_t> ay{g.start_h, g.start_h + g.bin_h * static_cast<acc_t>(p.pooled_h), g.bin_h};
    const BinAxis<acc_t> ax{g.start_w, g.start_w + g.bin_w * static_cast<acc_t>(p.pooled_w), g.bin_w};
    cells +=
        static_cast<double>(ay.cells(static_cast<int>(p.height)).size()) * ax.cells(static_cast<int>(p.width)).size();
  }
  return cells;
}

// Channels-last maps are pooled as they are. An NCHW map that the bins read densely is packed one
// block of channels at a time (channel_blocks.h, tuning.h: kPackSampleFraction): a bin then reads
// contiguous channel vectors of a block that stays in cache, instead of one cell of every plane.
template <typename scalar_t>
void forward(const Tensor& in, const scalar_t* rois, Tensor& output, const PrroiParams& p) {
  if (p.nhwc) return forward_channels(in.const_data_ptr<scalar_t>(), true, p.channels, 0, rois, output, p);
  if (p.channels < kMinPackedChannels ||
      cells_read(rois, p) * kPackSampleFraction < static_cast<double>(p.batch * p.height * p.width)) {
    return forward_channels(in.const_data_ptr<scalar_t>(), false, p.channels, 0, rois, output, p);
  }
  for_each_channel_block<scalar_t>(in, false, [&](const scalar_t* block, int64_t c0, int64_t n) {
    forward_channels(block, true, n, c0, rois, output, p);
  });
}

// The input gradient in acc_t, NCHW or channels-last like grad. Each thread zeroes its own channels
// (NCHW: its planes; channels-last: the buffer is zeroed beforehand) and scatters every RoI into them.
template <typename scalar_t>
void backward(const Tensor& grad, const scalar_t* rois, Tensor& grad_in, const PrroiParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  acc_t* gi_data = grad_in.mutable_data_ptr<acc_t>();
  const int64_t C = p.channels, W = p.width, HW = p.height * p.width;
  const Strides4 grad_at = strides_of(grad);
  const int bins_per_box = p.pooled_h * p.pooled_w;
  parallel_for_ranges(C, p.num_rois * bins_per_box * 16, [&](int64_t c0, int64_t c1) {
    BinWeights<acc_t> b;
    std::vector<acc_t> gs(c1 - c0), gy(c1 - c0);
    if (!p.nhwc) {
      for (int64_t b = 0; b < p.batch; ++b) {
        acc_t* planes = gi_data + (b * C + c0) * HW;
        prefault(planes, (c1 - c0) * HW * sizeof(acc_t));
        std::fill_n(planes, (c1 - c0) * HW, acc_t(0));
      }
    }
    for (int64_t k = 0; k < p.num_rois; ++k) {
      const PrroiGeometry<acc_t> g = load_geometry(rois, k, p);
      if (g.empty) continue;
      if (!p.nhwc) {
        // Bin by bin (its weights computed once, in a buffer of the bin's size), channel by channel.
        for (int ph = 0; ph < p.pooled_h; ++ph) {
          for (int pw = 0; pw < p.pooled_w; ++pw) {
            b.compute(g, ph, pw, p);
            for (int64_t c = c0; c < c1; ++c) {
              const acc_t gv = static_cast<acc_t>(grad_data[grad_at.at(k, c, ph, pw)]);
              if (gv == acc_t(0)) continue;  // adds nothing (NaN and inf do go on)
              acc_t* plane = gi_data + (g.batch * C + c) * HW;
              for (int i = 0; i < b.rows.size(); ++i) {
                acc_t* row = plane + (b.rows.begin + i) * W + b.cols.begin;
                const acc_t gy = gv * b.wy[i];
                for (int j = 0; j < b.cols.size(); ++j) row[j] += gy * b.wx[j];
              }
            }
          }
        }
        continue;
      }
      acc_t* image = gi_data + g.batch * HW * C + c0;
      for (int ph = 0; ph < p.pooled_h; ++ph) {
        for (int pw = 0; pw < p.pooled_w; ++pw) {
          for (int64_t c = c0; c < c1; ++c) gs[c - c0] = static_cast<acc_t>(grad_data[grad_at.at(k, c, ph, pw)]);
          b.compute(g, ph, pw, p);
          // The arithmetic of the NCHW scatter, (g * wy) * wx, a vector of channels at a time.
          for (int i = 0; i < b.rows.size(); ++i) {
            for (int64_t c = 0; c < c1 - c0; ++c) gy[c] = gs[c] * b.wy[i];
            for (int j = 0; j < b.cols.size(); ++j) {
              const int64_t cell = static_cast<int64_t>(b.rows.begin + i) * W + b.cols.begin + j;
              scaled_add(image + cell * C, b.wx[j], gy.data(), c1 - c0);
            }
          }
        }
      }
    }
  });
}

// The interpolation weights of the point x along one axis: at most two cells.
template <typename acc_t>
struct PointWeights {
  CellSpan span;
  acc_t w[2];
  PointWeights(acc_t x, int size) : span(point_span(x, size)), w{acc_t(0), acc_t(0)} {
    for (int i = 0; i < span.size() && i < 2; ++i) w[i] = hat(x, span.begin + i);
  }
};

// The box gradient: per RoI, d (sum over its bins and channels of grad * output) / d (x1, y1, x2, y2).
template <typename scalar_t>
void rois_backward(const Tensor& grad, const Tensor& input, const scalar_t* rois, scalar_t* grad_rois,
                   const PrroiParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const scalar_t* map = input.const_data_ptr<scalar_t>();
  const Strides4 grad_at = strides_of(grad), in_at = strides_of(input);
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const acc_t scale = static_cast<acc_t>(p.spatial_scale);
  parallel_for_each_dynamic_with(
      p.num_rois, p.channels * p.pooled_h * p.pooled_w * 32, [] { return BinWeights<acc_t>(); },
      [&](BinWeights<acc_t>& b, int64_t k) {
        const PrroiGeometry<acc_t> g = load_geometry(rois, k, p);
        acc_t total[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (int ph = 0; !g.empty && ph < p.pooled_h; ++ph) {
          for (int pw = 0; pw < p.pooled_w; ++pw) {
            b.compute(g, ph, pw, p);
            const BinAxis<acc_t> ax = bin_axis(g.start_w, g.bin_w, pw), ay = bin_axis(g.start_h, g.bin_h, ph);
            const PointWeights<acc_t> x0(ax.lo, W), x1(ax.hi, W), y0(ay.lo, H), y1(ay.hi, H);
            for (int64_t c = 0; c < p.channels; ++c) {
              const acc_t gv = static_cast<acc_t>(grad_data[grad_at.at(k, c, ph, pw)]);
              if (gv == acc_t(0)) continue;
              const auto v = [&](int r, int col) { return static_cast<acc_t>(map[in_at.at(g.batch, c, r, col)]); };
              EdgeMeans<acc_t> m{acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
              for (int i = 0; i < b.rows.size(); ++i) {
                const int r = b.rows.begin + i;
                acc_t inside = acc_t(0), left = acc_t(0), right = acc_t(0);
                for (int j = 0; j < b.cols.size(); ++j) inside += b.wx[j] * v(r, b.cols.begin + j);
                for (int j = 0; j < x0.span.size(); ++j) left += x0.w[j] * v(r, x0.span.begin + j);
                for (int j = 0; j < x1.span.size(); ++j) right += x1.w[j] * v(r, x1.span.begin + j);
                m.out += b.wy[i] * inside;
                m.x0 += b.wy[i] * left;
                m.x1 += b.wy[i] * right;
              }
              for (int j = 0; j < b.cols.size(); ++j) {
                const int col = b.cols.begin + j;
                acc_t top = acc_t(0), bottom = acc_t(0);
                for (int i = 0; i < y0.span.size(); ++i) top += y0.w[i] * v(y0.span.begin + i, col);
                for (int i = 0; i < y1.span.size(); ++i) bottom += y1.w[i] * v(y1.span.begin + i, col);
                m.y0 += b.wx[j] * top;
                m.y1 += b.wx[j] * bottom;
              }
              add_box_gradient(m, gv, ph, pw, p.pooled_h, p.pooled_w, g.bin_h, g.bin_w, scale, total);
            }
          }
        }
        grad_rois[k * kBoxWidth] = scalar_t(0);
        for (int j = 0; j < 4; ++j) grad_rois[k * kBoxWidth + 1 + j] = static_cast<scalar_t>(total[j]);
      });
}

std::tuple<Tensor, Tensor> prroi_pool_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                  int64_t pooled_height, int64_t pooled_width, bool aligned) {
  const PrroiParams p =
      prroi_params(forward_call(input, rois, spatial_scale, pooled_height, pooled_width, kOp, true), aligned);
  const std::array<int64_t, 4> sizes{p.num_rois, p.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  const Tensor argmax = empty_1d(0, ScalarType::Int, input);
  if (output.numel() == 0) return {output, argmax};
  const Tensor in = make_contiguous(input, p.nhwc);
  const Tensor r = make_contiguous(rois);
  dispatch_floating(input.scalar_type(), kOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    forward<scalar_t>(in, r.const_data_ptr<scalar_t>(), output, p);
  });
  return {output, argmax};
}

Tensor prroi_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& /*argmax: none*/,
                               double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                               int64_t channels, int64_t height, int64_t width, bool aligned,
                               bool /*deterministic: the CPU backward always is*/) {
  const PrroiParams p = prroi_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                                   channels, height, width, kBackwardOp, true),
                                     aligned);
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
    // Accumulated in opmath (float for the half types), converted once at the end.
    grad_in = empty_4d(sizes, opmath_type(dtype), grad, p.nhwc);
    if (p.nhwc) zero(grad_in);  // (NCHW planes are zeroed by the threads that own them)
    backward<scalar_t>(grad, r.const_data_ptr<scalar_t>(), grad_in, p);
  });
  return to_dtype(grad_in, dtype);
}

Tensor prroi_pool_rois_backward_cpu(const Tensor& grad, const Tensor& input, const Tensor& rois, double spatial_scale,
                                    int64_t pooled_height, int64_t pooled_width, bool aligned) {
  const PrroiParams p =
      rois_backward_call(grad, input, rois, spatial_scale, pooled_height, pooled_width, aligned, kRoisBackwardOp, true);
  Tensor grad_rois = zero(empty_2d(rois.size(0), kBoxWidth, rois.scalar_type(), rois));
  if (grad.numel() == 0) return grad_rois;
  const Tensor r = make_contiguous(rois);
  dispatch_floating(input.scalar_type(), kRoisBackwardOp, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    rois_backward<scalar_t>(grad, input, r.const_data_ptr<scalar_t>(), grad_rois.mutable_data_ptr<scalar_t>(), p);
  });
  return grad_rois;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("prroi_pool", TORCH_BOX(&prroi_pool_forward_cpu));
  m.impl("_prroi_pool_backward", TORCH_BOX(&prroi_pool_backward_cpu));
  m.impl("_prroi_pool_rois_backward", TORCH_BOX(&prroi_pool_rois_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
