// The roiops._C Python module: how the op library was built and the argument limits, for the Python
// layer. It includes no torch header: the operators live in the op library (csrc/ops/), which
// roiops loads with torch.ops.load_library and which a C++ program can load without Python.
#include <pybind11/pybind11.h>

#include "common/limits.h"

// setup.py passes the version bare (-DROIOPS_VERSION_STRING=1.2.3): quoting survives no build tool.
#define ROIOPS_STRINGIFY_(x) #x
#define ROIOPS_STRINGIFY(x) ROIOPS_STRINGIFY_(x)
#ifdef ROIOPS_VERSION_STRING
#define ROIOPS_VERSION ROIOPS_STRINGIFY(ROIOPS_VERSION_STRING)
#else
#define ROIOPS_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "how the roiops op library was built, and its argument limits";
  m.attr("__version__") = ROIOPS_VERSION;
#ifdef ROIOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  // The argument limits (common/limits.h), for the Python layer's checks and the fake kernels.
  pybind11::dict limits;
  limits["max_pooled_size"] = roiops::kMaxPooledSize;
  limits["max_samples_per_bin"] = roiops::kMaxSamplesPerBin;
  limits["max_rotated_samples_per_box"] = roiops::kMaxRotatedSamplesPerBox;
  m.attr("limits") = limits;
}
