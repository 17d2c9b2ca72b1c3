"""Which kernels the compiled library registers with the dispatcher, and that build_info() tells the
truth about it: CPU and AutocastCPU kernels always; CUDA and AutocastCUDA kernels exactly when the
library was built with CUDA (CI builds with FORCE_CUDA=1, so there they must be present)."""

import os

import pytest
import torch

import roiops
from roiops._ops import MULTILEVEL_OPS, SPECS

# Every op of the spec table, forward and backward, and multilevel_pool; the settings ops besides.
OPS = sorted([name for spec in SPECS.values() for name in spec.op_names] + list(MULTILEVEL_OPS))
SETTINGS_OPS = ["set_device_box_checks"]


def has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"roiops::{op}", key)


def test_build_info_reports_cuda():
    info = roiops.build_info()
    assert isinstance(info["with_cuda"], bool)
    assert sorted(info["ops"]) == sorted(OPS + SETTINGS_OPS)


def test_build_with_cuda_when_asked():
    # A build made with FORCE_CUDA=1 (or a test run that says it expects one) must carry the CUDA kernels.
    if os.environ.get("FORCE_CUDA") == "1" or os.environ.get("ROIOPS_EXPECT_CUDA") == "1":
        assert roiops.build_info()["with_cuda"]
    else:
        pytest.skip("no CUDA build expected (set ROIOPS_EXPECT_CUDA=1 to require one)")


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert has_kernel(op, "CPU")
    assert has_kernel(op, "AutocastCPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_iff_built_with_cuda(op):
    with_cuda = roiops.build_info()["with_cuda"]
    assert has_kernel(op, "CUDA") == with_cuda
    assert has_kernel(op, "AutocastCUDA") == with_cuda
