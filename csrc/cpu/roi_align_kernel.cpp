// RoIAlign on the CPU: forward and backward, avg and max modes, NCHW and channels-last layouts.
//
// Work split: the forward hands out RoIs to threads one at a time; the backward gives each thread a
// disjoint range of channels, so no two threads ever add into the same gradient cell (no atomics,
// and the result does not depend on the thread count).
// Each RoI's sample taps (4 offsets + 4 weights per sample) are computed once per chunk of bins and
// reused for every channel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "../roi_checks.h"
#include "../roi_geometry.h"
#include "../roi_limits.h"
#include "../strides.h"
#include "parallel.h"
#include "vector_loops.h"

namespace roiops {
namespace cpu {
namespace {

// Upper bound on the taps held at once per thread; larger RoIs are processed a few bins at a time.
constexpr int64_t kTapsPerChunk = 1 << 16;

struct AlignParams {
  double spatial_scale;
  int pooled_h, pooled_w, sampling_ratio;
  bool aligned, max_mode;
  int64_t height, width, channels;
};

template <typename acc_t, typename scalar_t>
AlignGeometry<acc_t> roi_geometry(const scalar_t* roi_row, const AlignParams& p) {
  acc_t roi[5];
  for (int j = 0; j < 5; ++j) roi[j] = static_cast<acc_t>(roi_row[j]);
  AlignGeometry<acc_t> g = align_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w,
                                                 p.sampling_ratio, p.aligned);
  TORCH_CHECK_VALUE(static_cast<int64_t>(g.grid_h) * g.grid_w <= kMaxSamplesPerBin,
                    "roi_align: ", p.sampling_ratio > 0 ? "sampling_ratio " : "adaptive sampling (sampling_ratio <= 0)",
                    p.sampling_ratio > 0 ? std::to_string(p.sampling_ratio) : std::string(), " of box ", roi_row[1],
                    ", ", roi_row[2], ", ", roi_row[3], ", ", roi_row[4], " would take ",
                    static_cast<int64_t>(g.grid_h) * g.grid_w, " samples per bin (limit ", kMaxSamplesPerBin,
                    "); pass ", p.sampling_ratio > 0 ? "a smaller" : "a positive", " sampling_ratio");
  return g;
}

// The samples each bin of one RoI visits (roi_geometry.h: those that can touch the map, and one
// stand-in for the others), clipped once per bin row and bin column. Reusable across RoIs.
template <typename acc_t>
class RoiSamples {
 public:
  void reset(const AlignGeometry<acc_t>& g, const AlignParams& p) {
    grid_h_ = g.grid_h;
    grid_w_ = g.grid_w;
    pooled_w_ = p.pooled_w;
    rows_.resize(p.pooled_h);
    cols_.resize(p.pooled_w);
    for (int ph = 0; ph < p.pooled_h; ++ph) {
      rows_[ph] = touching_samples(g.start_h, g.bin_h, ph, g.grid_h, static_cast<int>(p.height));
    }
    for (int pw = 0; pw < p.pooled_w; ++pw) {
      cols_[pw] = touching_samples(g.start_w, g.bin_w, pw, g.grid_w, static_cast<int>(p.width));
    }
  }

  BinSamples bin(int64_t b) const { return bin_samples(rows_[b / pooled_w_], cols_[b % pooled_w_], grid_h_, grid_w_); }

  // The sum of bin(b).count() over all bins, from the rows and columns alone: every bin visits its
  // rectangle, and the stand-in unless both its row and its column are whole.
  int64_t total() const {
    if (grid_h_ <= 0 || grid_w_ <= 0) return 0;
    int64_t row_sum = 0, col_sum = 0, whole_rows = 0, whole_cols = 0;
    for (const SampleRange& r : rows_) {
      row_sum += r.size();
      whole_rows += r.size() == grid_h_;
    }
    for (const SampleRange& c : cols_) {
      col_sum += c.size();
      whole_cols += c.size() == grid_w_;
    }
    const int64_t bins = static_cast<int64_t>(rows_.size()) * cols_.size();
    return row_sum * col_sum + bins - whole_rows * whole_cols;
  }

 private:
  int grid_h_ = 0, grid_w_ = 0, pooled_w_ = 1;
  std::vector<SampleRange> rows_, cols_;
};

// Writes make(taps) and the sample index of each sample bin b visits, in visiting order, to t and ids.
template <typename acc_t, typename Out, typename Make>
void write_bin_taps(const AlignGeometry<acc_t>& g, const RoiSamples<acc_t>& rs, int64_t b, const AlignParams& p, Out* t,
                    int32_t* ids, const Make& make) {
  const int ph = static_cast<int>(b / p.pooled_w), pw = static_cast<int>(b % p.pooled_w);
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  rs.bin(b).for_each([&](int s, int iy, int ix) {
    *t++ = make(iy < 0 ? outside_taps<acc_t>() : align_sample_taps(g, ph, pw, iy, ix, H, W));
    *ids++ = s;
  });
}

// The taps of sample s among the n taps a bin visits (ids: their sample indices, ascending), or
// null if s is not among them (a sample outside the map: it takes no gradient).
template <typename Taps>
const Taps* find_sample(const Taps* t, const int32_t* ids, int64_t n, int32_t s) {
  if (s >= 0 && s < n && ids[s] == s) return t + s;  // the common case: the bin visits every sample
  const int32_t* at = std::lower_bound(ids, ids + n, s);
  return at != ids + n && *at == s ? t + (at - ids) : nullptr;
}

// The taps of a chunk of bins [first, last) of one RoI: those of bin b are taps[offsets[b - first]]
// up to taps[offsets[b - first + 1]], ids holds their sample indices.
template <typename acc_t>
struct BinChunk {
  std::vector<BilinearTaps<acc_t>> taps;
  std::vector<int32_t> ids;
  std::vector<int64_t> offsets;
  int64_t first = 0;

  const BilinearTaps<acc_t>* taps_of(int64_t b) const { return taps.data() + offsets[b - first]; }
  const int32_t* ids_of(int64_t b) const { return ids.data() + offsets[b - first]; }
  int64_t count(int64_t b) const { return offsets[b - first + 1] - offsets[b - first]; }
};

// Visits the bins of one RoI in chunks of about kTapsPerChunk taps, filling `chunk` with the taps of
// the chunk's bins. fn(first_bin, last_bin) is called per chunk.
template <typename acc_t, typename F>
void for_each_bin_chunk(const AlignGeometry<acc_t>& g, const AlignParams& p, RoiSamples<acc_t>& rs,
                        BinChunk<acc_t>& chunk, const F& fn) {
  rs.reset(g, p);
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w;
  for (int64_t first = 0; first < bins;) {
    int64_t last = first, total = 0;
    chunk.first = first;
    chunk.offsets.assign(1, 0);
    while (last < bins) {
      const int64_t n = rs.bin(last).count();
      if (last > first && total + n > kTapsPerChunk) break;
      total += n;
      chunk.offsets.push_back(total);
      ++last;
    }
    chunk.taps.resize(total);
    chunk.ids.resize(total);
    for (int64_t b = first; b < last; ++b) {
      const int64_t o = chunk.offsets[b - first];
      write_bin_taps(g, rs, b, p, chunk.taps.data() + o, chunk.ids.data() + o,
                     [](const BilinearTaps<acc_t>& t) { return t; });
    }
    fn(first, last);
    first = last;
  }
}

// The channels-last forward: RoIs handed out to threads one at a time; the four taps of a sample
// are contiguous channel vectors (SIMD loops in vector_loops.h). Output may have any layout.
template <typename scalar_t>
void forward_nhwc(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output, at::Tensor& argmax,
                  const AlignParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor in = input.contiguous(at::MemoryFormat::ChannelsLast);
  const scalar_t* in_data = in.const_data_ptr<scalar_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = p.max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const int64_t C = p.channels, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);

  parallel_for_each_dynamic(rois.size(0), C * p.pooled_h * p.pooled_w * 4, [&](int64_t k) {
    const AlignGeometry<acc_t> g = roi_geometry<acc_t>(roi_data + k * 5, p);
    const scalar_t* image = in_data + g.batch * C * HW;
    RoiSamples<acc_t> rs;
    BinChunk<acc_t> chunk;
    std::vector<acc_t> acc(C);
    std::vector<int32_t> best(p.max_mode ? C : 0);
    for_each_bin_chunk(g, p, rs, chunk, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t ph = b / p.pooled_w, pw = b % p.pooled_w;
        scalar_t* out = out_data + out_at.at(k, 0, ph, pw);
        if (!p.max_mode) {
          bin_average_nhwc(image, C, chunk.taps_of(b), chunk.count(b), g.count, acc.data());
        } else {
          // best[c] is a position in the chunk's list of the bin: its sample index is in ids.
          bin_max_nhwc(image, C, chunk.taps_of(b), chunk.count(b), acc.data(), best.data());
          const int32_t* ids = chunk.ids_of(b);
          int32_t* arg = arg_data + arg_at.at(k, 0, ph, pw);
          for (int64_t c = 0; c < C; ++c) arg[c * arg_at.s1] = best[c] < 0 ? -1 : ids[best[c]];
        }
        for (int64_t c = 0; c < C; ++c) out[c * out_at.s1] = static_cast<scalar_t>(acc[c]);
      }
    });
  });
}

// One sample's taps inside an H x W plane, compact for the NCHW kernels (which stream them once
// per channel): o1 < 0 marks a sample outside the map.
template <typename acc_t>
struct PlaneTaps {
  int32_t o1, o2, o3, o4;
  acc_t w1, w2, w3, w4;
};

template <typename acc_t>
PlaneTaps<acc_t> plane_taps(const BilinearTaps<acc_t>& t) {
  return t.valid ? PlaneTaps<acc_t>{static_cast<int32_t>(t.o1),
                                    static_cast<int32_t>(t.o2),
                                    static_cast<int32_t>(t.o3),
                                    static_cast<int32_t>(t.o4),
                                    t.w1,
                                    t.w2,
                                    t.w3,
                                    t.w4}
                 : PlaneTaps<acc_t>{-1, 0, 0, 0, acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
}

// A run of bins [first_bin, last_bin) of one RoI whose taps sit together in the shared buffer of the
// NCHW kernels: `size` taps from `offset`; bin b's start is starts[start_index + b - first_bin].
struct TapRun {
  int64_t roi, first_bin, last_bin, size, offset, start_index;
};

// Taps shared by all threads per round of the NCHW kernels (~3-6 MB: stays in L3).
constexpr int64_t kSharedTaps = int64_t(1) << 17;

// The NCHW kernels work channel by channel rather than RoI by RoI: going RoI by RoI would jump to
// another plane for every (RoI, channel) and miss the cache each time, whereas one channel's plane
// stays in cache while every RoI of a round is pooled from (or scattered into) it. The taps of a
// round of RoIs (about kSharedTaps of them) are computed once, in parallel; then each thread takes
// a disjoint range of channels and calls visit(c, k, geometry of k, ph, pw, taps, sample ids, count)
// for every bin that has samples. No races, and the visiting order within a channel does not
// depend on the thread count.
template <typename acc_t, typename scalar_t, typename F>
void for_each_channel_bin(const scalar_t* roi_data, int64_t K, const AlignParams& p, const F& visit) {
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w;
  std::vector<AlignGeometry<acc_t>> geometry(K);
  std::vector<TapRun> runs;
  RoiSamples<acc_t> rs;
  for (int64_t k = 0; k < K; ++k) {
    geometry[k] = roi_geometry<acc_t>(roi_data + k * 5, p);
    if (static_cast<int64_t>(geometry[k].grid_h) * geometry[k].grid_w == 0) continue;
    rs.reset(geometry[k], p);
    const int64_t total = rs.total();
    if (total <= kTapsPerChunk) {
      runs.push_back(TapRun{k, 0, bins, total, 0, 0});
      continue;
    }
    for (int64_t first = 0; first < bins;) {  // a large RoI: a few bins per run
      int64_t last = first, size = 0;
      while (last < bins && (last == first || size + rs.bin(last).count() <= kTapsPerChunk)) {
        size += rs.bin(last++).count();
      }
      runs.push_back(TapRun{k, first, last, size, 0, 0});
      first = last;
    }
  }
  std::vector<PlaneTaps<acc_t>> taps;
  std::vector<int32_t> ids;
  std::vector<int64_t> starts;
  for (size_t begin = 0; begin < runs.size();) {
    size_t end = begin;
    int64_t total = 0, start_count = 0;
    while (end < runs.size() && (end == begin || total + runs[end].size <= kSharedTaps)) {
      runs[end].offset = total;
      runs[end].start_index = start_count;
      total += runs[end].size;
      start_count += runs[end].last_bin - runs[end].first_bin + 1;
      ++end;
    }
    taps.resize(total);
    ids.resize(total);
    starts.resize(start_count);
    parallel_for_each_dynamic(end - begin, kTapsPerChunk, [&](int64_t q) {
      const TapRun& r = runs[begin + q];
      const AlignGeometry<acc_t>& g = geometry[r.roi];
      thread_local RoiSamples<acc_t> samples;
      samples.reset(g, p);
      int64_t o = r.offset;
      for (int64_t b = r.first_bin; b < r.last_bin; ++b) {
        starts[r.start_index + b - r.first_bin] = o;
        write_bin_taps(g, samples, b, p, taps.data() + o, ids.data() + o, plane_taps<acc_t>);
        o += samples.bin(b).count();
      }
      starts[r.start_index + r.last_bin - r.first_bin] = o;
    });
    parallel_for_ranges(p.channels, total * 4, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (size_t ri = begin; ri < end; ++ri) {
          const TapRun& r = runs[ri];
          const int64_t* start = starts.data() + r.start_index - r.first_bin;
          for (int64_t b = r.first_bin; b < r.last_bin; ++b) {
            visit(c, r.roi, geometry[r.roi], b / p.pooled_w, b % p.pooled_w, taps.data() + start[b],
                  ids.data() + start[b], start[b + 1] - start[b]);
          }
        }
      }
    });
    begin = end;
  }
}

// The NCHW forward (see for_each_channel_bin).
template <typename scalar_t>
void forward_nchw(const at::Tensor& input, const at::Tensor& rois, at::Tensor& output, at::Tensor& argmax,
                  const AlignParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor in = input.contiguous();
  const scalar_t* in_data = in.const_data_ptr<scalar_t>();
  scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
  int32_t* arg_data = p.max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
  const int64_t C = p.channels, HW = p.height * p.width;
  const Strides4 out_at = strides_of(output);
  const Strides4 arg_at = strides_of(argmax);
  // Bins without samples (zero-size boxes with adaptive sampling) get no run: they are 0 (argmax -1).
  output.zero_();
  if (p.max_mode) argmax.fill_(-1);
  for_each_channel_bin<acc_t>(
      rois.const_data_ptr<scalar_t>(), rois.size(0), p,
      [&](int64_t c, int64_t k, const AlignGeometry<acc_t>& g, int64_t ph, int64_t pw, const PlaneTaps<acc_t>* t,
          const int32_t* ids, int64_t n) {
        const scalar_t* plane = in_data + (g.batch * C + c) * HW;
        acc_t value;
        if (!p.max_mode) {
          acc_t sum = 0;
          for (int64_t s = 0; s < n; ++s) {
            const PlaneTaps<acc_t>& ts = t[s];
            if (ts.o1 < 0) continue;
            sum += ts.w1 * static_cast<acc_t>(plane[ts.o1]) + ts.w2 * static_cast<acc_t>(plane[ts.o2]) +
                   ts.w3 * static_cast<acc_t>(plane[ts.o3]) + ts.w4 * static_cast<acc_t>(plane[ts.o4]);
          }
          value = sum / g.count;
        } else {
          acc_t top = 0;
          int32_t top_s = -1;
          for (int64_t s = 0; s < n; ++s) {
            const PlaneTaps<acc_t>& ts = t[s];
            // An outside sample is a 0 that can win.
            const acc_t v =
                ts.o1 < 0 ? acc_t(0)
                          : ts.w1 * static_cast<acc_t>(plane[ts.o1]) + ts.w2 * static_cast<acc_t>(plane[ts.o2]) +
                                ts.w3 * static_cast<acc_t>(plane[ts.o3]) + ts.w4 * static_cast<acc_t>(plane[ts.o4]);
            if (v > top || top_s < 0) {  // the first sample always counts (-inf too)
              top = v;
              top_s = ids[s];
            }
          }
          value = top;
          arg_data[arg_at.at(k, c, ph, pw)] = top_s;
        }
        out_data[out_at.at(k, c, ph, pw)] = static_cast<scalar_t>(value);
      });
}

template <typename scalar_t>
void backward_nchw(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, at::Tensor& grad_in,
                   const AlignParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int32_t* arg_data = p.max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  acc_t* gi_data = grad_in.mutable_data_ptr<acc_t>();
  const int64_t C = p.channels, HW = p.height * p.width;
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);
  for_each_channel_bin<acc_t>(rois.const_data_ptr<scalar_t>(), rois.size(0), p,
                              [&](int64_t c, int64_t k, const AlignGeometry<acc_t>& g, int64_t ph, int64_t pw,
                                  const PlaneTaps<acc_t>* t, const int32_t* ids, int64_t n) {
                                acc_t* plane = gi_data + (g.batch * C + c) * HW;
                                const acc_t gv = static_cast<acc_t>(grad_data[grad_at.at(k, c, ph, pw)]);
                                if (!p.max_mode) {
                                  const acc_t gs = gv / g.count;
                                  for (int64_t s = 0; s < n; ++s) {
                                    const PlaneTaps<acc_t>& ts = t[s];
                                    if (ts.o1 < 0) continue;
                                    plane[ts.o1] += ts.w1 * gs;
                                    plane[ts.o2] += ts.w2 * gs;
                                    plane[ts.o3] += ts.w3 * gs;
                                    plane[ts.o4] += ts.w4 * gs;
                                  }
                                } else {
                                  const int32_t s = arg_data[arg_at.at(k, c, ph, pw)];
                                  // argmax comes from the caller: an index outside the bin's grid is ignored.
                                  const PlaneTaps<acc_t>* ts = find_sample(t, ids, n, s);
                                  if (ts == nullptr || ts->o1 < 0) return;
                                  plane[ts->o1] += ts->w1 * gv;
                                  plane[ts->o2] += ts->w2 * gv;
                                  plane[ts->o3] += ts->w3 * gv;
                                  plane[ts->o4] += ts->w4 * gv;
                                }
                              });
}

// The channels-last backward: each sample's four taps are channel vectors of the thread's channel
// range. grad_in (here and in backward_nchw) is an opmath-typed buffer (float for the half types,
// so that many small contributions are not rounded away).
template <typename scalar_t>
void backward_nhwc(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, at::Tensor& grad_in,
                   const AlignParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  const int32_t* arg_data = p.max_mode ? argmax.const_data_ptr<int32_t>() : nullptr;
  acc_t* gi_data = grad_in.mutable_data_ptr<acc_t>();
  const int64_t C = p.channels, HW = p.height * p.width, K = rois.size(0);
  const Strides4 grad_at = strides_of(grad);
  const Strides4 arg_at = strides_of(argmax);

  parallel_for_ranges(C, K * p.pooled_h * p.pooled_w * 4, [&](int64_t c0, int64_t c1) {
    RoiSamples<acc_t> rs;
    BinChunk<acc_t> chunk;
    std::vector<acc_t> g_bin(c1 - c0);
    for (int64_t k = 0; k < K; ++k) {
      const AlignGeometry<acc_t> g = roi_geometry<acc_t>(roi_data + k * 5, p);
      const int64_t per_bin = static_cast<int64_t>(g.grid_h) * g.grid_w;
      if (per_bin == 0) continue;
      acc_t* image = gi_data + g.batch * C * HW;
      const scalar_t* gk = grad_data + grad_at.at(k, 0, 0, 0);
      for_each_bin_chunk(g, p, rs, chunk, [&](int64_t first, int64_t last) {
        const int64_t cn = c1 - c0;
        for (int64_t b = first; b < last; ++b) {
          const int64_t ph = b / p.pooled_w, pw = b % p.pooled_w;
          const BilinearTaps<acc_t>* t = chunk.taps_of(b);
          const int64_t n = chunk.count(b);
          for (int64_t c = 0; c < cn; ++c) {
            g_bin[c] = static_cast<acc_t>(gk[grad_at.at(0, c0 + c, ph, pw)]);
          }
          if (!p.max_mode) {
            for (int64_t c = 0; c < cn; ++c) g_bin[c] /= g.count;
            for (int64_t s = 0; s < n; ++s, ++t) {
              if (!t->valid) continue;
              acc_t* q1 = image + t->o1 * C + c0;
              acc_t* q2 = image + t->o2 * C + c0;
              acc_t* q3 = image + t->o3 * C + c0;
              acc_t* q4 = image + t->o4 * C + c0;
              const acc_t w1 = t->w1, w2 = t->w2, w3 = t->w3, w4 = t->w4;
              const acc_t* gb = g_bin.data();
              // One tap after the other: taps may coincide (clamped at the border).
              scaled_add(q1, w1, gb, cn);
              scaled_add(q2, w2, gb, cn);
              scaled_add(q3, w3, gb, cn);
              scaled_add(q4, w4, gb, cn);
            }
          } else {
            for (int64_t c = 0; c < cn; ++c) {
              const int32_t s = arg_data[arg_at.at(k, c0 + c, ph, pw)];
              const BilinearTaps<acc_t>* found = find_sample(t, chunk.ids_of(b), n, s);
              if (found == nullptr || !found->valid) continue;
              const BilinearTaps<acc_t>& ts = *found;
              const acc_t gv = g_bin[c];
              image[ts.o1 * C + c0 + c] += ts.w1 * gv;
              image[ts.o2 * C + c0 + c] += ts.w2 * gv;
              image[ts.o3 * C + c0 + c] += ts.w3 * gv;
              image[ts.o4 * C + c0 + c] += ts.w4 * gv;
            }
          }
        }
      });
    }
  });
}

AlignParams make_params(double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                        bool aligned, const std::string& pool_mode, int64_t channels, int64_t height, int64_t width) {
  check_sampling_ratio(sampling_ratio, "roi_align");
  check_spatial_scale(spatial_scale, "roi_align");
  return AlignParams{spatial_scale,
                     static_cast<int>(pooled_height),
                     static_cast<int>(pooled_width),
                     static_cast<int>(sampling_ratio),
                     aligned,
                     is_max_mode(pool_mode),
                     height,
                     width,
                     channels};
}

std::tuple<at::Tensor, at::Tensor> roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_height,
                                                         int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                         std::string pool_mode) {
  check_forward_args(input, rois, pooled_height, pooled_width, "roi_align");
  const AlignParams p = make_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode,
                                    input.size(1), input.size(2), input.size(3));
  const auto layout = use_channels_last(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t K = rois.size(0);
  at::Tensor output = at::empty({K, p.channels, pooled_height, pooled_width}, input.options(), layout);
  at::Tensor argmax =
      p.max_mode ? at::empty({K, p.channels, pooled_height, pooled_width}, input.options().dtype(at::kInt), layout)
                 : at::empty({0}, input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    if (use_channels_last(input)) {
      forward_nhwc<scalar_t>(input, r, output, argmax, p);
    } else {
      forward_nchw<scalar_t>(input, r, output, argmax, p);
    }
  });
  return {output, argmax};
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  std::string pool_mode, bool /*deterministic: the CPU backward always is*/) {
  check_backward_args(grad, rois, batch_size, channels, height, width, pooled_height, pooled_width,
                      "_roi_align_backward");
  const AlignParams p = make_params(spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode,
                                    channels, height, width);
  if (p.max_mode) check_argmax(argmax, grad, "_roi_align_backward");
  const auto layout = use_channels_last(grad) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto acc_dtype = at::toOpMathType(grad.scalar_type());
  const auto acc_options = grad.options().dtype(acc_dtype);
  if (grad.numel() == 0 || batch_size * channels * height * width == 0) {
    return at::empty({batch_size, channels, height, width}, grad.options(), layout).zero_();
  }
  const at::Tensor r = rois.contiguous();
  at::Tensor grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    // No transpose here: the planar scatter keeps each RoI's window of one channel in L1, so NCHW
    // gradients stay NCHW and channels-last ones are scattered as channel vectors.
    // (at::zeros ignores a memory format passed in its options: allocate with the layout, then zero.)
    grad_in = at::empty({batch_size, channels, height, width}, acc_options, layout).zero_();
    if (layout == at::MemoryFormat::ChannelsLast) {
      backward_nhwc<scalar_t>(grad, r, argmax, grad_in, p);
    } else {
      backward_nchw<scalar_t>(grad, r, argmax, grad_in, p);
    }
  });
  return acc_dtype == grad.scalar_type() ? grad_in : grad_in.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(roiops, CPU, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cpu));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cpu));
}

}  // namespace cpu
}  // namespace roiops
