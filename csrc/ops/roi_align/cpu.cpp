// RoIAlign on the CPU: forward and backward, avg and max modes, NCHW and channels-last layouts.
//
// Work split: the forward hands out RoIs to threads one at a time; the backward gives each thread
// disjoint parts of the gradient (channels for NCHW, bands of rows for channels-last), so no two
// threads ever add into the same gradient cell (no atomics, and the result does not depend on the
// thread count).
// Each RoI's sample taps (4 offsets + 4 weights per sample) are computed once per chunk of bins and
// reused for every channel; a bin too large for a chunk is taken in pieces (align_pieces.h), its
// running sum or maximum carried from one piece to the next, so results do not depend on the cut.
#include "../../common/tensor.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../../common/checks.h"
#include "../../common/library.h"
#include "../../common/geometry.h"
#include "align_pieces.h"
#include "cpu_kernels.h"
#include "params.h"
#include "../../common/cpu/channel_blocks.h"
#include "../../common/cpu/output_parts.h"
#include "../../common/cpu/parallel.h"
#include "../../common/cpu/vector_loops.h"

namespace roiops {
namespace cpu {
namespace {

using align::BinPiece;
using align::find_sample;
using align::for_each_channel_piece;
using align::for_each_channel_piece_with;
using align::for_each_piece_chunk;
using align::in_one_round;
using align::PieceChunk;
using align::PieceView;
using align::PlaneTaps;
using align::roi_geometry;
using align::RoiSamples;

// Pools every RoI from `map` ([N, H, W, channels], each cell's channels contiguous) into output
// channels [c0, c0 + channels): RoIs handed out to threads one at a time; the four taps of a sample
// are contiguous channel vectors (SIMD loops in vector_loops.h). Output may have any layout.
template <typename scalar_t>
void forward_nhwc_channels(const scalar_t* map, int64_t channels, int64_t c0, const Tensor& rois, Tensor& output,
                           Tensor& argmax, const AlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = p.max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const int64_t C = channels, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);

  parallel_for_each_dynamic(rois.size(0), C * p.pooled_h * p.pooled_w * 4, [&](int64_t k) {
    const AlignGeometry<acc_t> g = roi_geometry<acc_t>(roi_data + k * kBoxWidth, p);
    const scalar_t* image = map + g.batch * C * HW;
    RoiSamples<acc_t> rs;
    PieceChunk<BilinearTaps<acc_t>> chunk;
    // The running sum or maximum of the current bin, and the sample index of the maximum.
    std::vector<acc_t> acc(C);
    std::vector<int32_t> best(p.max_mode ? C : 0);
    for_each_piece_chunk(g, p, rs, chunk, [&] {
      for (size_t i = 0; i < chunk.pieces.size(); ++i) {
        const BinPiece& piece = chunk.pieces[i];
        if (!p.max_mode) {
          bin_sum_nhwc(image, C, chunk.taps_of(i), chunk.count(i), piece.first(), acc.data());
        } else {
          bin_max_nhwc(image, C, chunk.taps_of(i), chunk.ids_of(i), chunk.count(i), piece.first(), acc.data(),
                       best.data());
        }
        if (!piece.last) continue;
        const int64_t ph = piece.bin / p.pooled_w, pw = piece.bin % p.pooled_w;
        scalar_t* out = out_data + out_at.at(k, c0, ph, pw);
        if (!p.max_mode) {
          for (int64_t c = 0; c < C; ++c) out[c * out_at.s1] = static_cast<scalar_t>(acc[c] / g.count);
        } else {
          int32_t* arg = arg_data + arg_at.at(k, c0, ph, pw);
          for (int64_t c = 0; c < C; ++c) {
            out[c * out_at.s1] = static_cast<scalar_t>(best[c] >= 0 ? acc[c] : acc_t(0));  // no sample: 0
            arg[c * arg_at.s1] = best[c];
          }
        }
      }
    });
  });
}

// The channels-last forward: all channels at once.
template <typename scalar_t>
void forward_nhwc(const Tensor& input, const Tensor& rois, Tensor& output, Tensor& argmax, const AlignParams& p) {
  const Tensor in = make_contiguous(input, /*channels_last=*/true);
  forward_nhwc_channels(in.const_data_ptr<scalar_t>(), p.channels, 0, rois, output, argmax, p);
}

// Whether an NCHW forward is worth packing (tuning.h: kPackSampleFraction).
template <typename acc_t, typename scalar_t>
bool prefer_packed(const scalar_t* roi_data, int64_t K, int64_t batch, const AlignParams& p) {
  return p.channels >= kMinPackedChannels &&
         align::total_samples<acc_t>(roi_data, K, p) * kPackSampleFraction >= batch * p.height * p.width;
}

// An NCHW input, block by block (channel_blocks.h): each block transposed into a scratch and pooled
// by the channels-last loops.
template <typename scalar_t>
void forward_nchw_packed(const Tensor& input, const Tensor& rois, Tensor& output, Tensor& argmax,
                         const AlignParams& p) {
  for_each_channel_block<scalar_t>(make_contiguous(input), false, [&](const scalar_t* block, int64_t c0, int64_t n) {
    forward_nhwc_channels(block, n, c0, rois, output, argmax, p);
  });
}

// win ? a : b through the bits. (GCC compiles a ternary on floats to a branch, which real data
// mispredicts about every other sample: the NCHW max loop ran at half the speed of the avg loop.)
template <typename T>
T select_bits(bool win, T a, T b) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const Bits mask = Bits(0) - static_cast<Bits>(win);
  return std::bit_cast<T>((std::bit_cast<Bits>(a) & mask) | (std::bit_cast<Bits>(b) & ~mask));
}

// The NCHW forward (see for_each_channel_piece).
template <typename scalar_t>
void forward_nchw(const Tensor& input, const Tensor& rois, Tensor& output, Tensor& argmax, const AlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const Tensor in = make_contiguous(input);
  const scalar_t* in_data = in.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = p.max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const int64_t C = p.channels, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);
  // Bins without samples (zero-size boxes with adaptive sampling) get no piece: they are 0 (argmax -1).
  zero(output);
  if (p.max_mode) fill(argmax, -1);
  // Per channel, the running sum or maximum (and its sample index) of a bin cut into pieces.
  std::vector<acc_t> open_value(C);
  std::vector<int32_t> open_arg(p.max_mode ? C : 0);
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  // One instantiation of the channel loop per mode: no test of the mode per bin.
  if (!p.max_mode) {
    for_each_channel_piece<acc_t>(roi_data, rois.size(0), p, [&](int64_t c, const PieceView<acc_t>& v) {
      const scalar_t* plane = in_data + (v.g->batch * C + c) * HW;
      acc_t sum = v.first ? acc_t(0) : open_value[c];
      for (int64_t s = 0; s < v.n; ++s) {
        const PlaneTaps<acc_t>& ts = v.taps[s];
        if (ts.o1 < 0) continue;  // a sample outside the map adds nothing
        sum += ts.w1 * static_cast<acc_t>(plane[ts.o1]) + ts.w2 * static_cast<acc_t>(plane[ts.o2]) +
               ts.w3 * static_cast<acc_t>(plane[ts.o3]) + ts.w4 * static_cast<acc_t>(plane[ts.o4]);
      }
      if (!v.last) {
        open_value[c] = sum;
      } else {
        out_data[out_at.at(v.k, c, v.ph, v.pw)] = static_cast<scalar_t>(sum / v.g->count);
      }
    });
    return;
  }
  for_each_channel_piece<acc_t>(roi_data, rois.size(0), p, [&](int64_t c, const PieceView<acc_t>& v) {
    const scalar_t* plane = in_data + (v.g->batch * C + c) * HW;
    const PlaneTaps<acc_t>* t = v.taps;
    // A sample outside the map is 0 (its taps read nothing).
    auto sample = [&](const PlaneTaps<acc_t>& ts) {
      return ts.o1 < 0 ? acc_t(0)
                       : ts.w1 * static_cast<acc_t>(plane[ts.o1]) + ts.w2 * static_cast<acc_t>(plane[ts.o2]) +
                             ts.w3 * static_cast<acc_t>(plane[ts.o3]) + ts.w4 * static_cast<acc_t>(plane[ts.o4]);
    };
    // The max rule, branch-free: the winner's position in the piece (-1: the maximum carried in from
    // the bin's earlier pieces), mapped to its sample index once at the end.
    acc_t top;
    int64_t best, s;
    if (v.first) {
      top = sample(t[0]);  // the first sample always counts
      best = 0;
      s = 1;
    } else {
      top = open_value[c];
      best = -1;
      s = 0;
    }
    for (; s < v.n; ++s) {
      const acc_t x = sample(t[s]);
      const bool win = max_rule_wins(x, top, /*top_at=*/0);  // (a maximum so far exists)
      const int64_t mask = -static_cast<int64_t>(win);
      top = select_bits(win, x, top);
      best = (s & mask) | (best & ~mask);
    }
    const int32_t id = best >= 0 ? v.ids[best] : open_arg[c];
    if (!v.last) {
      open_value[c] = top;
      open_arg[c] = id;
    } else {
      out_data[out_at.at(v.k, c, v.ph, v.pw)] = static_cast<scalar_t>(top);
      arg_data[arg_at.at(v.k, c, v.ph, v.pw)] = id;
    }
  });
}

// NCHW: the gradient is written channel by channel (output_parts.h): a thread zeroes the planes of a
// channel, scatters every RoI into them and, for the half types, converts them from a float scratch.
// part_t is the gradient's type: scalar_t, or float for a half type whose scatter takes more than one
// round (a channel's float planes would not last from round to round; the caller converts at the end).
template <typename scalar_t, typename part_t>
void backward_nchw(const Tensor& grad, const Tensor& rois, const Tensor& argmax, Tensor& grad_in,
                   const AlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int32_t* arg_data = p.max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  part_t* gi_data = grad_in.mutable_data_ptr<part_t>();
  const int64_t N = grad_in.size(0), C = p.channels, HW = p.height * p.width;
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);
  struct Planes {
    std::vector<PartAccumulator<part_t>> images;
    std::vector<acc_t*> at;
  };
  for_each_channel_piece_with<acc_t>(
      rois.const_data_ptr<scalar_t>(), rois.size(0), p,
      [&] { return Planes{std::vector<PartAccumulator<part_t>>(N), std::vector<acc_t*>(N)}; },
      [&](Planes& s, int64_t c) {
        for (int64_t b = 0; b < N; ++b) s.at[b] = s.images[b].start(gi_data + (b * C + c) * HW, HW);
      },
      [&](Planes& s, int64_t c, const PieceView<acc_t>& v) {
        acc_t* plane = s.at[v.g->batch];
        if constexpr (std::is_same_v<part_t, acc_t>) {  // (rounds after the first start nothing: no s.at)
          plane = gi_data + (v.g->batch * C + c) * HW;
        }
        const acc_t gv = static_cast<acc_t>(grad_data[grad_at.at(v.k, c, v.ph, v.pw)]);
        if (!p.max_mode) {
          const acc_t gs = gv / v.g->count;
          for (int64_t s = 0; s < v.n; ++s) {
            const PlaneTaps<acc_t>& ts = v.taps[s];
            if (ts.o1 < 0) continue;
            plane[ts.o1] += ts.w1 * gs;
            plane[ts.o2] += ts.w2 * gs;
            plane[ts.o3] += ts.w3 * gs;
            plane[ts.o4] += ts.w4 * gs;
          }
        } else {
          const int32_t s = arg_data[arg_at.at(v.k, c, v.ph, v.pw)];
          // argmax comes from the caller: an index outside the bin's grid is ignored.
          const PlaneTaps<acc_t>* ts = find_sample(v.taps, v.ids, v.n, s);
          if (ts == nullptr || ts->o1 < 0) return;
          plane[ts->o1] += ts->w1 * gv;
          plane[ts->o2] += ts->w2 * gv;
          plane[ts->o3] += ts->w3 * gv;
          plane[ts->o4] += ts->w4 * gv;
        }
      },
      [&](Planes& s, int64_t) {
        for (auto& image : s.images) image.finish();
      });
}

// Channels-last: the gradient is cut into bands of whole rows (all channels: contiguous), each
// written once (output_parts.h) by the thread that takes it: zeroed, every RoI that touches it
// scattered into it in RoI order (its taps recomputed per band; a tap outside the band is skipped),
// and for the half types converted from a float scratch. Each sample's taps are channel vectors.
// Contributions to a cell come in the order of a serial loop over RoIs, bins and samples, whatever
// the thread count.
template <typename scalar_t>
void backward_nhwc(const Tensor& grad, const Tensor& rois, const Tensor& argmax, Tensor& grad_in,
                   const AlignParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  const int32_t* arg_data = p.max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  scalar_t* gi_data = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t N = grad_in.size(0), C = p.channels, H = p.height, W = p.width, HW = H * W, K = rois.size(0);
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);
  const int64_t band_rows = rows_per_band(N, H, W * C * sizeof(acc_t));
  const int64_t bands = (H + band_rows - 1) / band_rows;

  std::vector<AlignGeometry<acc_t>> geometry(K);
  for (int64_t k = 0; k < K; ++k) geometry[k] = roi_geometry<acc_t>(roi_data + k * kBoxWidth, p);
  // The first and last map row that each RoI's taps touch, read from the taps themselves (a bound from
  // the box alone misses rows: float rounding of huge boxes, the zero-weight tap of a sample at -1).
  std::vector<int64_t> first_row(K, 1), last_row(K, 0);  // (first > last: no tap)
  parallel_for_each_dynamic(K, p.pooled_h * p.pooled_w * 4, [&](int64_t k) {
    if (static_cast<int64_t>(geometry[k].grid_h) * geometry[k].grid_w == 0) return;
    RoiSamples<acc_t> rs;
    PieceChunk<BilinearTaps<acc_t>> chunk;
    int64_t lo = H, hi = -1;
    for_each_piece_chunk(geometry[k], p, rs, chunk, [&] {
      for (const BilinearTaps<acc_t>& t : chunk.taps) {
        if (!t.valid) continue;
        lo = std::min(lo, t.o1 / W);  // (y_low, x_low)
        hi = std::max(hi, t.o3 / W);  // (y_high, x_low)
      }
    });
    first_row[k] = lo;
    last_row[k] = hi;
  });
  std::vector<std::vector<int64_t>> band_rois(N * bands);  // the RoIs that touch each band, in order
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = first_row[k] / band_rows; first_row[k] <= last_row[k] && j <= last_row[k] / band_rows; ++j) {
      band_rois[geometry[k].batch * bands + j].push_back(k);
    }
  }
  struct Scratch {
    PartAccumulator<scalar_t> part;
    RoiSamples<acc_t> rs;
    PieceChunk<BilinearTaps<acc_t>> chunk;
    std::vector<acc_t> g_bin;
  };
  parallel_for_each_dynamic_with(
      N * bands, W * C * band_rows, [&] { return Scratch{{}, {}, {}, std::vector<acc_t>(C)}; },
      [&](Scratch& sc, int64_t band) {
        const int64_t b = band / bands, h0 = band % bands * band_rows, h1 = std::min(H, h0 + band_rows);
        const int64_t lo = h0 * W;
        const uint64_t cells = static_cast<uint64_t>((h1 - h0) * W);
        acc_t* out = sc.part.start(gi_data + (b * HW + lo) * C, cells * C);
        // Taps 1 and 2 of a sample share a row, and so do taps 3 and 4: one test per pair.
        const auto in_band = [&](int64_t o) { return static_cast<uint64_t>(o - lo) < cells; };
        for (const int64_t k : band_rois[band]) {
          const AlignGeometry<acc_t>& g = geometry[k];
          const scalar_t* gk = grad_data + grad_at.at(k, 0, 0, 0);
          for_each_piece_chunk(g, p, sc.rs, sc.chunk, [&] {
            for (size_t i = 0; i < sc.chunk.pieces.size(); ++i) {
              const int64_t ph = sc.chunk.pieces[i].bin / p.pooled_w, pw = sc.chunk.pieces[i].bin % p.pooled_w;
              const BilinearTaps<acc_t>* t = sc.chunk.taps_of(i);
              const int64_t n = sc.chunk.count(i);
              acc_t* gb = sc.g_bin.data();
              for (int64_t c = 0; c < C; ++c) gb[c] = static_cast<acc_t>(gk[grad_at.at(0, c, ph, pw)]);
              if (!p.max_mode) {
                for (int64_t c = 0; c < C; ++c) gb[c] /= g.count;
                for (int64_t s = 0; s < n; ++s, ++t) {
                  if (!t->valid) continue;
                  // One tap after the other: taps may coincide (clamped at the border).
                  if (in_band(t->o1)) {
                    scaled_add(out + (t->o1 - lo) * C, t->w1, gb, C);
                    scaled_add(out + (t->o2 - lo) * C, t->w2, gb, C);
                  }
                  if (in_band(t->o3)) {
                    scaled_add(out + (t->o3 - lo) * C, t->w3, gb, C);
                    scaled_add(out + (t->o4 - lo) * C, t->w4, gb, C);
                  }
                }
              } else {
                for (int64_t c = 0; c < C; ++c) {
                  const int32_t s = arg_data[arg_at.at(k, c, ph, pw)];
                  // argmax comes from the caller: an index outside the bin's grid is ignored.
                  const BilinearTaps<acc_t>* found = find_sample(t, sc.chunk.ids_of(i), n, s);
                  if (found == nullptr || !found->valid) continue;
                  if (in_band(found->o1)) {
                    out[(found->o1 - lo) * C + c] += found->w1 * gb[c];
                    out[(found->o2 - lo) * C + c] += found->w2 * gb[c];
                  }
                  if (in_band(found->o3)) {
                    out[(found->o3 - lo) * C + c] += found->w3 * gb[c];
                    out[(found->o4 - lo) * C + c] += found->w4 * gb[c];
                  }
                }
              }
            }
          });
        }
        sc.part.finish();
      });
}

}  // namespace

std::tuple<Tensor, Tensor> roi_align_forward_cpu(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                                 bool aligned, std::string pool_mode) {
  const AlignParams p =
      align_params(forward_call(input, rois, spatial_scale, pooled_height, pooled_width, "roi_align", true),
                   sampling_ratio, aligned, pool_mode, "roi_align");
  const std::array<int64_t, 4> sizes{p.num_rois, p.channels, pooled_height, pooled_width};
  Tensor output = empty_4d(sizes, input.scalar_type(), input, p.nhwc);
  Tensor argmax = p.max_mode ? empty_4d(sizes, ScalarType::Int, input, p.nhwc) : empty_1d(0, ScalarType::Int, input);
  if (output.numel() == 0) return {output, argmax};
  const Tensor r = make_contiguous(rois);
  dispatch_floating(input.scalar_type(), "roi_align", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    align::check_sample_limits<opmath_t<scalar_t>>(r.const_data_ptr<scalar_t>(), p.num_rois, p);
    if (p.nhwc) {
      forward_nhwc<scalar_t>(input, r, output, argmax, p);
    } else if (prefer_packed<opmath_t<scalar_t>>(r.const_data_ptr<scalar_t>(), r.size(0), input.size(0), p)) {
      forward_nchw_packed<scalar_t>(input, r, output, argmax, p);
    } else {
      forward_nchw<scalar_t>(input, r, output, argmax, p);
    }
  });
  return {output, argmax};
}

Tensor roi_align_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                              std::string pool_mode, bool /*deterministic: the CPU backward always is*/) {
  const char* op = "_roi_align_backward";
  const AlignParams p = align_params(backward_call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                                   channels, height, width, op, true),
                                     sampling_ratio, aligned, pool_mode, op);
  if (p.max_mode) check_argmax(argmax, grad, op);
  const std::array<int64_t, 4> sizes{batch_size, channels, height, width};
  const ScalarType dtype = grad.scalar_type();
  // (Tested size by size: a product of four sizes could overflow.)
  if (grad.numel() == 0 || batch_size == 0 || channels == 0 || height == 0 || width == 0) {
    return zero(empty_4d(sizes, dtype, grad, p.nhwc));
  }
  const Tensor r = make_contiguous(rois);
  Tensor grad_in;
  dispatch_floating(dtype, op, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    using acc_t = opmath_t<scalar_t>;
    align::check_sample_limits<acc_t>(r.const_data_ptr<scalar_t>(), p.num_rois, p);
    // No transpose here: the planar scatter keeps each RoI's window of one channel in L1, so NCHW
    // gradients stay NCHW and channels-last ones are scattered as channel vectors.
    if (p.nhwc) {
      grad_in = empty_4d(sizes, dtype, grad, true);  // written band by band
      backward_nhwc<scalar_t>(grad, r, argmax, grad_in, p);
    } else if (std::is_same_v<scalar_t, acc_t> || in_one_round<acc_t>(r.const_data_ptr<scalar_t>(), r.size(0), p)) {
      grad_in = empty_4d(sizes, dtype, grad, false);  // each plane zeroed in turn
      backward_nchw<scalar_t, scalar_t>(grad, r, argmax, grad_in, p);
    } else {
      grad_in = empty_4d(sizes, opmath_type(dtype), grad, false);
      backward_nchw<scalar_t, acc_t>(grad, r, argmax, grad_in, p);
    }
  });
  return to_dtype(grad_in, dtype);
}

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CPU, m) {
  m.impl("roi_align", TORCH_BOX(&roi_align_forward_cpu));
  m.impl("_roi_align_backward", TORCH_BOX(&roi_align_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
