// The CPU kernels' speed thresholds, in one place. Each was measured on this project's 2-core
// machine (FPN P2 maps [2, 256, 200, 272], 2 threads) and changes only speed, never results (tests
// check every path against the reference). To re-derive one, time both sides of its choice with the
// command given, moving the threshold; the measurements are in the commit history and
// docs/semantics.md (Performance).
#pragma once

#include <cstdint>

namespace roiops {
namespace cpu {

// Below this many elementary steps (bilinear taps, cells) a call runs on the calling thread: waking
// the pool costs more than it saves, and far more when the cores are busy (OpenMP spin-waits).
// Re-derive: roiops-bench speed --sweep (small cases), serial vs parallel.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

// Channels per packed block: a block of the map, channels-last, stays in the last-level cache while
// every RoI is pooled from it (channel_blocks.h). Re-derive: roiops-bench speed --full.
constexpr int64_t kChannelBlock = 32;

// A map of fewer channels is not packed: its one block would be a copy of the whole map, for SIMD
// loops over fewer lanes than a vector holds. Re-derive: python scripts/peak_memory.py and
// roiops-bench speed --sweep on 2-16 channel maps.
constexpr int64_t kMinPackedChannels = 8;

// Bytes of an output that one band of rows spans at most: a few bands (one per thread) stay in
// cache while contributions are scattered into them. Re-derive: roiops-bench speed (backward rows).
constexpr int64_t kBandBytes = int64_t(8) << 20;

// RoIAlign: the most taps a thread holds at once (the channels-last kernels), and the most samples
// in one piece of a bin; the most taps held at once by the NCHW kernels, shared by all threads
// (~3-6 MB: stays in L3). Re-derive: roiops-bench speed --full (mask head, adaptive sampling).
constexpr int64_t kTapsPerChunk = int64_t(1) << 16;
constexpr int64_t kSharedTaps = int64_t(1) << 17;

// RoIAlign, NCHW forward: packed blocks when the samples number at least 1/kPackSampleFraction of
// the map's cells (packing costs ~11 ms on a P2 map, then pools 2-2.5x faster: it wins from 23K
// samples on a 109K-cell map and loses below 8K). Re-derive: roiops-bench speed --sweep, NCHW avg.
constexpr int64_t kPackSampleFraction = 8;

// Position-sensitive forwards: output channels summed together, each its own chain of additions, so
// that the chains overlap instead of each waiting on its previous addition. Re-derive: roiops-bench
// speed --cases rfcn --forward-only.
constexpr int64_t kPsChannelBlock = 16;

// RoIPool, NCHW forward: the channels-last block loops when the bins read at least 1/kNhwcCellFraction
// of the map's cells (2.4-2.7x faster from 1.2 to 13 reads per cell). Re-derive: roiops-bench speed
// --sweep, roi_pool NCHW.
constexpr int64_t kNhwcCellFraction = 4;

// RoIPool, channels-last forward: packed blocks when the RoIs read each map cell at least this
// often (1.4x faster at 13 reads per cell, even at 6.5, 1.5-1.9x slower at 3.3 and below).
// Re-derive: roiops-bench speed --sweep, roi_pool channels_last.
constexpr int64_t kPackReadsPerCell = 6;

}  // namespace cpu
}  // namespace roiops
