"""The op library is built on the LibTorch stable ABI: it references no unstable C++ symbol of
torch, needs no Python, states the torch range it loads in, and its op schemas follow the specs
from which roiops registers fake kernels and autograd."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import roiops
from roiops import _library
from roiops._ops import SPECS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = _library.op_library_path()


def _nm_undefined():
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-DC", "--undefined-only", LIBRARY], capture_output=True, text=True, check=True)
    return [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]


def test_op_library_uses_no_unstable_torch_symbol():
    undefined = _nm_undefined()
    unstable = [s for s in undefined if re.match(r"(at|c10|torch|caffe2)::", s)]
    assert unstable == [], f"{len(unstable)} unstable symbols, e.g. {unstable[:5]}"
    # What it does use of torch is the stable C shim.
    assert any(s.startswith(("aoti_torch_", "torch_")) for s in undefined)


def test_op_library_needs_no_python():
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run(["readelf", "-d", LIBRARY], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", out)
    assert not [n for n in needed if "python" in n], needed
    assert not [s for s in _nm_undefined() if s.startswith("Py")]


def test_supported_torch_range_is_stated_once_in_each_language():
    path = ROOT / "csrc" / "common" / "tensor.h"
    if not path.exists():
        pytest.skip("needs the source checkout (csrc/)")
    header = path.read_text()
    major, minor = map(
        int, re.search(r"#define TORCH_TARGET_VERSION \(\((\d+)ULL << 56\) \| \((\d+)ULL << 48\)\)", header).groups()
    )
    assert (major, minor) == _library.MIN_TORCH
    assert _library.torch_version() >= _library.MIN_TORCH


def test_an_older_torch_is_refused_with_the_range():
    with pytest.raises(ImportError, match=r"supports torch 2\.13 and later.*torch 2\.12\.1\+cpu is installed"):
        _library.check_torch_version("2.12.1+cpu")
    _library.check_torch_version("2.13.0")
    _library.check_torch_version("3.0.0")


@pytest.mark.parametrize("spec", SPECS.values(), ids=list(SPECS))
def test_schemas_follow_the_specs(spec):
    expected_args = [(spec.name, spec.forward_args), (spec.backward_name, spec.backward_args)]
    if spec.box_gradient:
        expected_args.append((spec.rois_backward_name, spec.rois_backward_args))
    for name, expected in expected_args:
        schema = getattr(torch.ops.roiops, name).default._schema
        assert tuple(a.name for a in schema.arguments) == expected


def test_import_loads_only_what_the_ops_need():
    code = "import sys, roiops; print(sorted(m for m in sys.modules if m.startswith(('roiops.', 'torchvision'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for lazy in ("roiops.models", "roiops.compat", "roiops.poolers", "torchvision"):
        assert f"'{lazy}" not in loaded, loaded
    assert roiops.compat.detectron2 is not None and roiops.models is not None  # (loaded on first use)
