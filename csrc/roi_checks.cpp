#include "roi_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/floor.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/ne.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace roiops {
namespace {

void check_rois_values_cpu(const at::Tensor& rois, int64_t batch_size, const char* op_name) {
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "roiops_check_rois", [&] {
    const scalar_t* p = r.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < r.size(0); ++k) {
      for (int j = 0; j < 5; ++j) {
        const double v = static_cast<double>(p[k * 5 + j]);
        TORCH_CHECK_VALUE(std::isfinite(v), op_name, ": boxes must be finite, but box ", k,
                          " has value ", v, " in column ", j);
      }
      const double b = static_cast<double>(p[k * 5]);
      TORCH_CHECK_VALUE(b == std::floor(b) && b >= 0 && b < static_cast<double>(batch_size), op_name,
                        ": the batch index of box ", k, " (boxes[", k, ", 0]) must be an integer in [0, ",
                        batch_size, "), but it is ", b);
    }
  });
}

// Off the CPU the values are checked with tensor ops and one host sync; the failing row is
// located only when there is one.
void check_rois_values_device(const at::Tensor& rois, int64_t batch_size, const char* op_name) {
  if (rois.size(0) == 0) return;
  const at::Tensor nonfinite = at::logical_not(at::isfinite(rois)).any(1);
  if (nonfinite.any().item<bool>()) {
    const int64_t k = nonfinite.to(at::kInt).argmax().item<int64_t>();
    TORCH_CHECK_VALUE(false, op_name, ": boxes must be finite, but box ", k, " has NaN or inf");
  }
  const at::Tensor batch = rois.select(1, 0);
  const at::Tensor bad =
      at::logical_or(at::logical_or(at::ne(batch, at::floor(batch)), at::lt(batch, 0)), at::ge(batch, batch_size));
  if (bad.any().item<bool>()) {
    const int64_t k = bad.to(at::kInt).argmax().item<int64_t>();
    TORCH_CHECK_VALUE(false, op_name, ": the batch index of box ", k, " (boxes[", k, ", 0]) must be an integer in [0, ",
                      batch_size, "), but it is ", batch[k].item<double>());
  }
}

void check_rois(const at::Tensor& rois, const at::Tensor& like, int64_t batch_size, const char* op_name) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op_name,
                    ": boxes must have shape [K, 5] (batch index, x1, y1, x2, y2), but got ", rois.sizes());
  TORCH_CHECK_TYPE(rois.scalar_type() == like.scalar_type(), op_name, ": boxes must have the dtype of ",
                   "input (", like.scalar_type(), "), but got ", rois.scalar_type());
  TORCH_CHECK_VALUE(rois.device() == like.device(), op_name, ": boxes must be on the device of input (",
                    like.device(), "), but are on ", rois.device());
  if (rois.is_cpu()) {
    check_rois_values_cpu(rois, batch_size, op_name);
  } else {
    check_rois_values_device(rois, batch_size, op_name);
  }
}

void check_pooled_size(int64_t pooled_height, int64_t pooled_width, const char* op_name) {
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0 && pooled_height <= (1 << 20) &&
                        pooled_width <= (1 << 20),
                    op_name, ": output_size must be positive (and at most 2^20), but got (",
                    pooled_height, ", ", pooled_width, ")");
}

void check_plane(int64_t height, int64_t width, const char* op_name) {
  // Divide rather than multiply: a backward call may pass sizes whose product overflows int64.
  TORCH_CHECK_VALUE(height == 0 || width < std::numeric_limits<int32_t>::max() / height, op_name,
                    ": a feature map plane must have fewer than 2^31 cells, but it is ", height, " x ", width);
}

}  // namespace

void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                        int64_t pooled_width, const char* op_name) {
  TORCH_CHECK_VALUE(input.dim() == 4, op_name, ": input must be 4-D [N, C, H, W], but got ", input.dim(),
                    "-D with shape ", input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op_name,
                   ": input must be a floating-point tensor, but got ", input.scalar_type());
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(input.size(2), input.size(3), op_name);
  check_rois(rois, input, input.size(0), op_name);
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size,
                         int64_t channels, int64_t height, int64_t width, int64_t pooled_height,
                         int64_t pooled_width, const char* op_name) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op_name,
                    ": input sizes must be non-negative, but got [", batch_size, ", ", channels, ", ", height,
                    ", ", width, "]");
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(height, width, op_name);
  check_rois(rois, grad, batch_size, op_name);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_height && grad.size(3) == pooled_width,
                    op_name, ": grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height,
                    ", ", pooled_width, "], but got ", grad.sizes());
}

bool is_max_mode(const std::string& pool_mode) {
  TORCH_CHECK_VALUE(pool_mode == "avg" || pool_mode == "max",
                    "roi_align: pool_mode must be 'avg' or 'max', but got '", pool_mode, "'");
  return pool_mode == "max";
}

bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace roiops
