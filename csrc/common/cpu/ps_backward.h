// The backward of the position-sensitive ops on the CPU, as a gather by rows of the input map.
//
// Each row (n, y) of the input gradient is owned by one worker, which sums into a row buffer the
// contributions of every box (in box order) that touches it and then writes the row once, in the
// output's layout and dtype. There is no shared scatter, so no race and no order that depends on
// the threads; there is no zero-fill of the whole gradient either (each element is written once).
// Every element receives the same additions, of the same values, in the same order as a scatter
// box by box, so the result does not depend on how the work is split.
//
// The row buffer holds the row as [W][bins][out_channels] for an NHWC output (the contribution of one
// tap to all output channels is one contiguous loop) and as [bins][out_channels][W] for an NCHW one
// (each channel's row is then written out as one contiguous run).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../position_sensitive.h"
#include "../tensor.h"
#include "parallel.h"

namespace roiops {
namespace cpu {

// One row being gathered, and the per-bin shares of the gradient (grad / the bin's divisor).
template <typename acc_t>
struct PsGradRow {
  acc_t* sums;           // the row, [W][bins][out_channels] or [bins][out_channels][W]
  const acc_t* shares;   // [K][bins][out_channels]
  int64_t out_channels;  // per bin
  int64_t bins;
  int pooled_w;
  int64_t cell_step, channel_step;  // of sums

  const acc_t* share(int64_t k, int i, int j) const {
    return shares + (k * bins + static_cast<int64_t>(i) * pooled_w + j) * out_channels;
  }
  // sums of bin (i, j) at cell x += s * w, for every output channel.
  void add(int x, int i, int j, const acc_t* __restrict s, acc_t w) const {
    acc_t* __restrict a = at(x, i, j);
    for (int64_t c = 0; c < out_channels; ++c) a[c * channel_step] += s[c] * w;
  }
  // The same with weight 1 (no multiplication, as an unweighted sum).
  void add(int x, int i, int j, const acc_t* __restrict s) const {
    acc_t* __restrict a = at(x, i, j);
    for (int64_t c = 0; c < out_channels; ++c) a[c * channel_step] += s[c];
  }

 private:
  acc_t* at(int x, int i, int j) const {
    return sums + x * cell_step + (static_cast<int64_t>(i) * pooled_w + j) * out_channels * channel_step;
  }
};

// The input gradient of a position-sensitive op. divisor(k, i, j): what bin (i, j) of box k divides
// its gradient by (never read for a bin that adds nothing). add_row(n, y, row): adds, box by box in
// order, every contribution to row y of image n (row: a PsGradRow).
template <typename scalar_t, typename Divisor, typename AddRow>
Tensor ps_backward_by_rows(const Tensor& grad, const PsCall& p, const Divisor& divisor, const AddRow& add_row) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t bins = p.pooled_h * p.pooled_w, oc = p.out_channels, C = p.channels;
  const int H = static_cast<int>(p.height), W = static_cast<int>(p.width);
  const int PH = static_cast<int>(p.pooled_h), PW = static_cast<int>(p.pooled_w);

  // One buffer for the shares and each worker's row: a few scratch allocations of their own, freed on
  // every call, can make the allocator hand the (much larger) gradient's pages back to the system, and
  // every call would then fault them in again.
  const int64_t row_size = static_cast<int64_t>(W) * C;
  const int64_t workers = std::max<int64_t>(1, torch::stable::get_num_threads());
  Tensor grad_in = empty_4d({p.batch, C, p.height, p.width}, grad.scalar_type(), grad, p.nhwc);
  Tensor scratch = empty_1d(p.num_rois * C + workers * row_size, scalar_type_of<acc_t>(), grad);
  acc_t* shares = scratch.mutable_data_ptr<acc_t>();
  const scalar_t* gr = grad.const_data_ptr<scalar_t>();
  const Strides4 at = strides_of(grad);
  parallel_for_each_dynamic(p.num_rois, C * 4, [&](int64_t k) {
    for (int i = 0; i < PH; ++i) {
      for (int j = 0; j < PW; ++j) {
        const acc_t d = divisor(k, i, j);
        acc_t* s = shares + (k * bins + static_cast<int64_t>(i) * PW + j) * oc;
        for (int64_t c = 0; c < oc; ++c) s[c] = static_cast<acc_t>(gr[at.at(k, c, i, j)]) / d;
      }
    }
  });

  scalar_t* out = grad_in.mutable_data_ptr<scalar_t>();
  const PsMapLayout layout(p);
  std::atomic<int64_t> next_row{0};
  parallel_for_each_dynamic_with(
      p.batch * H, row_size, [&] { return shares + p.num_rois * C + next_row.fetch_add(1) * row_size; },
      [&](acc_t* sums, int64_t item) {
        const int64_t n = item / H;
        const int y = static_cast<int>(item % H);
        std::fill(sums, sums + row_size, acc_t(0));
        const int64_t cell_step = p.nhwc ? C : 1, channel_step = p.nhwc ? 1 : W;
        add_row(n, y, PsGradRow<acc_t>{sums, shares, oc, bins, PW, cell_step, channel_step});
        // Channel c_in = c * bins + b of the output is sums[x][b][c] (NHWC) or sums[b][c][x] (NCHW).
        if (p.nhwc) {
          scalar_t* o = out + layout.plane(n, 0) + static_cast<int64_t>(y) * row_size;
          for (int x = 0; x < W; ++x, o += C) {
            const acc_t* s = sums + static_cast<int64_t>(x) * C;
            for (int64_t c = 0; c < oc; ++c) {
              for (int64_t b = 0; b < bins; ++b) o[c * bins + b] = static_cast<scalar_t>(s[b * oc + c]);
            }
          }
        } else {
          for (int64_t c = 0; c < oc; ++c) {
            for (int64_t b = 0; b < bins; ++b) {
              scalar_t* o = out + layout.plane(n, c * bins + b) + static_cast<int64_t>(y) * W;
              const acc_t* s = sums + (b * oc + c) * W;
              for (int x = 0; x < W; ++x) o[x] = static_cast<scalar_t>(s[x]);
            }
          }
        }
      });
  return grad_in;
}

}  // namespace cpu
}  // namespace roiops
