"""Where kernels under test run, as a test parameter: the CPU kernels, real CUDA, and the CUDA sources
emulated on the CPU (csrc/common/cuda/emulation.h; ops under torch.ops.roiops_emu / roiops_emu64, built by
scripts/build_emulated_cuda.sh, looked up in $ROIOPS_EMULATED_CUDA_DIR, default build/emulated_cuda).
"""

import contextlib
import os
import pathlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import roiops

EMULATED_DIR = pathlib.Path(
    os.environ.get("ROIOPS_EMULATED_CUDA_DIR", pathlib.Path(__file__).resolve().parents[1] / "build" / "emulated_cuda")
)


class _RouteTo(TorchDispatchMode):
    """Sends every roiops::* op that reaches the kernels to the same op of another namespace.

    The mode sits below autograd and autocast, so the Python layer (roiops.roi_align, its autograd
    formula, autocast) runs unchanged on top of the emulated kernels."""

    def __init__(self, namespace):
        super().__init__()
        self.target = getattr(torch.ops, namespace)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "roiops":
            func = getattr(getattr(self.target, func._opname), func._overloadname)
        return func(*args, **(kwargs or {}))


class Device:
    """Where the CUDA kernels under test run.

    ops: the op namespace to call directly; to(x): a CPU tensor there; python_layer(): a context in
    which roiops.roi_align & co. (autograd included) use these kernels; box_checks(): a context with
    the CUDA box value check on."""

    def __init__(self, name, torch_device, namespace):
        self.name = name
        self.torch_device = torch_device
        self.namespace = namespace

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    @property
    def emulated(self):
        return self.namespace != "roiops"

    def to(self, x):
        return x.to(self.torch_device)

    def python_layer(self):
        return _RouteTo(self.namespace) if self.emulated else contextlib.nullcontext()

    @contextlib.contextmanager
    def box_checks(self, enabled=True):
        """The blocking box value check of these kernels on (CUDA's default is off: NaN rows)."""
        previous = self.ops.set_device_box_checks(enabled)
        try:
            yield self
        finally:
            self.ops.set_device_box_checks(previous)

    def __repr__(self):
        return self.name


def _load_emulated(variant):
    """The emulated CUDA library of this variant, loaded; None if it was not built."""
    path = EMULATED_DIR / f"libroiops_{variant}.so"
    if not path.exists():
        # CI builds the libraries and sets this, so that a broken build cannot pass as skipped tests.
        if os.environ.get("ROIOPS_REQUIRE_EMULATED_CUDA") == "1":
            raise RuntimeError(f"ROIOPS_REQUIRE_EMULATED_CUDA=1 but {path} does not exist")
        return None
    if not hasattr(torch.ops, f"roiops_{variant}") or not hasattr(getattr(torch.ops, f"roiops_{variant}"), "roi_align"):
        torch.ops.load_library(str(path))
    return Device(variant.replace("emu", "emulated"), "cpu", f"roiops_{variant}")


def _device_params():
    cuda_ready = torch.cuda.is_available() and roiops.build_info()["with_cuda"]
    params = [
        pytest.param(
            Device("cuda", "cuda", "roiops"),
            id="cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not cuda_ready, reason="needs a CUDA device and roiops built with CUDA"),
            ],
        )
    ]
    for variant in ("emu", "emu64"):
        dev = _load_emulated(variant)
        reason = f"emulated CUDA library not built (run scripts/build_emulated_cuda.sh; looked in {EMULATED_DIR})"
        params.append(
            pytest.param(
                dev, id=variant.replace("emu", "emulated"), marks=pytest.mark.skipif(dev is None, reason=reason)
            )
        )
    return params


CUDA_DEVICES = _device_params()
CPU = Device("cpu", "cpu", "roiops")
ALL_DEVICES = [pytest.param(CPU, id="cpu")] + CUDA_DEVICES


def select(request):
    """The device of a fixture parametrized over these lists, emulated ones launching in order."""
    if request.param.emulated:
        request.param.ops.set_launch_order("forward")
    return request.param
