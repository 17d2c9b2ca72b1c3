// The backward of the position-sensitive ops on the CPU, race-free and in a fixed order.
//
// Each op supplies a visitor, visit(n, y_begin, y_end, sink), that reports to the sink every contribution
// of the boxes of image n to rows [y_begin, y_end) of the input gradient, box by box in order:
//   sink.add(k, i, j, y, x, w)             cell (y, x) of bin (i, j)'s channels += w * box k's share,
//   sink.add_run(k, i, j, y, x_begin, x_end)  the same with w = 1 for x in [x_begin, x_end).
// A box's share of bin (i, j) is grad / divisor(k, i, j), one value per output channel; output channel c
// of bin (i, j) goes to input channel c * bins + i * pooled_w + j.
//
// The work is split so that no two workers write the same memory, and every element receives the same
// additions in the same order however it is split (so the result does not depend on the threads or the
// layout). A worker zeroes what it owns and adds into it, in place (through a float buffer for half
// types), so each element of the gradient is written by one worker only:
// - NHWC: a row (n, y), which is contiguous: W cells of all C channels.
// - NCHW: a group of output channels of one image, i.e. whole planes. Rows would be short runs in every
//   plane, the end of one sharing a cache line with the start of the next, so two workers on adjacent
//   rows would write the same lines in every plane.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../position_sensitive.h"
#include "../tensor.h"
#include "parallel.h"

namespace roiops {
namespace cpu {

// The per-bin shares of the gradient, [K][bins][out_channels].
template <typename acc_t>
struct PsShares {
  const acc_t* values;
  int64_t bins, out_channels;
  int pooled_w;
  const acc_t* of(int64_t k, int i, int j) const {
    return values + (k * bins + static_cast<int64_t>(i) * pooled_w + j) * out_channels;
  }
};

// NHWC: one row of one image in the output's order, [W][C] with channel c_in = c * bins + b; y is the
// row the visitor was asked for.
template <typename acc_t>
struct PsRowSink {
  acc_t* row;
  PsShares<acc_t> shares;
  int64_t channels;
  void add(int64_t k, int i, int j, int /*y*/, int x, acc_t w) const {
    const acc_t* __restrict s = shares.of(k, i, j);
    acc_t* __restrict a = at(x, i, j);
    for (int64_t c = 0; c < shares.out_channels; ++c) a[c * shares.bins] += s[c] * w;
  }
  void add_run(int64_t k, int i, int j, int /*y*/, int x_begin, int x_end) const {
    const acc_t* __restrict s = shares.of(k, i, j);
    for (int x = x_begin; x < x_end; ++x) {
      acc_t* __restrict a = at(x, i, j);
      for (int64_t c = 0; c < shares.out_channels; ++c) a[c * shares.bins] += s[c];
    }
  }

 private:
  acc_t* at(int x, int i, int j) const { return row + x * channels + static_cast<int64_t>(i) * shares.pooled_w + j; }
};

// NCHW: the planes of output channels [c_begin, c_end) of one image, plane (c, b) at
// planes + ((c - c_begin) * bins + b) * H * W.
template <typename acc_t>
struct PsPlaneSink {
  acc_t* planes;
  PsShares<acc_t> shares;
  int64_t c_begin, c_end, plane_size, width;
  void add(int64_t k, int i, int j, int y, int x, acc_t w) const {
    const acc_t* __restrict s = shares.of(k, i, j);
    acc_t* __restrict a = cell(i, j, y) + x;
    for (int64_t c = c_begin; c < c_end; ++c, a += shares.bins * plane_size) *a += s[c] * w;
  }
  void add_run(int64_t k, int i, int j, int y, int x_begin, int x_end) const {
    const acc_t* __restrict s = shares.of(k, i, j);
    acc_t* __restrict a = cell(i, j, y);
    for (int64_t c = c_begin; c < c_end; ++c, a += shares.bins * plane_size) {
      for (int x = x_begin; x < x_end; ++x) a[x] += s[c];
    }
  }

 private:
  acc_t* cell(int i, int j, int y) const {
    const int64_t b = static_cast<int64_t>(i) * shares.pooled_w + j;
    return planes + b * plane_size + static_cast<int64_t>(y) * width;
  }
};

// Zeroes the size elements at out, lets add(sums) accumulate into them and leaves the result there: in
// place when scalar_t is the accumulation type, else in buffer, then converted.
template <typename scalar_t, typename acc_t, typename Add>
void accumulate_into(scalar_t* out, acc_t* buffer, int64_t size, const Add& add) {
  if constexpr (std::is_same<acc_t, scalar_t>::value) {
    std::fill(out, out + size, acc_t(0));
    add(out);
  } else {
    std::fill(buffer, buffer + size, acc_t(0));
    add(buffer);
    for (int64_t e = 0; e < size; ++e) out[e] = static_cast<scalar_t>(buffer[e]);
  }
}

// The input gradient of a position-sensitive op (see the top of this file for divisor and visit).
template <typename scalar_t, typename Divisor, typename Visit>
Tensor ps_backward(const Tensor& grad, const PsCall& p, const Divisor& divisor, const Visit& visit) {
  using acc_t = opmath_t<scalar_t>;
  constexpr bool kDirect = std::is_same<acc_t, scalar_t>::value;  // accumulated in the output itself
  const int64_t bins = static_cast<int64_t>(p.pooled_h) * p.pooled_w, oc = p.out_channels, C = p.channels;
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const int PH = static_cast<int>(p.pooled_h), PW = static_cast<int>(p.pooled_w);
  const int64_t plane_size = static_cast<int64_t>(H) * W,
                workers = std::max<int64_t>(1, torch::stable::get_num_threads());

  // NCHW: each image's output channels in groups, enough of them to keep every worker busy; for a half
  // type, small enough that a group's float planes fit in kMaxGroupScratch floats per worker (or hold one
  // output channel, where its planes alone are larger).
  constexpr int64_t kMaxGroupScratch = int64_t(1) << 20;
  const int64_t wanted_groups = std::min<int64_t>(oc, (4 * workers + p.batch - 1) / p.batch);
  const int64_t even_size = (oc + wanted_groups - 1) / wanted_groups;
  const int64_t group_size =
      kDirect ? even_size : std::max<int64_t>(1, std::min(even_size, kMaxGroupScratch / (bins * plane_size)));
  const int64_t groups = (oc + group_size - 1) / group_size;
  // Per worker: a row (NHWC), or a group's planes in float (NCHW with a half type).
  const int64_t scratch_per_worker = kDirect ? 0 : (p.nhwc ? W * C : group_size * bins * plane_size);

  // One buffer for the shares and the workers' scratch: a few scratch allocations of their own, freed
  // on every call, can make the allocator hand the (much larger) gradient's pages back to the system,
  // and every call would then fault them in again.
  Tensor grad_in = empty_4d({p.batch, C, p.height, p.width}, grad.scalar_type(), grad, p.nhwc);
  Tensor scratch = empty_1d(p.num_rois * bins * oc + workers * scratch_per_worker, scalar_type_of<acc_t>(), grad);
  acc_t* share_values = scratch.mutable_data_ptr<acc_t>();
  acc_t* worker_scratch = share_values + p.num_rois * bins * oc;
  const scalar_t* gr = grad.const_data_ptr<scalar_t>();
  const Strides4 at = strides_of(grad);
  parallel_for_each_dynamic(p.num_rois, C * 4, [&](int64_t k) {
    for (int i = 0; i < PH; ++i) {
      for (int j = 0; j < PW; ++j) {
        const acc_t d = divisor(k, i, j);
        acc_t* s = share_values + (k * bins + static_cast<int64_t>(i) * PW + j) * oc;
        for (int64_t c = 0; c < oc; ++c) s[c] = static_cast<acc_t>(gr[at.at(k, c, i, j)]) / d;
      }
    }
  });
  const PsShares<acc_t> shares{share_values, bins, oc, PW};

  scalar_t* out = grad_in.mutable_data_ptr<scalar_t>();
  const PsMapLayout layout(p);
  std::atomic<int64_t> next_worker{0};
  const auto make_scratch = [&] { return worker_scratch + next_worker.fetch_add(1) * scratch_per_worker; };
  if (p.nhwc) {
    parallel_for_each_dynamic_with(p.batch * H, W * C, make_scratch, [&](acc_t* buffer, int64_t item) {
      const int64_t n = item / H;
      const int y = static_cast<int>(item % H);
      scalar_t* row = out + layout.plane(n, 0) + static_cast<int64_t>(y) * W * C;
      accumulate_into(row, buffer, W * C, [&](acc_t* sums) { visit(n, y, y + 1, PsRowSink<acc_t>{sums, shares, C}); });
    });
  } else {
    const int64_t item_work = group_size * bins * plane_size;
    parallel_for_each_dynamic_with(p.batch * groups, item_work, make_scratch, [&](acc_t* buffer, int64_t item) {
      const int64_t n = item / groups, c_begin = (item % groups) * group_size;
      const int64_t c_end = std::min(oc, c_begin + group_size);  // groups: none is empty
      // Output channels [c_begin, c_end) are the contiguous input planes [c_begin * bins, c_end * bins).
      scalar_t* planes = out + layout.plane(n, c_begin * bins);
      accumulate_into(planes, buffer, (c_end - c_begin) * bins * plane_size, [&](acc_t* sums) {
        visit(n, 0, H, PsPlaneSink<acc_t>{sums, shares, c_begin, c_end, plane_size, W});
      });
    });
  }
  return grad_in;
}

}  // namespace cpu
}  // namespace roiops
