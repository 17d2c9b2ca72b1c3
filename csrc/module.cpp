// The roiops._C Python module: loading it registers the operators (the TORCH_LIBRARY blocks in this
// library run at load time); the module itself only reports how the library was built.
#include <pybind11/pybind11.h>

#include "roi_limits.h"

// setup.py passes the version bare (-DROIOPS_VERSION_STRING=1.2.3): quoting survives no build tool.
#define ROIOPS_STRINGIFY_(x) #x
#define ROIOPS_STRINGIFY(x) ROIOPS_STRINGIFY_(x)
#ifdef ROIOPS_VERSION_STRING
#define ROIOPS_VERSION ROIOPS_STRINGIFY(ROIOPS_VERSION_STRING)
#else
#define ROIOPS_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "roiops compiled operators (RoIAlign, RoIPool) and build information";
  m.attr("__version__") = ROIOPS_VERSION;
#ifdef ROIOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  pybind11::list ops;
  for (const char* name : {"roi_align", "_roi_align_backward", "roi_pool", "_roi_pool_backward"}) {
    ops.append(name);
  }
  m.attr("ops") = ops;
  // The argument limits (roi_limits.h), for the Python layer's checks and the fake kernels.
  pybind11::dict limits;
  limits["max_pooled_size"] = roiops::kMaxPooledSize;
  limits["max_samples_per_bin"] = roiops::kMaxSamplesPerBin;
  m.attr("limits") = limits;
}
