// Pieces shared by the CUDA kernels: launch shapes, index decomposition, and the two ways a backward
// kernel adds into the gradient of the input (fast float atomics, or deterministic fixed point).
//
// Deterministic backward: design and precision
// --------------------------------------------
// The fast backward adds into a floating-point buffer with atomicAdd. Floating-point addition is
// not associative, so the order in which threads land changes the last bits of the result from run
// to run. The deterministic path removes that dependence without serialising anything: every
// contribution v is first rounded to a 64-bit fixed-point integer q = round(v * 2^e), and the q's
// are summed with integer atomicAdd. Integer addition is associative and commutative (and wraps
// modulo 2^64, so even intermediate overflow would cancel out), hence the sum of a cell is the
// same whatever the order; a final elementwise pass turns it back into floating point (q_sum / 2^e).
// Cost over the fast path, all on the device (no host sync): three passes over grad to pick the
// exponents (isfinite, |grad| of the finite entries, a per-channel max; two grad-sized temporaries),
// zeroing an 8-byte buffer instead of a 4-byte one plus 0.4 bytes per cell of flags, and one
// conversion pass over the gradient map; the atomics themselves run at the speed of float atomics
// (64-bit integer atomicAdd is native), so it stays well within 2x of the fast path when the
// scatter dominates and near 2-3x only for a huge map with very few RoIs, where both paths are
// dominated by zero-filling.
//
// Choice of e, per channel c: M_c = max over (k, ph, pw) of |grad[k, c, ph, pw]| (non-finite
// entries left out), M_c < 2^E_c, and n = K * PH * PW <= 2^L. Every contribution to a cell of
// channel c has magnitude at most the |grad| element of channel c it comes from (bilinear weights
// are in [0, 1] and sum to at most 1 per bin, avg mode divides by the sample count), so no cell,
// nor any partial sum of it, exceeds n * M_c < 2^(E_c + L) in magnitude; e_c = 62 - E_c - L keeps
// |q_sum| < 2^62: no overflow, with a factor-2 margin for rounding. One scale per channel, so an
// outlier channel costs the others nothing, and v * 2^e_c is computed with ldexp in the opmath type
// (float for float, half and bfloat16: no FP64 arithmetic), exact for any exponent (gradients near
// the bottom of float64's range keep their precision).
// Precision: each contribution is rounded to a multiple of 2^-e_c, an absolute error of at most
// 2^-(e_c+1) <= n * M_c * 2^-63; a cell receiving m contributions is off by at most m * n * M_c * 2^-63
// before the one final rounding to the opmath type. For float32 that is far finer than float's own
// 2^-24 unless a cell is ~2^-(39 - log2 n) times smaller than M_c; for float64 it is coarser than
// native double accumulation for tiny cells (~2^-40 relative for typical gradients), ample for
// gradcheck. Rounding to integers is round-half-to-even (__float2ll_rn / __double2ll_rn), itself
// deterministic.
// Non-finite contributions (a NaN/inf in grad, or 0 * inf) cannot be represented in fixed point;
// a 3-bit flag per cell (packed 10 to an int32 word) records them with integer atomicOr (NaN, +inf,
// -inf bits) and the conversion applies IEEE rules: NaN if any NaN or both infinities, else +/-inf.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../checks.h"
#include "../library.h"
#include "../tensor.h"

// The CUDA runtime, or its stand-in for running these sources on the CPU (see emulation.h).
#ifdef ROIOPS_EMULATE_CUDA
#include "emulation.h"
#define ROIOPS_CUDA_DISPATCH_KEY CPU
#else
#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>
#define ROIOPS_CUDA_DISPATCH_KEY CUDA
// kernel<<<grid, block, 0, stream>>>(args...) is written ROIOPS_LAUNCH(grid, block, stream, kernel)(args...).
#define ROIOPS_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#define ROIOPS_KERNEL_LAUNCH_CHECK() STD_CUDA_KERNEL_LAUNCH_CHECK()
#endif

namespace roiops {
namespace cuda {

#ifdef ROIOPS_EMULATE_CUDA
using DeviceGuard = emu::DeviceGuard;
inline cudaStream_t current_stream(const Tensor&) { return nullptr; }
inline bool stream_is_capturing(cudaStream_t) { return emu::capturing(); }
// Every device-to-host copy of the CUDA path goes through here, so that tests can count them.
inline Tensor to_host(const Tensor& t) {
  emu::count_host_sync();
  return torch::stable::clone(t);
}
#else
// Makes t's device current for the scope (the kernels launch on the current device's stream).
struct DeviceGuard {
  explicit DeviceGuard(const Tensor& t) : guard(t.get_device_index()) {}
  torch::stable::accelerator::DeviceGuard guard;
};
inline cudaStream_t current_stream(const Tensor& t) {
  return static_cast<cudaStream_t>(torch::stable::accelerator::getCurrentStream(t.get_device_index()).nativeHandle());
}
inline bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  STD_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}
inline Tensor to_host(const Tensor& t) {
  return torch::stable::to(t, torch::stable::Device(torch::headeronly::DeviceType::CPU));
}
#endif

// Row k of a 2-D tensor on the device, as doubles on the host (for error messages: an error may sync).
inline std::vector<double> row_on_host(const Tensor& t, int64_t k) {
  const Tensor row = to_host(to_dtype(make_contiguous(torch::stable::select(t, 0, k)), ScalarType::Double));
  const double* values = row.const_data_ptr<double>();
  return std::vector<double>(values, values + row.numel());
}

constexpr int kThreads = 256;
// Grid-stride loops cover any size with at most this many blocks, so an int32 loop index stays
// safe up to kMaxInt32Work elements (index + stride < 2^31).
// Both can be lowered at compile time (a test build forces the 64-bit index kernels and several
// grid-stride rounds on small inputs).
#ifdef ROIOPS_MAX_BLOCKS
constexpr int64_t kMaxBlocks = ROIOPS_MAX_BLOCKS;
#else
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
#endif
#ifdef ROIOPS_MAX_INT32_WORK
constexpr int64_t kMaxInt32Work = ROIOPS_MAX_INT32_WORK;
#else
constexpr int64_t kMaxInt32Work = int64_t(1) << 30;
#endif

inline int num_blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// Calls launch(index_t{}) with the narrowest loop index type that is safe for `total` elements:
// int32 arithmetic is faster, int64 covers any size.
template <typename F>
void with_index_type(int64_t total, const F& launch) {
  if (total <= kMaxInt32Work) {
    launch(int32_t{});
  } else {
    launch(int64_t{});
  }
}

// Calls launch(std::true_type{}) or launch(std::false_type{}): a runtime flag as a kernel template argument.
template <typename F>
void with_flag(bool flag, const F& launch) {
  if (flag) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
}

// Output element i of a [K, C, PH, PW] result, in NCHW order (pw fastest) or NHWC order (c fastest,
// so that neighbouring threads read neighbouring channels of a channels-last map).
template <typename index_t>
__device__ __forceinline__ void decompose_pooled_index(index_t i, bool nhwc, index_t C, index_t PH, index_t PW,
                                                       index_t& k, index_t& c, index_t& ph, index_t& pw) {
  if (nhwc) {
    c = i % C;
    i /= C;
    pw = i % PW;
    i /= PW;
    ph = i % PH;
    k = i / PH;
  } else {
    pw = i % PW;
    i /= PW;
    ph = i % PH;
    i /= PH;
    c = i % C;
    k = i / C;
  }
}

// Offset of cell 0 of (batch, channel) in an NCHW or channels-last map, and the distance between two
// cells of a plane.
__device__ __forceinline__ void plane_base(const RoiCall& p, int64_t batch, int64_t c, int64_t& base,
                                           int64_t& cell_stride) {
  const int64_t HW = p.height * p.width;
  if (p.nhwc) {
    base = batch * HW * p.channels + c;
    cell_stride = p.channels;
  } else {
    base = (batch * p.channels + c) * HW;
    cell_stride = 1;
  }
}

// Fast path: float/double atomics into an opmath-typed buffer (float for the half types).
template <typename acc_t>
struct AtomicAdder {
  acc_t* data;
  // The adder a thread uses for the cells of channel c (all channels alike here).
  __device__ __forceinline__ AtomicAdder channel(int64_t) const { return *this; }
  __device__ __forceinline__ void operator()(int64_t offset, acc_t v) const { atomicAdd(data + offset, v); }
};

// Non-finite contributions, 3 bits per cell, packed 10 cells to an int32 word.
constexpr int kFlagPosInf = 1;
constexpr int kFlagNegInf = 2;
constexpr int kFlagNaN = 4;
constexpr int64_t kCellsPerFlagWord = 10;

// v * 2^e in v's own type (float for float and the half types: no FP64 arithmetic); exact unless
// the result is subnormal.
__device__ __forceinline__ float times_pow2(float v, int e) { return ldexpf(v, e); }
__device__ __forceinline__ double times_pow2(double v, int e) { return ldexp(v, e); }

// round(v * 2^e) to the nearest integer, ties to even.
__device__ __forceinline__ long long to_fixed(float v, int e) { return __float2ll_rn(times_pow2(v, e)); }
__device__ __forceinline__ long long to_fixed(double v, int e) { return __double2ll_rn(times_pow2(v, e)); }

// Deterministic path, for the cells of one channel: fixed point with that channel's exponent.
template <typename acc_t>
struct ChannelFixedPointAdder {
  unsigned long long* data;
  int* flags;
  int exponent;
  __device__ __forceinline__ void operator()(int64_t offset, acc_t v) const {
    if (std::isfinite(v)) {
      const long long q = to_fixed(v, exponent);
      if (q != 0) atomicAdd(data + offset, static_cast<unsigned long long>(q));
    } else {
      const int flag = std::isnan(v) ? kFlagNaN : (v > acc_t(0) ? kFlagPosInf : kFlagNegInf);
      atomicOr(flags + offset / kCellsPerFlagWord, flag << (3 * static_cast<int>(offset % kCellsPerFlagWord)));
    }
  }
};

// Deterministic path: fixed-point integers summed with integer atomics (see the top of this file).
template <typename acc_t>
struct FixedPointAdder {
  unsigned long long* data;
  int* flags;
  const int* exponents;  // e_c per channel, on the device
  __device__ __forceinline__ ChannelFixedPointAdder<acc_t> channel(int64_t c) const {
    return ChannelFixedPointAdder<acc_t>{data, flags, exponents[c]};
  }
};

// Layout of a grad_input buffer: which channel element i (physical order) belongs to.
struct ChannelOf {
  int64_t channels, plane;  // C, H * W
  bool nhwc;
  __device__ __forceinline__ int64_t operator()(int64_t i) const { return nhwc ? i % channels : i / plane % channels; }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fixed_point_to_float_kernel(int64_t n, const unsigned long long* acc, const int* flags, const int* exponents,
                                ChannelOf channel_of, scalar_t* out) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    // One rounding of the exact sum to acc_t, then an exact scaling (unless the result is subnormal).
    acc_t v = static_cast<acc_t>(static_cast<long long>(acc[i]));
    v = times_pow2(v, -exponents[channel_of(i)]);
    const int f = (flags[i / kCellsPerFlagWord] >> (3 * static_cast<int>(i % kCellsPerFlagWord))) & 7;
    if ((f & kFlagNaN) || ((f & kFlagPosInf) && (f & kFlagNegInf))) {
      v = std::numeric_limits<acc_t>::quiet_NaN();
    } else if (f & kFlagPosInf) {
      v = std::numeric_limits<acc_t>::infinity();
    } else if (f & kFlagNegInf) {
      v = -std::numeric_limits<acc_t>::infinity();
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

// E_c of the channel exponents: the largest frexp exponent of a finite, non-zero grad[:, c] (that of
// max |grad[:, c]|, since the exponent grows with the magnitude); INT_MIN where there is none.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    max_exponent_kernel(int64_t n, const scalar_t* grad, ChannelOf channel_of, int* max_exponent) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const acc_t v = static_cast<acc_t>(grad[i]);
    if (v == acc_t(0) || !std::isfinite(v)) continue;
    int e = 0;
    frexp(v, &e);
    atomicMax(max_exponent + channel_of(i), e);
  }
}

// e_c = 62 - L - E_c (E_c = 0 for a channel without finite non-zero entries), clamped so that ldexp
// stays in range for the smallest subnormal maxima. (A template, as every kernel in a header: one
// definition per program.)
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) channel_exponents_kernel(int64_t channels, int L, int* exponents) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int E = exponents[c] == std::numeric_limits<int>::min() ? 0 : exponents[c];
    const int e = 62 - L - E;
    exponents[c] = e < -1100 ? -1100 : (e > 1200 ? 1200 : e);
  }
}

// Buffers of one deterministic backward call, all on the device (no host sync).
struct FixedPointBuffers {
  Tensor acc;        // int64, one per grad_input element (physical order)
  Tensor flags;      // int32, one bit triple per grad_input element
  Tensor exponents;  // int32 e_c, one per channel

  // grad: [K, C, PH, PW] (numel > 0) of type scalar_t; numel: of grad_input.
  template <typename scalar_t>
  void start(const Tensor& grad_any_layout, bool nhwc, int64_t numel, cudaStream_t stream) {
    const Tensor grad = make_contiguous(grad_any_layout, nhwc);  // (a copy only if it is not dense)
    // M_c = max |grad[:, c]| over finite entries; each cell of channel c sums at most
    // n = K * PH * PW contributions of magnitude <= M_c < 2^E_c, so |sum| < 2^(E_c + L) with
    // 2^L >= n, and e_c = 62 - E_c - L keeps every partial sum below 2^62.
    const int64_t C = grad.size(1), n = grad.numel() / C;
    int L = 0;
    while ((int64_t(1) << L) < n) ++L;
    exponents = fill(empty_1d(C, ScalarType::Int, grad), static_cast<double>(std::numeric_limits<int>::min()));
    const ChannelOf channel_of{C, grad.size(2) * grad.size(3), nhwc};
    ROIOPS_LAUNCH(num_blocks(grad.numel()), kThreads, stream, max_exponent_kernel<scalar_t>)(
        grad.numel(), grad.const_data_ptr<scalar_t>(), channel_of, exponents.mutable_data_ptr<int>());
    ROIOPS_KERNEL_LAUNCH_CHECK();
    ROIOPS_LAUNCH(num_blocks(C), kThreads, stream, channel_exponents_kernel<scalar_t>)(
        C, L, exponents.mutable_data_ptr<int>());
    ROIOPS_KERNEL_LAUNCH_CHECK();
    acc = zeros_1d(numel, ScalarType::Long, grad);
    flags = zeros_1d((numel + kCellsPerFlagWord - 1) / kCellsPerFlagWord, ScalarType::Int, grad);
  }

  template <typename acc_t>
  FixedPointAdder<acc_t> adder() {
    return FixedPointAdder<acc_t>{reinterpret_cast<unsigned long long*>(acc.mutable_data_ptr<int64_t>()),
                                  flags.mutable_data_ptr<int>(), exponents.const_data_ptr<int>()};
  }

  // Writes the sums into grad_in (dense, same physical order as the buffer).
  template <typename scalar_t>
  void finish(Tensor& grad_in, bool nhwc, cudaStream_t stream) {
    const int64_t n = grad_in.numel();
    const ChannelOf channel_of{grad_in.size(1), grad_in.size(2) * grad_in.size(3), nhwc};
    ROIOPS_LAUNCH(num_blocks(n), kThreads, stream, fixed_point_to_float_kernel<scalar_t>)(
        n, reinterpret_cast<const unsigned long long*>(acc.const_data_ptr<int64_t>()), flags.const_data_ptr<int>(),
        exponents.const_data_ptr<int>(), channel_of, grad_in.mutable_data_ptr<scalar_t>());
    ROIOPS_KERNEL_LAUNCH_CHECK();
  }
};

// The input gradient of a backward kernel: launch(adder) scatters into it with the fast adder (float
// atomics into an accumulation buffer) or, if deterministic, the fixed-point one; the result has
// grad's dtype and the given layout.
template <typename scalar_t, typename Launch>
Tensor scatter_grad_input(const Tensor& grad, const std::array<int64_t, 4>& sizes, bool nhwc, bool deterministic,
                          cudaStream_t stream, const Launch& launch) {
  using acc_t = opmath_t<scalar_t>;
  if (!deterministic) {
    Tensor grad_in = zero(empty_4d(sizes, scalar_type_of<acc_t>(), grad, nhwc));
    launch(AtomicAdder<acc_t>{grad_in.mutable_data_ptr<acc_t>()});
    return to_dtype(grad_in, grad.scalar_type());
  }
  Tensor result = empty_4d(sizes, grad.scalar_type(), grad, nhwc);  // (allocating checks the sizes)
  FixedPointBuffers buffers;
  buffers.start<scalar_t>(grad, nhwc, result.numel(), stream);
  launch(buffers.adder<acc_t>());
  buffers.finish<scalar_t>(result, nhwc, stream);
  return result;
}

}  // namespace cuda
}  // namespace roiops
