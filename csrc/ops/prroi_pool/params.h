// prroi_pool's parameters and per-box geometry, shared by the CPU and CUDA kernels.
#pragma once

#include "../../common/checks.h"
#include "geometry.h"

namespace roiops {

struct PrroiParams : RoiCall {
  bool aligned;
};

inline PrroiParams prroi_params(const RoiCall& call, bool aligned) {
  PrroiParams p;
  static_cast<RoiCall&>(p) = call;
  p.aligned = aligned;
  return p;
}

template <typename acc_t>
ROIOPS_HOST_DEVICE PrroiGeometry<acc_t> box_geometry(const acc_t* box, const PrroiParams& p) {
  return prroi_geometry<acc_t>(box, static_cast<acc_t>(p.spatial_scale), p.pooled_h, p.pooled_w, p.aligned);
}

// The box-gradient call: input and rois as a forward's, grad [K, C, PH, PW] of input's dtype and device.
PrroiParams rois_backward_call(const Tensor& grad, const Tensor& input, const Tensor& rois, double spatial_scale,
                               int64_t pooled_height, int64_t pooled_width, bool aligned, const char* op_name,
                               bool check_values);

}  // namespace roiops
