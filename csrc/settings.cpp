// Run-time settings of the operators, as ops (callable from Python as torch.ops.roiops.*).
#include <torch/library.h>

#include "library.h"
#include "roi_checks.h"

TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Whether the CUDA forward checks box values on the device (one host sync per call; see
  // roi_checks.h). Returns the previous setting.
  m.def("set_device_box_checks(bool enabled) -> bool", &roiops::set_device_box_checks);
}
