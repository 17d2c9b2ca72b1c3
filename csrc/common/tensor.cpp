#include "tensor.h"

namespace roiops {

std::string format_sizes(const Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << "]";
  return out.str();
}

std::string format_dtype(ScalarType t) { return torch::headeronly::toString(t); }

std::string format_device(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  const std::string type = t.is_cuda() ? "cuda" : "device";
  return concat(type, ":", t.get_device_index());
}

bool use_channels_last(const Tensor& t) {
  if (t.dim() != 4 || t.is_contiguous()) return false;
  // PyTorch's rule: dims in the order C, W, H, N each have the stride of the ones before it, except
  // dims of size 1, whose stride does not matter.
  int64_t expected = 1;
  for (const int d : {1, 3, 2, 0}) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

Tensor empty_4d(const std::array<int64_t, 4>& sizes, ScalarType dtype, const Tensor& like, bool channels_last) {
  using torch::headeronly::MemoryFormat;
  return torch::stable::empty({sizes[0], sizes[1], sizes[2], sizes[3]}, dtype, std::nullopt, like.device(),
                              std::nullopt, channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
}

Tensor empty_1d(int64_t n, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty({n}, dtype, std::nullopt, like.device());
}

Tensor empty_2d(int64_t n0, int64_t n1, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty({n0, n1}, dtype, std::nullopt, like.device());
}

Tensor zeros_1d(int64_t n, ScalarType dtype, const Tensor& like) { return zero(empty_1d(n, dtype, like)); }

Tensor make_contiguous(const Tensor& t, bool channels_last) {
  using torch::headeronly::MemoryFormat;
  return torch::stable::contiguous(t, channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
}

Tensor to_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

Tensor zero(Tensor t) {
  torch::stable::zero_(t);
  return t;
}

Tensor fill(Tensor t, double value) {
  torch::stable::fill_(t, value);
  return t;
}

}  // namespace roiops
