#include "checks.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

namespace roiops {
namespace {

const char* box_columns(int box_width) {
  return box_width == 6 ? "(batch index, centre x, centre y, width, height, angle)" : "(batch index, x1, y1, x2, y2)";
}

void check_rois_values_cpu(const Tensor& rois, int64_t batch_size, int box_width, const char* op_name) {
  const Tensor r = make_contiguous(rois);
  dispatch_floating(r.scalar_type(), op_name, [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* p = r.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < r.size(0); ++k) {
      for (int j = 0; j < box_width; ++j) {
        const double v = static_cast<double>(p[k * box_width + j]);
        if (!std::isfinite(v)) fail_nonfinite_box(op_name, k, v, j);
      }
      const double b = static_cast<double>(p[k * box_width]);
      if (!(b == std::floor(b) && b >= 0 && b < static_cast<double>(batch_size))) {
        fail_batch_index(op_name, k, b, batch_size);
      }
    }
  });
}

void check_rois(const Tensor& rois, const Tensor& like, int64_t batch_size, int box_width, const char* op_name,
                bool check_values) {
  check(rois.dim() == 2 && rois.size(1) == box_width, op_name, ": boxes must have shape [K, ", box_width, "] ",
        box_columns(box_width), ", but got ", format_sizes(rois));
  check(rois.scalar_type() == like.scalar_type(), op_name, ": boxes must have the dtype of input (",
        format_dtype(like.scalar_type()), "), but got ", format_dtype(rois.scalar_type()));
  check(rois.device() == like.device(), op_name, ": boxes must be on the device of input (", format_device(like),
        "), but are on ", format_device(rois));
  if (check_values) check_rois_values_cpu(rois, batch_size, box_width, op_name);
}

std::atomic<bool>& device_box_checks_flag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("ROIOPS_DEVICE_BOX_CHECKS");
    return env != nullptr && std::string(env) == "1";
  }()};
  return flag;
}

void check_pooled_size(int64_t pooled_height, int64_t pooled_width, const char* op_name) {
  check(pooled_height > 0 && pooled_width > 0 && pooled_height <= kMaxPooledSize && pooled_width <= kMaxPooledSize,
        op_name, ": output_size must be positive (and at most ", kMaxPooledSize, "), but got (", pooled_height, ", ",
        pooled_width, ")");
}

void check_plane(int64_t height, int64_t width, const char* op_name) {
  // Divide rather than multiply: a backward call may pass sizes whose product overflows int64.
  check(height == 0 || width < kMaxPlaneCells / height, op_name,
        ": a feature map plane must have fewer than 2^31 cells, but it is ", height, " x ", width);
}

// Positive and finite as a double, and still so in the type the kernels compute in (float for
// float32 and the half types: 1e39 would become inf there, 1e-50 zero).
void check_spatial_scale(double spatial_scale, ScalarType dtype, const char* op_name) {
  check(std::isfinite(spatial_scale) && spatial_scale > 0, op_name,
        ": spatial_scale must be a positive finite number, but got ", spatial_scale);
  if (opmath_type(dtype) == ScalarType::Float) {
    const float narrowed = static_cast<float>(spatial_scale);
    check(std::isfinite(narrowed) && narrowed > 0, op_name, ": spatial_scale ", spatial_scale,
          " is outside the range of float32, which ", format_dtype(dtype), " input is computed in");
  }
}

RoiCall make_call(double spatial_scale, int64_t pooled_height, int64_t pooled_width, int64_t batch, int64_t channels,
                  int64_t height, int64_t width, bool nhwc, int64_t num_rois) {
  return RoiCall{spatial_scale,
                 static_cast<int>(pooled_height),
                 static_cast<int>(pooled_width),
                 batch,
                 channels,
                 height,
                 width,
                 nhwc,
                 num_rois,
                 /*roi_levels=*/nullptr,
                 /*level=*/0};
}

}  // namespace

void fail_nonfinite_box(const char* op_name, int64_t k, double value, int column) {
  fail(op_name, ": boxes must be finite, but box ", k, " has value ", value, " in column ", column);
}

void fail_batch_index(const char* op_name, int64_t k, double value, int64_t batch_size) {
  fail(op_name, ": the batch index of box ", k, " (boxes[", k, ", 0]) must be an integer in [0, ", batch_size,
       "), but it is ", value);
}

bool device_box_checks() { return device_box_checks_flag().load(); }

bool set_device_box_checks(bool enabled) { return device_box_checks_flag().exchange(enabled); }

RoiCall forward_call(const Tensor& input, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                     int64_t pooled_width, const char* op_name, bool check_values, int box_width) {
  check(input.dim() == 4, op_name, ": input must be 4-D [N, C, H, W], but got ", input.dim(), "-D with shape ",
        format_sizes(input));
  const ScalarType dtype = input.scalar_type();
  check(dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
            dtype == ScalarType::BFloat16,
        op_name, ": input must be a floating-point tensor, but got ", format_dtype(dtype));
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(input.size(2), input.size(3), op_name);
  check_spatial_scale(spatial_scale, dtype, op_name);
  check_rois(rois, input, input.size(0), box_width, op_name, check_values);
  return make_call(spatial_scale, pooled_height, pooled_width, input.size(0), input.size(1), input.size(2),
                   input.size(3), use_channels_last(input), rois.size(0));
}

RoiCall backward_call(const Tensor& grad, const Tensor& rois, double spatial_scale, int64_t pooled_height,
                      int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                      const char* op_name, bool check_values, int box_width) {
  check(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op_name,
        ": input sizes must be non-negative, but got [", batch_size, ", ", channels, ", ", height, ", ", width, "]");
  check_pooled_size(pooled_height, pooled_width, op_name);
  check_plane(height, width, op_name);
  check_rois(rois, grad, batch_size, box_width, op_name, check_values);
  check(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels && grad.size(2) == pooled_height &&
            grad.size(3) == pooled_width,
        op_name, ": grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
        "], but got ", format_sizes(grad));
  check_spatial_scale(spatial_scale, grad.scalar_type(), op_name);
  return make_call(spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
                   use_channels_last(grad), rois.size(0));
}

int sampling_grid(int64_t sampling_ratio, const char* op_name) {
  if (sampling_ratio <= 0) return 0;  // adaptive: each box's grid is checked where it is computed
  const int64_t side = std::min(sampling_ratio, kMaxSamplesPerBin);  // so that the square cannot overflow
  check(side * side <= kMaxSamplesPerBin, op_name, ": sampling_ratio ", sampling_ratio, " would take ",
        side == sampling_ratio ? std::to_string(side * side) : std::string("over 2^48"), " samples per bin (limit ",
        kMaxSamplesPerBin, "); pass a smaller sampling_ratio");
  return static_cast<int>(sampling_ratio);
}

void check_argmax(const Tensor& argmax, const Tensor& grad, const char* op_name) {
  bool same_shape = argmax.dim() == grad.dim();
  for (int64_t d = 0; same_shape && d < grad.dim(); ++d) same_shape = argmax.size(d) == grad.size(d);
  check(argmax.scalar_type() == ScalarType::Int && same_shape, op_name,
        ": argmax must be int32 with the shape of grad ", format_sizes(grad));
  check(argmax.device() == grad.device(), op_name, ": argmax must be on the device of grad (", format_device(grad),
        "), but is on ", format_device(argmax));
}

bool is_max_mode(const std::string& pool_mode) {
  check(pool_mode == "avg" || pool_mode == "max", "roi_align: pool_mode must be 'avg' or 'max', but got '", pool_mode,
        "'");
  return pool_mode == "max";
}

}  // namespace roiops
