// Run-time settings of the operators, as ops (callable from Python as torch.ops.roiops.*).
#include "checks.h"
#include "library.h"
#include "tensor.h"

STABLE_TORCH_LIBRARY_FRAGMENT(ROIOPS_OP_NAMESPACE, m) {
  // Whether the CUDA forward checks box values on the device (one host sync per call; see
  // checks.h). Returns the previous setting.
  m.def("set_device_box_checks(bool enabled) -> bool");
}

STABLE_TORCH_LIBRARY_IMPL(ROIOPS_OP_NAMESPACE, CompositeExplicitAutograd, m) {
  m.impl("set_device_box_checks", TORCH_BOX(&roiops::set_device_box_checks));
}
