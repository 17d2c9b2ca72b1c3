// Emulated CUDA: lets the CUDA sources of csrc/ops/*/cuda.cu compile as plain C++ with the host compiler and
// run on the CPU, so that CI (which has no GPU) executes the real kernels and host wrappers.
// Built only into a test library (scripts/build_emulated_cuda.sh defines ROIOPS_EMULATE_CUDA); the
// real extension never includes this file.
//
// Why this is faithful: the kernels use no shared memory, no barriers and no warp intrinsics, so a
// launch is equivalent to running its (block, thread) pairs one after another, in any order. The
// launcher can run them forward, reversed or in a seeded shuffle (set_order), which is how the tests
// show that a result does not depend on the order in which a GPU would schedule the threads.
// Atomics become plain read-modify-writes (nothing runs concurrently), with the rounding of the GPU
// instruction. Tensors are CPU tensors; streams and device guards are stand-ins that check this.
#pragma once

#include <math.h>  // ldexpf, ldexp: the CUDA math functions the kernels call

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../tensor.h"

// ---- keywords and built-in types -----------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables: set by the launcher before it runs each (block, thread).
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Only ever null here: kernels run on the calling thread, in launch order (one default stream).
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// ---- atomics and intrinsics the kernels call -------------------------------------------------------
// Nothing runs concurrently, so an atomic is a plain read-modify-write; what remains to emulate is
// the arithmetic of the instruction.

namespace roiops {
namespace emu {
// atom/red.global.add.f32 flushes subnormal inputs and results to sign-preserving zero (PTX ISA);
// .f64 keeps them.
inline float flush_subnormal(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
}  // namespace emu
}  // namespace roiops

inline float atomicAdd(float* address, float val) {
  using roiops::emu::flush_subnormal;
  const float old = *address;
  *address = flush_subnormal(flush_subnormal(old) + flush_subnormal(val));
  return old;
}

inline double atomicAdd(double* address, double val) {
  const double old = *address;
  *address = old + val;
  return old;
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long val) {
  const unsigned long long old = *address;
  *address = old + val;  // wraps modulo 2^64, as the hardware does
  return old;
}

inline long long atomicMin(long long* address, long long val) {
  const long long old = *address;
  *address = val < old ? val : old;
  return old;
}

inline int atomicMax(int* address, int val) {
  const int old = *address;
  *address = val > old ? val : old;
  return old;
}

inline int atomicOr(int* address, int val) {
  const int old = *address;
  *address = old | val;
  return old;
}

// cvt.rni.s64.f64 / .f32: round half to even, saturating to the int64 range, NaN to 0 (a C++ cast
// of an out-of-range value would be undefined).
inline long long __double2ll_rn(double v) {
  if (std::isnan(v)) return 0;
  const double r = std::nearbyint(v);  // the default rounding mode is round-half-to-even
  if (r >= 9223372036854775808.0) return std::numeric_limits<long long>::max();
  if (r < -9223372036854775808.0) return std::numeric_limits<long long>::min();
  return static_cast<long long>(r);
}

inline long long __float2ll_rn(float v) {
  return __double2ll_rn(static_cast<double>(v));  // exact: every float is a double
}

// ---- the launcher ----------------------------------------------------------------------------------

namespace roiops {
namespace emu {

enum class Order { kForward, kReversed, kShuffled };

// Order of the (block, thread) pairs of every following launch; the seed drives kShuffled.
void set_order(Order order, uint64_t seed);

// Throws, as cudaLaunchKernel fails, on a grid or block a GPU cannot launch (empty, more than
// 1024 threads per block, a grid dimension over its limit). Counts the launch.
void check_launch(dim3 grid, dim3 block);

// The flat (block, thread) numbers 0 .. n-1 of one launch (n = blocks * threads per block), in the
// order set by set_order.
class Schedule {
 public:
  explicit Schedule(int64_t n);
  int64_t operator[](int64_t j) const { return !shuffled_.empty() ? shuffled_[j] : (reversed_ ? n_ - 1 - j : j); }

 private:
  int64_t n_;
  bool reversed_;
  std::vector<int64_t> shuffled_;
};

template <typename... Params>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, void (*kernel)(Params...)) : grid_(grid), block_(block), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
    check_launch(grid_, block_);
    // A kernel receives copies of its arguments, converted to the parameter types once at launch.
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    const int64_t threads = int64_t(block_.x) * block_.y * block_.z;
    const int64_t blocks = int64_t(grid_.x) * grid_.y * grid_.z;
    const Schedule order(blocks * threads);
    gridDim = grid_;
    blockDim = block_;
    for (int64_t j = 0; j < blocks * threads; ++j) {
      const int64_t b = order[j] / threads, t = order[j] % threads;
      blockIdx = uint3{static_cast<unsigned>(b % grid_.x), static_cast<unsigned>(b / grid_.x % grid_.y),
                       static_cast<unsigned>(b / grid_.x / grid_.y)};
      threadIdx = uint3{static_cast<unsigned>(t % block_.x), static_cast<unsigned>(t / block_.x % block_.y),
                        static_cast<unsigned>(t / block_.x / block_.y)};
      std::apply(kernel_, params);
    }
  }

 private:
  dim3 grid_, block_;
  void (*kernel_)(Params...);
};

template <typename... Params>
Launch<Params...> make_launch(dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(Params...)) {
  check(stream == nullptr, "emulated CUDA: only the default (null) stream exists");
  return Launch<Params...>(grid, block, kernel);
}

// Host syncs: every device-to-host copy of the CUDA path is counted (to_host in cuda_common.cuh).
void count_host_sync();
// Whether the stream counts as capturing a CUDA graph (set by tests: set_capturing).
bool capturing();

// Stands in for the device guard: in emulation every tensor lives on the CPU.
struct DeviceGuard {
  explicit DeviceGuard(const Tensor& t) {
    check(t.is_cpu(), "emulated CUDA runs on CPU tensors, but got a tensor on ", format_device(t));
  }
};

}  // namespace emu
}  // namespace roiops

// kernel<<<grid, block, 0, stream>>>(args...) becomes ROIOPS_LAUNCH(grid, block, stream, kernel)(args...).
#define ROIOPS_LAUNCH(grid, block, stream, ...) ::roiops::emu::make_launch(grid, block, stream, __VA_ARGS__)
// Launch errors are thrown by the launcher itself.
#define ROIOPS_KERNEL_LAUNCH_CHECK() \
  do {                               \
  } while (0)
