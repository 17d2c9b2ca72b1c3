// RoIPool on the CPU: forward and backward, NCHW and channels-last layouts.
// Forward: RoIs handed out dynamically, as in RoIAlign. Backward: disjoint parts of the gradient
// (channels, or bands of rows) per thread, each written once (race-free, thread-count independent).
#include "../../common/tensor.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/checks.h"
#include "../../common/library.h"
#include "cpu_kernels.h"
#include "params.h"
#include "../../common/geometry.h"
#include "../../common/cpu/channel_blocks.h"
#include "../../common/cpu/output_parts.h"
#include "../../common/cpu/parallel.h"
#include "../../common/cpu/vector_loops.h"

namespace roiops {
namespace cpu {
namespace {

// The cell ranges of every RoI's bin rows and columns (RoI k's row ph: rows[k * pooled_h + ph]).
struct RoiBins {
  std::vector<int64_t> batch;
  std::vector<CellRange> rows, cols;

  // Cells per channel that the call reads, over all RoIs and bins.
  int64_t cells(const PoolParams& p) const {
    int64_t total = 0;
    for (size_t k = 0; k < batch.size(); ++k) {
      int64_t h = 0, w = 0;
      for (int ph = 0; ph < p.pooled_h; ++ph) h += rows[k * p.pooled_h + ph].end - rows[k * p.pooled_h + ph].begin;
      for (int pw = 0; pw < p.pooled_w; ++pw) w += cols[k * p.pooled_w + pw].end - cols[k * p.pooled_w + pw].begin;
      total += h * w;
    }
    return total;
  }
};

template <typename scalar_t>
RoiBins all_bin_ranges(const Tensor& rois, const PoolParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  const int64_t K = rois.size(0);
  RoiBins bins{std::vector<int64_t>(K), std::vector<CellRange>(K * p.pooled_h), std::vector<CellRange>(K * p.pooled_w)};
  for (int64_t k = 0; k < K; ++k) {
    acc_t box[kBoxWidth];
    load_box<kBoxWidth>(roi_data, k, box);
    const PoolGeometry<acc_t> g = box_geometry(box, p);
    bins.batch[k] = g.batch;
    for (int ph = 0; ph < p.pooled_h; ++ph)
      bins.rows[k * p.pooled_h + ph] = pool_bin_range(g.start_h, g.bin_h, ph, static_cast<int>(p.height));
    for (int pw = 0; pw < p.pooled_w; ++pw)
      bins.cols[k * p.pooled_w + pw] = pool_bin_range(g.start_w, g.bin_w, pw, static_cast<int>(p.width));
  }
  return bins;
}

// When the bins cover the map densely, taking the maximum over contiguous channel vectors (SIMD) of
// NHWC blocks beats the NCHW column maxima, transposition included.
bool prefer_nhwc(int64_t cells_per_channel, int64_t batch, const PoolParams& p) {
  return p.channels >= kMinPackedChannels && cells_per_channel * kNhwcCellFraction >= batch * p.height * p.width;
}

// Whether a channels-last map is worth packing block by block (channel_blocks.h; tuning.h:
// kPackReadsPerCell).
bool pack_blocks(int64_t cells_per_channel, int64_t batch, const PoolParams& p) {
  // (A map of one block or less is packed already: packing would copy it as it is.)
  return p.channels > kChannelBlock && cells_per_channel >= kPackReadsPerCell * batch * p.height * p.width;
}

// NCHW, channel by channel: every RoI's bins are pooled from one channel's plane while it is in
// cache (RoI by RoI would jump to another plane for each (RoI, channel)).
template <typename scalar_t>
void forward_nchw(const Tensor& input, const RoiBins& bins, Tensor& output, Tensor& argmax, const PoolParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const Tensor in = make_contiguous(input);
  const scalar_t* in_data = in.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = argmax.mutable_data_ptr<int32_t>();
  const int64_t C = p.channels, W = p.width, HW = p.height * p.width, K = output.size(0);
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);
  parallel_for_ranges(C, K * p.pooled_h * p.pooled_w * 4, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> top(W);
    std::vector<int32_t> top_row(W);
    for (int64_t ch = c0; ch < c1; ++ch) {
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* plane = in_data + (bins.batch[k] * C + ch) * HW;
        const CellRange* kcols = bins.cols.data() + k * p.pooled_w;
        int lo = kcols[0].begin, hi = kcols[0].end;
        for (int pw = 1; pw < p.pooled_w; ++pw) {
          lo = std::min(lo, kcols[pw].begin);
          hi = std::max(hi, kcols[pw].end);
        }
        for (int ph = 0; ph < p.pooled_h; ++ph) {
          const CellRange rr = bins.rows[k * p.pooled_h + ph];
          // Column maxima over the bin row, then per bin a short scan of its columns. Same result as
          // scanning the bin row-major by the max rule: the NaN of the smallest (row, column) if there
          // is one, else the largest value, ties going to the smallest (row, column).
          if (rr.end > rr.begin && hi > lo) column_max(plane, W, rr, lo, hi - lo, top.data(), top_row.data());
          for (int pw = 0; pw < p.pooled_w; ++pw) {
            const CellRange cr = kcols[pw];
            acc_t best = 0;  // an empty bin gives 0, argmax -1
            int32_t best_i = -1;
            if (rr.end > rr.begin && cr.end > cr.begin) {
              best = top[cr.begin - lo];
              int32_t best_h = top_row[cr.begin - lo], best_w = cr.begin;
              for (int w = cr.begin + 1; w < cr.end; ++w) {  // (columns come in order: ties keep best_w)
                const int32_t h = top_row[w - lo];
                const acc_t v = top[w - lo];
                const bool nan_v = v != v, nan_best = best != best;
                if (nan_v ? !nan_best || h < best_h : !nan_best && (v > best || (v == best && h < best_h))) {
                  best = v;
                  best_h = h;
                  best_w = w;
                }
              }
              best_i = static_cast<int32_t>(best_h * W + best_w);
            }
            out_data[out_at.at(k, ch, ph, pw)] = static_cast<scalar_t>(best);
            arg_data[arg_at.at(k, ch, ph, pw)] = best_i;
          }
        }
      }
    }
  });
}

// NHWC (or an NCHW input dense enough to be worth transposing): the maximum taken over contiguous
// channel vectors (SIMD). A channels-last map that the RoIs read sparsely is pooled RoI by RoI
// (handed out dynamically), all channels at once; otherwise block by block (channel_blocks.h). RoI
// by RoI over all channels, every RoI's region came from memory anew; reading a block straight from
// a channels-last map, 128 of every 1024 bytes, was slower than either.
template <typename scalar_t>
void forward_nhwc(const Tensor& input, const RoiBins& bins, bool packed, Tensor& output, Tensor& argmax,
                  const PoolParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const bool nhwc_input = use_channels_last(input);
  const Tensor in = make_contiguous(input, nhwc_input);
  const scalar_t* in_data = in.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = argmax.mutable_data_ptr<int32_t>();
  const int64_t C = p.channels, W = p.width, HW = p.height * p.width, K = output.size(0);
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);
  if (!packed) {  // (a channels-last input: the caller packs every NCHW one)
    parallel_for_each_dynamic(K, C * p.pooled_h * p.pooled_w * 4, [&](int64_t k) {
      const scalar_t* image = in_data + bins.batch[k] * HW * C;
      std::vector<acc_t> top(C);
      std::vector<int32_t> top_i(C);
      for (int ph = 0; ph < p.pooled_h; ++ph) {
        for (int pw = 0; pw < p.pooled_w; ++pw) {
          cell_max_nhwc<scalar_t, acc_t>(image, C, W, bins.rows[k * p.pooled_h + ph], bins.cols[k * p.pooled_w + pw],
                                         top.data(), top_i.data());
          scalar_t* out = out_data + out_at.at(k, 0, ph, pw);
          int32_t* arg = arg_data + arg_at.at(k, 0, ph, pw);
          for (int64_t c = 0; c < C; ++c) {
            out[c * out_at.s1] = static_cast<scalar_t>(top[c]);
            arg[c * arg_at.s1] = top_i[c];
          }
        }
      }
    });
    return;
  }
  for_each_channel_block<scalar_t>(in, nhwc_input, [&](const scalar_t* block, int64_t c0, int64_t n) {
    parallel_for_each_dynamic(K, n * p.pooled_h * p.pooled_w * 4, [&](int64_t k) {
      const scalar_t* image = block + bins.batch[k] * HW * n;
      acc_t top[kChannelBlock];
      int32_t top_i[kChannelBlock];
      for (int ph = 0; ph < p.pooled_h; ++ph) {
        for (int pw = 0; pw < p.pooled_w; ++pw) {
          cell_max_nhwc<scalar_t, acc_t>(image, n, W, bins.rows[k * p.pooled_h + ph], bins.cols[k * p.pooled_w + pw],
                                         top, top_i);
          scalar_t* out = out_data + out_at.at(k, c0, ph, pw);
          int32_t* arg = arg_data + arg_at.at(k, c0, ph, pw);
          for (int64_t j = 0; j < n; ++j) {
            out[j * out_at.s1] = static_cast<scalar_t>(top[j]);
            arg[j * arg_at.s1] = top_i[j];
          }
        }
      }
    });
  });
}

// The backward writes every part of grad_in exactly once (output_parts.h): a thread zeroes a part
// while it is in cache, adds every contribution that lands there and moves on. Contributions to a
// cell are added in (RoI, bin) order, as a serial loop over RoIs and bins would: the result does not
// depend on the thread count.

// NCHW: channels handed out to threads one at a time; per channel, the planes of all images are
// zeroed, every RoI's bins are scattered into them (they stay in cache) and they are complete.
template <typename scalar_t>
void backward_nchw(const Tensor& grad, const std::vector<int64_t>& batch, const Tensor& argmax, Tensor& grad_in,
                   const PoolParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int32_t* arg_data = argmax.const_data_ptr<int32_t>();
  scalar_t* gi_data = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t N = grad_in.size(0), C = p.channels, HW = p.height * p.width, K = grad.size(0);
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);
  using Images = std::vector<PartAccumulator<scalar_t>>;
  parallel_for_each_dynamic_with(
      C, K * p.pooled_h * p.pooled_w + N * HW, [&] { return Images(N); },
      [&](Images& images, int64_t c) {
        std::vector<acc_t*> planes(N);
        for (int64_t b = 0; b < N; ++b) planes[b] = images[b].start(gi_data + (b * C + c) * HW, HW);
        for (int64_t k = 0; k < K; ++k) {
          acc_t* plane = planes[batch[k]];
          for (int ph = 0; ph < p.pooled_h; ++ph) {
            for (int pw = 0; pw < p.pooled_w; ++pw) {
              const int32_t i = arg_data[arg_at.at(k, c, ph, pw)];
              // argmax comes from the caller: anything outside the plane is ignored, never written.
              if (i >= 0 && i < HW) plane[i] += static_cast<acc_t>(grad_data[grad_at.at(k, c, ph, pw)]);
            }
          }
        }
        for (auto& image : images) image.finish();
      });
}

// Channels-last: the map is cut into bands of whole rows (all channels: contiguous), handed out to
// threads one at a time; each band visits, in (RoI, bin) order, the bins whose argmax falls in its
// rows, and adds the channels that do.
template <typename scalar_t>
void backward_nhwc(const Tensor& grad, const std::vector<int64_t>& batch, const Tensor& argmax, Tensor& grad_in,
                   const PoolParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int32_t* arg_data = argmax.const_data_ptr<int32_t>();
  scalar_t* gi_data = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t N = grad_in.size(0), C = p.channels, H = p.height, W = p.width, HW = H * W, K = grad.size(0);
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w;
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);
  const int64_t band_rows = rows_per_band(N, H, W * C * sizeof(acc_t));
  const int64_t bands = (H + band_rows - 1) / band_rows;

  // The rows [first, last] that each bin's argmax values fall in (first > last: none). Usually the
  // bin's own rows, but argmax comes from the caller and may point anywhere in the plane.
  std::vector<int32_t> first(K * bins), last(K * bins);
  parallel_for_each_dynamic(K, bins * C, [&](int64_t k) {
    for (int64_t bin = 0; bin < bins; ++bin) {
      const int32_t* arg = arg_data + arg_at.at(k, 0, bin / p.pooled_w, bin % p.pooled_w);
      int32_t lo = std::numeric_limits<int32_t>::max(), hi = -1;
      for (int64_t c = 0; c < C; ++c) {
        const int32_t i = arg[c * arg_at.s1];
        if (i < 0 || i >= HW) continue;
        lo = std::min(lo, i);
        hi = std::max(hi, i);
      }
      first[k * bins + bin] = hi < 0 ? 1 : static_cast<int32_t>(lo / W);
      last[k * bins + bin] = hi < 0 ? 0 : static_cast<int32_t>(hi / W);
    }
  });
  // Each band's bins (k * bins + bin), in (RoI, bin) order.
  std::vector<std::vector<int64_t>> band_bins(N * bands);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t bin = 0; bin < bins; ++bin) {
      const int64_t q = k * bins + bin;
      for (int64_t j = first[q] / band_rows; j <= last[q] / band_rows && first[q] <= last[q]; ++j) {
        band_bins[batch[k] * bands + j].push_back(q);
      }
    }
  }
  parallel_for_each_dynamic_with(
      N * bands, W * C * band_rows, [] { return PartAccumulator<scalar_t>(); },
      [&](PartAccumulator<scalar_t>& part, int64_t band) {
        const int64_t b = band / bands, h0 = band % bands * band_rows, h1 = std::min(H, h0 + band_rows);
        const int64_t lo = h0 * W, cells = (h1 - h0) * W;
        acc_t* out = part.start(gi_data + (b * HW + lo) * C, cells * C);
        for (const int64_t q : band_bins[band]) {
          const int64_t k = q / bins, ph = q % bins / p.pooled_w, pw = q % p.pooled_w;
          const int32_t* arg = arg_data + arg_at.at(k, 0, ph, pw);
          const scalar_t* g = grad_data + grad_at.at(k, 0, ph, pw);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t i = arg[c * arg_at.s1] - lo;  // a cell of this band, or skipped
            if (static_cast<uint64_t>(i) < static_cast<uint64_t>(cells)) {
              out[i * C + c] += static_cast<acc_t>(g[c * grad_at.s1]);
            }
          }
        }
        part.finish();
      });
}

}  // namespace

std::tuple<Tensor, Tensor> roi_pool_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                int64_t pooled_height, int64_t pooled_width) {
  const PoolParams p = forward_call(input, rois, spatial_scale, pooled_height, pooled_width, "roi_pool", true);
  const std::array<int64_t, 4> sizes{p.num_rois, p.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  Tensor argmax = empty_4d(sizes, ScalarType::Int, input, p.nhwc);
  if (output.numel() == 0) return {output, argmax};
  dispatch_floating(input.scalar_type(), "roi_pool", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const RoiBins bins = all_bin_ranges<scalar_t>(make_contiguous(rois), p);
    const int64_t cells = bins.cells(p);
    if (p.nhwc) {
      forward_nhwc<scalar_t>(input, bins, pack_blocks(cells, p.batch, p), output, argmax, p);
    } else if (prefer_nhwc(cells, p.batch, p)) {
      forward_nhwc<scalar_t>(input, bins, /*packed=*/true, output, argmax, p);
    } else {
      forward_nchw<scalar_t>(input, bins, output, argmax, p);
    }
  });
  return {output, argmax};
}

Tensor roi_pool_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                             int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                             int64_t height, int64_t width, bool /*deterministic: the CPU backward always is*/) {
  const char* op = "_roi_pool_backward";
  const PoolParams p = backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                                     height, width, op, true);
  check_argmax(argmax, grad, op);
  // Allocated with the layout; every element is written by the backward.
  Tensor grad_in = empty_4d({batch_size, channels, height, width}, grad.scalar_type(), grad, p.nhwc);
  if (grad_in.numel() == 0) return grad_in;
  const Tensor r = make_contiguous(rois);
  dispatch_floating(grad.scalar_type(), op, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* roi_data = r.const_data_ptr<scalar_t>();
    std::vector<int64_t> batch(r.size(0));
    for (size_t k = 0; k < batch.size(); ++k)
      batch[k] = static_cast<int64_t>(static_cast<opmath_t<scalar_t>>(roi_data[k * kBoxWidth]));
    if (p.nhwc) {
      backward_nhwc<scalar_t>(grad, batch, argmax, grad_in, p);
    } else {
      backward_nchw<scalar_t>(grad, batch, argmax, grad_in, p);
    }
  });
  return grad_in;
}

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("roi_pool", TORCH_BOX(&roi_pool_forward_cpu));
  m.impl("_roi_pool_backward", TORCH_BOX(&roi_pool_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
