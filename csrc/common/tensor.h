// What the kernels need from a tensor, on the LibTorch stable ABI only (torch/csrc/stable/,
// torch/headeronly/): the tensor type, dtype dispatch, the accumulation type, strides, layouts,
// allocation and errors. No ATen or c10 symbol may be referenced from csrc/ (a test checks the built
// library), so that one build loads in every torch from TORCH_TARGET_VERSION on.
#pragma once

// The oldest torch this library loads in: the stable-ABI headers then refuse any newer API. Every
// torch header reaches csrc/ through this file, so this is the one place that sets it (roiops'
// Python loader states the same range: MIN_TORCH in roiops/_library.py, tested to agree).
#ifndef TORCH_TARGET_VERSION
#define TORCH_TARGET_VERSION ((2ULL << 56) | (13ULL << 48))
#endif

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "geometry.h"  // ROIOPS_HOST_DEVICE

namespace roiops {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;

// The type arithmetic is done in: float for the half types, the type itself otherwise.
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>, float, T>;

inline ScalarType opmath_type(ScalarType t) {
  return t == ScalarType::Half || t == ScalarType::BFloat16 ? ScalarType::Float : t;
}

template <typename T>
constexpr ScalarType scalar_type_of() {
  if constexpr (std::is_same_v<T, float>) return ScalarType::Float;
  if constexpr (std::is_same_v<T, double>) return ScalarType::Double;
  if constexpr (std::is_same_v<T, Half>) return ScalarType::Half;
  if constexpr (std::is_same_v<T, BFloat16>) return ScalarType::BFloat16;
  if constexpr (std::is_same_v<T, int32_t>) return ScalarType::Int;
  if constexpr (std::is_same_v<T, int64_t>) return ScalarType::Long;
}

// ---- errors ----------------------------------------------------------------------------------------
// A kernel's failure reaches Python as RuntimeError whatever is thrown (the stable ABI carries only
// the message). std::runtime_error keeps the message exactly as written (STD_TORCH_CHECK would
// prefix the C++ function and file); see README, "Errors".

inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append(out, rest...);
}

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  append(out, args...);
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw std::runtime_error(concat(args...));
}

template <typename... Args>
void check(bool ok, const Args&... args) {
  if (!ok) fail(args...);
}

// How PyTorch prints sizes ("[2, 5]"), dtypes ("Float") and devices ("cpu", "cuda:0").
std::string format_sizes(const Tensor& t);
std::string format_dtype(ScalarType t);
std::string format_device(const Tensor& t);

// ---- dtype dispatch ----------------------------------------------------------------------------------

// Calls body(T{}) with T the C++ type of a floating dtype the kernels take.
template <typename F>
void dispatch_floating(ScalarType dtype, const char* op_name, const F& body) {
  switch (dtype) {
    case ScalarType::Float:
      return body(float{});
    case ScalarType::Double:
      return body(double{});
    case ScalarType::Half:
      return body(Half{});
    case ScalarType::BFloat16:
      return body(BFloat16{});
    default:
      fail(op_name, ": input must be a floating-point tensor, but got ", format_dtype(dtype));
  }
}

// ---- layouts and strides -----------------------------------------------------------------------------

// True where a 4-D tensor is laid out channels-last (and not also plain contiguous): the kernels then
// use their NHWC path and produce NHWC results. Mirrored by the fake kernels (roiops/_registry.py).
bool use_channels_last(const Tensor& t);

// at(a, b, c, d) = a * stride(0) + b * stride(1) + c * stride(2) + d * stride(3).
struct Strides4 {
  int64_t s0, s1, s2, s3;
  ROIOPS_HOST_DEVICE int64_t at(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return a * s0 + b * s1 + c * s2 + d * s3;
  }
};

// All strides are 0 for a tensor that is not 4-D (the empty argmax of avg mode), never indexed then.
inline Strides4 strides_of(const Tensor& t) {
  if (t.dim() != 4) return Strides4{0, 0, 0, 0};
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// ---- allocation --------------------------------------------------------------------------------------

// A new [n0, n1, n2, n3] tensor on like's device, channels-last or contiguous, uninitialized.
Tensor empty_4d(const std::array<int64_t, 4>& sizes, ScalarType dtype, const Tensor& like, bool channels_last);
// A new 1-D tensor on like's device.
Tensor empty_1d(int64_t n, ScalarType dtype, const Tensor& like);
// A new [n0, n1] tensor on like's device, contiguous, uninitialized.
Tensor empty_2d(int64_t n0, int64_t n1, ScalarType dtype, const Tensor& like);
Tensor zeros_1d(int64_t n, ScalarType dtype, const Tensor& like);
Tensor make_contiguous(const Tensor& t, bool channels_last = false);
Tensor to_dtype(const Tensor& t, ScalarType dtype);
Tensor zero(Tensor t);
Tensor fill(Tensor t, double value);

}  // namespace roiops
