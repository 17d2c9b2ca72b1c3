#include "roi_checks.h"

#include "roi_limits.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

namespace roiops {
namespace {

void check_rois_values_cpu(const at::Tensor& rois, int64_t batch_size, const char* op_name) {
  TORCH_INTERNAL_ASSERT(rois.is_cpu(), op_name, ": box values are read on the host only for CPU tensors");
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "roiops_check_rois", [&] {
    const scalar_t* p = r.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < r.size(0); ++k) {
      for (int j = 0; j < 5; ++j) {
        const double v = static_cast<double>(p[k * 5 + j]);
        if (!std::isfinite(v)) fail_nonfinite_box(op_name, k, v, j);
      }
      const double b = static_cast<double>(p[k * 5]);
      if (!(b == std::floor(b) && b >= 0 && b < static_cast<double>(batch_size))) {
        fail_batch_index(op_name, k, b, batch_size);
      }
    }
  });
}

void check_rois(const at::Tensor& rois, const at::Tensor& like, int64_t batch_size, const char* op_name,
                bool check_values) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op_name,
                    ": boxes must have shape [K, 5] (batch index, x1, y1, x2, y2), but got ", rois.sizes());
  TORCH_CHECK_TYPE(rois.scalar_type() == like.scalar_type(), op_name, ": boxes must have the dtype of ", "input (",
                   like.scalar_type(), "), but got ", rois.scalar_type());
  TORCH_CHECK_VALUE(rois.device() == like.device(), op_name, ": boxes must be on the device of input (", like.device(),
                    "), but are on ", rois.device());
  if (check_values) check_rois_values_cpu(rois, batch_size, op_name);
}

std::atomic<bool>& device_box_checks_flag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("ROIOPS_DEVICE_BOX_CHECKS");
    return env == nullptr || std::string(env) != "0";
  }()};
  return flag;
}

void check_pooled_size(int64_t pooled_height, int64_t pooled_width, const char* op_name) {
  TORCH_CHECK_VALUE(
      pooled_height > 0 && pooled_width > 0 && pooled_height <= kMaxPooledSize && pooled_width <= kMaxPooledSize,
      op_name, ": output_size must be positive (and at most ", kMaxPooledSize, "), but got (", pooled_height, ", ",
      pooled_width, ")");
}

void check_plane(int64_t height, int64_t width, const char* op_name) {
  // Divide rather than multiply: a backward call may pass sizes whose product overflows int64.
  TORCH_CHECK_VALUE(height == 0 || width < std::numeric_limits<int32_t>::max() / height, op_name,
                    ": a feature map plane must have fewer than 2^31 cells, but it is ", height, " x ", width);
}

}  // namespace

void fail_nonfinite_box(const char* op_name, int64_t k, double value, int column) {
  TORCH_CHECK_VALUE(false, op_name, ": boxes must be finite, but box ", k, " has value ", value, " in column ", column);
}

void fail_batch_index(const char* op_name, int64_t k, double value, int64_t batch_size) {
  TORCH_CHECK_VALUE(false, op_name, ": the batch index of box ", k, " (boxes[", k, ", 0]) must be an integer in [0, ",
                    batch_size, "), but it is ", value);
}

bool device_box_checks() { return device_box_checks_flag().load(); }

bool set_device_box_checks(bool enabled) { return device_box_checks_flag().exchange(enabled); }

void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                        const char* op_name, bool check_values) {
  TORCH_CHECK_VALUE(input.dim() == 4, op_name, ": input must be 4-D [N, C, H, W], but got ", input.dim(),
                    "-D with shape ", input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op_name,
                   ": input must be a floating-point tensor, but got ", input.scalar_type());
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(input.size(2), input.size(3), op_name);
  check_rois(rois, input, input.size(0), op_name, check_values);
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size, int64_t channels,
                         int64_t height, int64_t width, int64_t pooled_height, int64_t pooled_width,
                         const char* op_name, bool check_values) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op_name,
                    ": input sizes must be non-negative, but got [", batch_size, ", ", channels, ", ", height, ", ",
                    width, "]");
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(height, width, op_name);
  check_rois(rois, grad, batch_size, op_name, check_values);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_height && grad.size(3) == pooled_width,
                    op_name, ": grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ",
                    pooled_width, "], but got ", grad.sizes());
}

void check_spatial_scale(double spatial_scale, const char* op_name) {
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0, op_name,
                    ": spatial_scale must be a positive finite number, but got ", spatial_scale);
}

void check_sampling_ratio(int64_t sampling_ratio, const char* op_name) {
  if (sampling_ratio <= 0) return;  // adaptive: each box's grid is checked where it is computed
  const int64_t side = std::min(sampling_ratio, kMaxSamplesPerBin);  // so that the square cannot overflow
  TORCH_CHECK_VALUE(side * side <= kMaxSamplesPerBin, op_name, ": sampling_ratio ", sampling_ratio, " would take ",
                    side == sampling_ratio ? std::to_string(side * side) : std::string("over 2^48"),
                    " samples per bin (limit ", kMaxSamplesPerBin, "); pass a smaller sampling_ratio");
}

void check_argmax(const at::Tensor& argmax, const at::Tensor& grad, const char* op_name) {
  TORCH_CHECK_VALUE(argmax.scalar_type() == at::kInt && argmax.sizes() == grad.sizes(), op_name,
                    ": argmax must be int32 with the shape of grad ", grad.sizes());
  TORCH_CHECK_VALUE(argmax.device() == grad.device(), op_name, ": argmax must be on the device of grad (",
                    grad.device(), "), but is on ", argmax.device());
}

bool is_max_mode(const std::string& pool_mode) {
  TORCH_CHECK_VALUE(pool_mode == "avg" || pool_mode == "max", "roi_align: pool_mode must be 'avg' or 'max', but got '",
                    pool_mode, "'");
  return pool_mode == "max";
}

bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace roiops
