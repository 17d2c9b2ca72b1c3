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
// Cost over the fast path: one reduction over grad plus one host sync (to pick e), zeroing an 8-byte
// buffer instead of a 4-byte one, and one conversion pass over the gradient map; the atomics
// themselves run at the speed of float atomics (64-bit integer atomicAdd is native), so it stays
// well within 2x of the fast path when the scatter dominates and near 2-3x only for a huge map with
// very few RoIs, where both paths are dominated by zero-filling.
//
// Choice of e (per call): B = max over channels c of sum_{k, ph, pw} |grad[k, c, ph, pw]| (in
// float64, non-finite entries left out). Every contribution to a cell of channel c has magnitude
// at most the |grad| element it comes from (bilinear weights are in [0, 1] and sum to at most 1
// per bin, and avg mode divides by the sample count), so no cell, nor any partial sum of it, can
// exceed B in magnitude. With B < 2^E, e = 62 - E makes |q_sum| < 2^62: no overflow, with a
// factor-2 margin for rounding.
// Precision: each contribution is rounded to a multiple of 2^-e, i.e. an absolute error of at most
// 2^-(e+1) <= B * 2^-62 per contribution; a cell receiving n contributions is off by at most
// n * B * 2^-62 before the final rounding to the output dtype. Relative to float32 (2^-24) this is
// far finer unless a cell is ~2^-30 times smaller than B; for float64 it is coarser than native
// double accumulation for small cells (still ~2^-40 relative for typical gradients), which is
// ample for gradcheck. Rounding uses round-half-to-even (__double2ll_rn), itself deterministic.
// Non-finite contributions (a NaN/inf in grad, or 0 * inf) cannot be represented in fixed point;
// when grad holds any, a per-cell int32 flag word records them with integer atomicOr (NaN, +inf,
// -inf bits) and the conversion applies IEEE rules: NaN if any NaN or both infinities, else +/-inf.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/any.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../library.h"
#include "../strides.h"

// The CUDA runtime, or its stand-in for running these sources on the CPU (see emulation.h).
#ifdef ROIOPS_EMULATE_CUDA
#include "emulation.h"
#define ROIOPS_CUDA_DISPATCH_KEY CPU
#else
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define ROIOPS_CUDA_DISPATCH_KEY CUDA
// kernel<<<grid, block, 0, stream>>>(args...) is written ROIOPS_LAUNCH(grid, block, stream, kernel)(args...).
#define ROIOPS_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

namespace roiops {
namespace cuda {

#ifdef ROIOPS_EMULATE_CUDA
using DeviceGuard = emu::DeviceGuard;
inline cudaStream_t current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

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

// Fast path: float/double atomics into an opmath-typed buffer (float for the half types).
template <typename acc_t>
struct AtomicAdder {
  acc_t* data;
  __device__ __forceinline__ void operator()(int64_t offset, acc_t v) const {
    gpuAtomicAddNoReturn(data + offset, v);
  }
};

constexpr int kFlagPosInf = 1;
constexpr int kFlagNegInf = 2;
constexpr int kFlagNaN = 4;

// Deterministic path: fixed-point integers summed with integer atomics (see the top of this file).
template <typename acc_t>
struct FixedPointAdder {
  unsigned long long* data;
  int* flags;  // null when grad has no non-finite value
  double scale;
  __device__ __forceinline__ void operator()(int64_t offset, acc_t v) const {
    if (std::isfinite(v)) {
      const long long q = __double2ll_rn(static_cast<double>(v) * scale);
      if (q != 0) atomicAdd(data + offset, static_cast<unsigned long long>(q));
    } else if (flags != nullptr) {
      atomicOr(flags + offset, std::isnan(v) ? kFlagNaN : (v > acc_t(0) ? kFlagPosInf : kFlagNegInf));
    }
  }
};

struct FixedPointPlan {
  double scale;      // 2^e
  bool nonfinite;    // grad holds NaN or inf
};

// Picks e from grad (a [K, C, PH, PW] tensor, any strides, numel > 0). One host sync.
inline FixedPointPlan plan_fixed_point(const at::Tensor& grad) {
  const at::Tensor finite = at::isfinite(grad);
  const at::Tensor magnitude = at::abs(at::where(finite, grad, at::Scalar(0)));
  const at::Tensor per_channel = at::sum(magnitude, {0, 2, 3}, /*keepdim=*/false, at::kDouble);
  const at::Tensor bound = at::amax(per_channel);
  const at::Tensor any_nonfinite = at::any(at::logical_not(finite)).to(at::kDouble);
  const at::Tensor host = at::stack({bound, any_nonfinite}).to(at::kCPU);
  const double* h = host.const_data_ptr<double>();
  const double b = h[0];
  TORCH_CHECK(std::isfinite(b), "deterministic RoI backward: the summed gradient magnitude (", b,
              ") is out of the float64 range");
  int exponent = 0;
  if (b > 0) {
    int E = 0;
    std::frexp(b, &E);  // b < 2^E
    exponent = std::max(-1000, std::min(1000, 62 - E));
  }
  return FixedPointPlan{std::ldexp(1.0, exponent), h[1] != 0};
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fixed_point_to_float_kernel(int64_t n, const unsigned long long* acc,
                                                                          const int* flags, double inv_scale,
                                                                          scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    double v = static_cast<double>(static_cast<long long>(acc[i])) * inv_scale;
    if (flags != nullptr) {
      const int f = flags[i];
      if ((f & kFlagNaN) || ((f & kFlagPosInf) && (f & kFlagNegInf))) {
        v = std::numeric_limits<double>::quiet_NaN();
      } else if (f & kFlagPosInf) {
        v = std::numeric_limits<double>::infinity();
      } else if (f & kFlagNegInf) {
        v = -std::numeric_limits<double>::infinity();
      }
    }
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(v));
  }
}

// Buffers of one deterministic backward call.
struct FixedPointBuffers {
  at::Tensor acc;    // int64, one per grad_input element (physical order)
  at::Tensor flags;  // int32 or undefined
  FixedPointPlan plan;

  FixedPointBuffers(const at::Tensor& grad, int64_t numel) : plan(plan_fixed_point(grad)) {
    acc = at::zeros({numel}, grad.options().dtype(at::kLong));
    if (plan.nonfinite) flags = at::zeros({numel}, grad.options().dtype(at::kInt));
  }

  template <typename acc_t>
  FixedPointAdder<acc_t> adder() {
    return FixedPointAdder<acc_t>{reinterpret_cast<unsigned long long*>(acc.mutable_data_ptr<int64_t>()),
                                  flags.defined() ? flags.mutable_data_ptr<int>() : nullptr, plan.scale};
  }

  // Writes the sums into grad_in (dense, same physical order as the buffer).
  template <typename scalar_t>
  void finish(at::Tensor& grad_in, cudaStream_t stream) {
    const int64_t n = grad_in.numel();
    ROIOPS_LAUNCH(num_blocks(n), kThreads, stream, fixed_point_to_float_kernel<scalar_t>)(
        n, reinterpret_cast<const unsigned long long*>(acc.const_data_ptr<int64_t>()),
        flags.defined() ? flags.const_data_ptr<int>() : nullptr, 1.0 / plan.scale,
        grad_in.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace cuda
}  // namespace roiops
