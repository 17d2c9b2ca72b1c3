"""Loads roiops' compiled parts: the op library (``libroiops_ops``, LibTorch stable ABI, which registers the
``torch.ops.roiops.*`` schemas and kernels) and the small ``_C`` module (build information, limits).

The op library is built once and loads in every torch from MIN_TORCH on (csrc/common/tensor.h sets
the same version as TORCH_TARGET_VERSION); on an older torch the import fails here, naming the range.
"""

import glob
import os
import re

import torch

# The oldest torch the op library loads in (TORCH_TARGET_VERSION in csrc/common/tensor.h).
MIN_TORCH = (2, 13)
NAMESPACE = "roiops"
_HERE = os.path.dirname(os.path.abspath(__file__))


def torch_version(version: str = torch.__version__):
    """(major, minor) of a torch version string such as '2.14.1+cu130'."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_torch_version(version: str = torch.__version__) -> None:
    if torch_version(version) < MIN_TORCH:
        raise ImportError(
            f"roiops supports torch {MIN_TORCH[0]}.{MIN_TORCH[1]} and later (its op library is built on the LibTorch "
            f"stable ABI of torch {MIN_TORCH[0]}.{MIN_TORCH[1]}), but torch {version} is installed: upgrade torch"
        )


def op_library_path() -> str:
    """The path of the op library, for torch.ops.load_library or a C++ program (dlopen)."""
    found = sorted(glob.glob(os.path.join(_HERE, "libroiops_ops.*so")))
    if not found:
        raise ImportError(
            f"roiops: the op library (libroiops_ops*.so) is missing from {_HERE}: build roiops (pip install .)"
        )
    return found[0]


def registered_ops(namespace: str = NAMESPACE):
    """The names of the ops registered under ``namespace`` (derived from the dispatcher, not listed)."""
    prefix = namespace + "::"
    return sorted(name[len(prefix) :] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix))


check_torch_version()
torch.ops.load_library(op_library_path())

from . import _C  # noqa: E402, F401  (after the version check: its message is the one to see)
