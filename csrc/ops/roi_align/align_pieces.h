// How the RoIAlign CPU kernels walk a call's samples: the geometry of each RoI, the samples each bin
// visits, and the buffers of precomputed taps (4 offsets + 4 weights per sample) that every channel
// reuses. The buffers are bounded by constants, whatever the arguments: a bin is visited in pieces
// of at most kTapsPerChunk samples (a bin of 2^24 samples is 256 pieces), and the kernels carry its
// running sum or maximum from one piece to the next.
#pragma once

#include "../../common/tensor.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../../common/geometry.h"
#include "../../common/limits.h"
#include "params.h"
#include "../../common/cpu/parallel.h"

namespace roiops {
namespace cpu {
namespace align {

// The geometry of one RoI (its box passed check_sample_limits).
template <typename acc_t, typename scalar_t>
AlignGeometry<acc_t> roi_geometry(const scalar_t* roi_row, const AlignParams& p) {
  acc_t box[kBoxWidth];
  load_box<kBoxWidth>(roi_row, 0, box);
  return box_geometry(box, p);
}

// Refuses the first box whose bins would take more than kMaxSamplesPerBin samples. Run before any
// parallel region, so that the error reaches the caller as it is written.
template <typename acc_t, typename scalar_t>
void check_sample_limits(const scalar_t* roi_data, int64_t K, const AlignParams& p) {
  for (int64_t k = 0; k < K; ++k) {
    const AlignGeometry<acc_t> g = roi_geometry<acc_t>(roi_data + k * kBoxWidth, p);
    if (within_sample_limit(g)) continue;
    double values[kBoxWidth];
    load_box<kBoxWidth>(roi_data, k, values);
    fail_samples_per_bin(values, static_cast<int64_t>(g.grid_h) * g.grid_w, p);
  }
}

// The samples each bin of one RoI visits (common/geometry.h: those that can touch the map, and one
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

 private:
  int grid_h_ = 0, grid_w_ = 0, pooled_w_ = 1;
  std::vector<SampleRange> rows_, cols_;
};

// Visiting positions [begin, end) of bin `bin`: the whole bin, or a piece of one too large for a buffer.
struct BinPiece {
  int64_t bin;
  int32_t begin, end;
  bool last;  // the bin's last piece (begin == 0: its first)

  int64_t size() const { return end - begin; }
  bool first() const { return begin == 0; }
};

// Walks the bins of one RoI in order, as pieces of at most kTapsPerChunk samples.
template <typename acc_t>
class PieceCursor {
 public:
  void start(const RoiSamples<acc_t>& rs, int64_t bins) {
    rs_ = &rs;
    bins_ = bins;
    bin_ = 0;
    pos_ = 0;
  }
  bool done() const { return bin_ >= bins_; }
  BinPiece peek() const {
    const int64_t n = rs_->bin(bin_).count();
    const int64_t end = std::min(n, pos_ + kTapsPerChunk);
    return BinPiece{bin_, static_cast<int32_t>(pos_), static_cast<int32_t>(end), end == n};
  }
  void advance(const BinPiece& piece) {
    bin_ += piece.last ? 1 : 0;
    pos_ = piece.last ? 0 : piece.end;
  }

 private:
  const RoiSamples<acc_t>* rs_ = nullptr;
  int64_t bins_ = 0, bin_ = 0, pos_ = 0;
};

// Writes make(taps) and the sample index of each sample of `piece`, in visiting order, to t and ids.
template <typename acc_t, typename Out, typename Make>
void write_piece_taps(const AlignGeometry<acc_t>& g, const RoiSamples<acc_t>& rs, const BinPiece& piece,
                      const AlignParams& p, Out* t, int32_t* ids, const Make& make) {
  const int ph = static_cast<int>(piece.bin / p.pooled_w), pw = static_cast<int>(piece.bin % p.pooled_w);
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  rs.bin(piece.bin).for_each_in(piece.begin, piece.end, [&](int s, int iy, int ix) {
    *t++ = make(iy < 0 ? outside_taps<acc_t>() : align_sample_taps(g, ph, pw, iy, ix, H, W));
    *ids++ = s;
  });
}

// The taps of sample s among the n taps of a piece (ids: their sample indices, ascending), or null if
// s is not among them (another piece's, or a sample outside the map: it takes no gradient).
template <typename Taps>
const Taps* find_sample(const Taps* t, const int32_t* ids, int64_t n, int32_t s) {
  const int64_t guess = static_cast<int64_t>(s) - ids[0];  // right when the piece visits every sample
  if (guess >= 0 && guess < n && ids[guess] == s) return t + guess;
  const int32_t* at = std::lower_bound(ids, ids + n, s);
  return at != ids + n && *at == s ? t + (at - ids) : nullptr;
}

// The taps of consecutive pieces of one RoI: piece i's are taps[offsets[i]] up to taps[offsets[i + 1]],
// ids holds their sample indices.
template <typename Taps>
struct PieceChunk {
  std::vector<BinPiece> pieces;
  std::vector<Taps> taps;
  std::vector<int32_t> ids;
  std::vector<int64_t> offsets;

  const Taps* taps_of(size_t i) const { return taps.data() + offsets[i]; }
  const int32_t* ids_of(size_t i) const { return ids.data() + offsets[i]; }
  int64_t count(size_t i) const { return offsets[i + 1] - offsets[i]; }
};

// Visits the bins of one RoI in chunks of at most kTapsPerChunk taps (and pieces), filling `chunk`
// with the chunk's pieces and taps; fn() is called per chunk.
template <typename acc_t, typename F>
void for_each_piece_chunk(const AlignGeometry<acc_t>& g, const AlignParams& p, RoiSamples<acc_t>& rs,
                          PieceChunk<BilinearTaps<acc_t>>& chunk, const F& fn) {
  rs.reset(g, p);
  PieceCursor<acc_t> cursor;
  cursor.start(rs, static_cast<int64_t>(p.pooled_h) * p.pooled_w);
  while (!cursor.done()) {
    chunk.pieces.clear();
    chunk.offsets.assign(1, 0);
    int64_t weight = 0;  // taps, and at least 1 per piece (a RoI without samples has empty pieces)
    while (!cursor.done()) {
      const BinPiece piece = cursor.peek();
      const int64_t n = piece.size();
      if (weight > 0 && weight + std::max<int64_t>(n, 1) > kTapsPerChunk) break;
      weight += std::max<int64_t>(n, 1);
      chunk.pieces.push_back(piece);
      chunk.offsets.push_back(chunk.offsets.back() + n);
      cursor.advance(piece);
    }
    chunk.taps.resize(chunk.offsets.back());
    chunk.ids.resize(chunk.offsets.back());
    for (size_t i = 0; i < chunk.pieces.size(); ++i) {
      write_piece_taps(g, rs, chunk.pieces[i], p, chunk.taps.data() + chunk.offsets[i],
                       chunk.ids.data() + chunk.offsets[i], [](const BilinearTaps<acc_t>& t) { return t; });
    }
    fn();
  }
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

// What the NCHW kernels' visit() gets: one piece of bin (ph, pw) of RoI k and its taps.
template <typename acc_t>
struct PieceView {
  int64_t k, ph, pw;
  const AlignGeometry<acc_t>* g;
  const PlaneTaps<acc_t>* taps;
  const int32_t* ids;
  int64_t n;
  bool first, last;
};

// Samples of all RoIs of a call (the sum of their bins' grids).
template <typename acc_t, typename scalar_t>
int64_t total_samples(const scalar_t* roi_data, int64_t K, const AlignParams& p) {
  int64_t total = 0;
  for (int64_t k = 0; k < K; ++k) {
    const AlignGeometry<acc_t> g = roi_geometry<acc_t>(roi_data + k * kBoxWidth, p);
    total += static_cast<int64_t>(g.grid_h) * g.grid_w * p.pooled_h * p.pooled_w;
  }
  return total;
}

// Whether for_each_channel_piece_with visits everything in one round: a round ends only when its
// taps would exceed kSharedTaps.
template <typename acc_t, typename scalar_t>
bool in_one_round(const scalar_t* roi_data, int64_t K, const AlignParams& p) {
  return total_samples<acc_t>(roi_data, K, p) <= kSharedTaps;
}

// The NCHW kernels work channel by channel rather than RoI by RoI: going RoI by RoI would jump to
// another plane for every (RoI, channel) and miss the cache each time, whereas one channel's plane
// stays in cache while every RoI of a round is pooled from (or scattered into) it. The taps of a
// round of pieces (about kSharedTaps taps) are computed once, in parallel (one run of at most
// kTapsPerChunk taps of one RoI per task); then each thread takes a disjoint range of channels and
// calls visit(c, PieceView) for every piece of every bin that has samples, in order, so the pieces
// of a bin are visited one after the other. No races, and the visiting order within a channel does
// not depend on the thread count. Each thread makes its state once per round (make()) and calls
// start(state, c) before channel c's first visit (in the first round: so for every channel, also in
// a call without samples) and finish(state, c) after its last (in the last round).
template <typename acc_t, typename scalar_t, typename Make, typename Start, typename F, typename Finish>
void for_each_channel_piece_with(const scalar_t* roi_data, int64_t K, const AlignParams& p, const Make& make,
                                 const Start& start, const F& visit, const Finish& finish) {
  struct TapPiece {
    BinPiece piece;
    int64_t offset;  // of its taps in the round's buffer
  };
  // What the channel loop reads of a piece, compact (it streams them once per channel), with the bin
  // row and column divided out once per round rather than once per channel (that cost the NCHW avg
  // forward ~10%).
  struct VisitPiece {
    int32_t ph, pw;      // (divided out once per round, not once per channel)
    int32_t offset;      // < 2 * kSharedTaps
    int32_t size_flags;  // size | kFirst | kLast
  };
  constexpr int32_t kFirst = int32_t(1) << 29, kLast = int32_t(1) << 30;
  static_assert(kTapsPerChunk < kFirst && 2 * kSharedTaps < kFirst, "sizes and offsets fit below the flags");
  struct Run {
    int64_t roi;
    size_t begin, end;  // its pieces
  };
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w;
  std::vector<AlignGeometry<acc_t>> geometry(K);
  for (int64_t k = 0; k < K; ++k) geometry[k] = roi_geometry<acc_t>(roi_data + k * kBoxWidth, p);
  auto has_samples = [&](int64_t k) { return static_cast<int64_t>(geometry[k].grid_h) * geometry[k].grid_w > 0; };

  RoiSamples<acc_t> rs;
  PieceCursor<acc_t> cursor;
  int64_t k = 0;
  auto next_roi = [&](int64_t from) {
    for (k = from; k < K && !has_samples(k); ++k) {
    }
    if (k < K) {
      rs.reset(geometry[k], p);
      cursor.start(rs, bins);
    }
  };
  next_roi(0);
  if (k >= K) {  // no samples at all: every channel is still started and finished
    parallel_for_ranges(p.channels, int64_t(1) << 12, [&](int64_t c0, int64_t c1) {
      auto state = make();
      for (int64_t c = c0; c < c1; ++c) {
        start(state, c);
        finish(state, c);
      }
    });
    return;
  }
  bool first_round = true;
  std::vector<TapPiece> pieces;
  std::vector<VisitPiece> visits;
  std::vector<Run> runs;
  std::vector<PlaneTaps<acc_t>> taps;
  std::vector<int32_t> ids;
  while (k < K) {
    // One round: runs of pieces until about kSharedTaps taps.
    pieces.clear();
    visits.clear();
    runs.clear();
    int64_t total = 0;
    while (k < K) {
      const size_t first_piece = pieces.size();
      int64_t size = 0;
      while (!cursor.done()) {
        const BinPiece piece = cursor.peek();
        const int64_t n = piece.size();
        if ((size > 0 || total > 0) && (size + n > kTapsPerChunk || total + size + n > kSharedTaps)) break;
        pieces.push_back(TapPiece{piece, total + size});
        visits.push_back(VisitPiece{static_cast<int32_t>(piece.bin / p.pooled_w),
                                    static_cast<int32_t>(piece.bin % p.pooled_w), static_cast<int32_t>(total + size),
                                    static_cast<int32_t>(n) | (piece.first() ? kFirst : 0) | (piece.last ? kLast : 0)});
        size += n;
        cursor.advance(piece);
      }
      if (pieces.size() == first_piece) break;  // the round is full
      runs.push_back(Run{k, first_piece, pieces.size()});
      total += size;
      if (cursor.done()) next_roi(k + 1);
    }
    taps.resize(total);
    ids.resize(total);
    parallel_for_each_dynamic(static_cast<int64_t>(runs.size()), kTapsPerChunk, [&](int64_t r) {
      const AlignGeometry<acc_t>& g = geometry[runs[r].roi];
      thread_local RoiSamples<acc_t> samples;
      samples.reset(g, p);
      for (size_t i = runs[r].begin; i < runs[r].end; ++i) {
        const TapPiece& tp = pieces[i];
        write_piece_taps(g, samples, tp.piece, p, taps.data() + tp.offset, ids.data() + tp.offset, plane_taps<acc_t>);
      }
    });
    const bool last_round = k >= K;
    parallel_for_ranges(p.channels, total * 4, [&](int64_t c0, int64_t c1) {
      auto state = make();
      for (int64_t c = c0; c < c1; ++c) {
        if (first_round) start(state, c);
        for (const Run& run : runs) {
          const AlignGeometry<acc_t>* g = &geometry[run.roi];
          for (size_t i = run.begin; i < run.end; ++i) {
            const VisitPiece& vp = visits[i];
            visit(state, c,
                  PieceView<acc_t>{run.roi, vp.ph, vp.pw, g, taps.data() + vp.offset, ids.data() + vp.offset,
                                   vp.size_flags & (kFirst - 1), (vp.size_flags & kFirst) != 0,
                                   (vp.size_flags & kLast) != 0});
          }
        }
        if (last_round) finish(state, c);
      }
    });
    first_round = false;
  }
}

// for_each_channel_piece_with without per-thread state or channel hooks.
template <typename acc_t, typename scalar_t, typename F>
void for_each_channel_piece(const scalar_t* roi_data, int64_t K, const AlignParams& p, const F& visit) {
  const auto none = [](char&, int64_t) {};
  for_each_channel_piece_with<acc_t>(
      roi_data, K, p, [] { return char(0); }, none, [&](char&, int64_t c, const PieceView<acc_t>& v) { visit(c, v); },
      none);
}

}  // namespace align
}  // namespace cpu
}  // namespace roiops
