"""The ops without Python: a model calling roiops.roi_align and roiops.roi_pool is exported, compiled to an
AOTInductor package, and run by a small C++ program (tests/cpp/run_aoti_package.cpp) linked against the
installed LibTorch, which dlopen()s roiops' op library itself. Its outputs must equal eager PyTorch's, for
the example's box count and another one (the box axis is exported dynamic)."""

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension
from torch import nn

import roiops
from roiops import _library

SOURCE = Path(__file__).resolve().parent / "cpp" / "run_aoti_package.cpp"
LOADER_HEADER = "torch/csrc/inductor/aoti_package/model_package_loader.h"

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C++ runner uses dlopen and /proc (Linux)"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
]


class TwoOps(nn.Module):
    """Both ops, both RoIAlign modes, with Inductor-generated code around them (the scaling, the sum)."""

    def forward(self, x, rois):
        x = x * 1.5 + 0.25
        avg = roiops.roi_align(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
        peak = roiops.roi_align(x, rois, (5, 4), 0.25, sampling_ratio=2, aligned=True, pool_mode="max")
        pooled = roiops.roi_pool(x, rois, (4, 6), spatial_scale=0.25)
        return avg, peak, pooled, avg.sum(dim=(2, 3)) + pooled.amax(dim=(2, 3))


def _rois(count, seed, batch_size=2, height=96, width=128):
    """Boxes in image pixels (stride 4 of the [24, 32] map), some reaching past its edges."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * torch.tensor([width, height]) - 8
    wh = torch.rand(count, 2, generator=g) * torch.tensor([width, height]) / 2 + 1
    index = torch.randint(0, batch_size, (count, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)


def _write(path, tensor):
    """The runner's file format: int64 ndim, int64 sizes, float32 data, little-endian."""
    values = tensor.detach().contiguous().flatten().tolist()
    shape = list(tensor.shape)
    path.write_bytes(struct.pack(f"<q{len(shape)}q", len(shape), *shape) + struct.pack(f"<{len(values)}f", *values))


def _read(path):
    data = path.read_bytes()
    (ndim,) = struct.unpack_from("<q", data)
    shape = struct.unpack_from(f"<{ndim}q", data, 8)
    count = (len(data) - 8 * (ndim + 1)) // 4
    values = struct.unpack_from(f"<{count}f", data, 8 * (ndim + 1))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def _build_runner(out_dir):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    includes = cpp_extension.include_paths()
    if not any(os.path.exists(os.path.join(d, LOADER_HEADER)) for d in includes):
        pytest.skip(f"this torch ships no LibTorch header {LOADER_HEADER}")
    lib_dirs = cpp_extension.library_paths()
    exe = out_dir / "run_aoti_package"
    command = [
        compiler,
        "-std=c++20",  # torch's own headers need C++20 (the program itself is C++17)
        "-O1",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{d}" for d in includes),
        str(SOURCE),
        "-o",
        str(exe),
        *(f"-L{d}" for d in lib_dirs),
        *(f"-Wl,-rpath,{d}" for d in lib_dirs),
        # The program calls nothing in libtorch.so, so an --as-needed linker (Debian's and Ubuntu's default)
        # would drop it, and with it libtorch_cuda.so of a CUDA torch, which a CUDA build of the op library
        # needs (it has no rpath of its own: it relies on the torch libraries being loaded first).
        "-Wl,--no-as-needed",
        "-ltorch",
        "-Wl,--as-needed",
        "-ltorch_cpu",
        "-lc10",
        "-ldl",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"
    return exe


def _run(exe, op_library, package, inputs, work_dir):
    in_dir, out_dir = work_dir / "in", work_dir / "out"
    in_dir.mkdir(parents=True)
    for i, tensor in enumerate(inputs):
        _write(in_dir / f"{i}.bin", tensor)
    # Nothing of the Python environment: no PYTHONPATH/PYTHONHOME, no LD_LIBRARY_PATH (the runner's rpath
    # finds LibTorch, and the op library's own libc10/libtorch_cpu dependencies are already loaded).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "2"}
    command = [str(exe), op_library, str(package), str(in_dir), str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    outputs = sorted(out_dir.glob("*.bin"), key=lambda p: int(p.stem)) if out_dir.exists() else []
    return result, [_read(p) for p in outputs]


def test_aoti_package_runs_in_cpp_with_the_op_library_dlopened(tmp_path):
    exe = _build_runner(tmp_path)

    model = TwoOps().eval()
    x = torch.randn(2, 8, 24, 32, generator=torch.Generator().manual_seed(0))
    boxes = torch.export.Dim("boxes", min=2, max=4096)
    program = torch.export.export(model, (x, _rois(7, seed=1)), dynamic_shapes=({}, {0: boxes}))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))

    library = _library.op_library_path()
    for count in (7, 11):
        inputs = (x, _rois(count, seed=count))
        result, got = _run(exe, library, package, inputs, tmp_path / f"run{count}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no python loaded" in result.stdout
        with torch.no_grad():
            expected = model(*inputs)
        assert len(got) == len(expected)
        assert got[0].shape == (count, 8, 7, 7)
        for g, e in zip(got, expected):
            # The roiops kernels are the same code in both processes; only Inductor's fused arithmetic
            # around them may round differently, by an ulp or so.
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)

    # Without the op library the package cannot resolve roiops::* ops: the dlopen above is what made it work.
    result, _ = _run(exe, "none", package, (x, _rois(7, seed=7)), tmp_path / "without")
    assert result.returncode != 0
    assert "Could not find schema for roiops::roi_" in result.stderr, result.stderr
