"""Builds roiops: the op library roiops/libroiops_ops (LibTorch stable ABI: one build loads in every torch from
TORCH_TARGET below on, and needs no Python) and the small pybind11 module roiops._C (build
information and limits).

CPU kernels always; CUDA kernels when FORCE_CUDA=1, or when a GPU and a CUDA toolkit are both
visible. `pip install .` works with pip's defaults (pyproject.toml declares torch as a build
requirement); `pip install --no-build-isolation -e .` builds against the torch already installed.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))


def _default_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper script; the toolkit's own
    # folder is what holds lib64/ and include/.
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda/lib64"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_default_cuda_home()

import torch  # noqa: E402  (CUDA_HOME must be settled before cpp_extension reads it)
from pybind11.setup_helpers import Pybind11Extension  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 needs a CUDA build of torch; this one is CPU-only")
        if CUDA_HOME is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return torch.version.cuda is not None and torch.cuda.is_available() and CUDA_HOME is not None


def _cuda_include_dirs():
    # ATen/cuda/CUDAContextLight.h needs cusparse.h, which the CUDA wheels of torch ship in the
    # nvidia.cu13 (or older per-library) Python packages rather than in the toolkit.
    dirs = []
    try:
        import nvidia

        for root in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    except ImportError:
        pass
    return dirs


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern), recursive=True))


def op_library():
    """The op library: every .cpp under csrc/common and csrc/ops (and .cu with CUDA), found by glob,
    so that a new op is a new folder under csrc/ops."""
    with_cuda = _want_cuda()
    sources = _sources("common/**/*.cpp") + _sources("ops/**/*.cpp")
    sources = [s for s in sources if not s.endswith("emulation.cpp")]  # (the emulated CUDA test build only)
    # -g0 drops the debug info that Python's default CFLAGS ask for (an 11 MB library otherwise).
    # -fopenmp: the vector loops use OpenMP SIMD pragmas; threads come from torch's pool
    # (torch::stable::parallel_for).
    # -ffp-contract=off: no fused multiply-adds in the CPU kernels either. On hosts whose baseline has
    # FMA (aarch64, or x86 with -march=native) GCC would fuse a*b+c, and results would then differ in
    # the last bit from the CUDA kernels (built with --fmad=false): exact argmax and value equality
    # between CPU and CUDA rely on both rounding every product and sum.
    # (The oldest torch it loads in, TORCH_TARGET_VERSION, is set in csrc/common/tensor.h.)
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
    if os.environ.get("ROIOPS_SANITIZE"):
        cxx_flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link_flags = ["-fopenmp"] + (["-fsanitize=address,undefined"] if os.environ.get("ROIOPS_SANITIZE") else [])
    # py_limited_api: links no libtorch_python, so that a C++ program can load the library.
    common = dict(extra_link_args=link_flags, py_limited_api=True)
    if not with_cuda:
        return CppExtension("roiops.libroiops_ops", sources, extra_compile_args={"cxx": cxx_flags}, **common), False
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch's architecture probe fails without a visible GPU; build for Ampere and Hopper, plus PTX
        # of the newest, which the driver compiles for GPUs newer than the list (sm_100, sm_120, ...)
        # instead of failing with "no kernel image is available".
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    sources += _sources("ops/**/*.cu")
    # --fmad=false: no fused multiply-adds, so the kernels round every sample position, weight and
    # sum exactly as the CPU kernels do (x86-64 code without FMA); the ops are memory-bound, so this
    # costs next to nothing and CUDA results then match the CPU ones (argmax included).
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]
    ext = CUDAExtension(
        "roiops.libroiops_ops",
        sources,
        include_dirs=_cuda_include_dirs(),
        # USE_CUDA: the stable C shim declares its CUDA functions (STD_CUDA_CHECK) only then.
        define_macros=[("ROIOPS_WITH_CUDA", None), ("USE_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        **common,
    )
    return ext, True


def python_module(with_cuda):
    """roiops._C: version, whether CUDA kernels were compiled, and the limits; no torch headers."""
    macros = [("ROIOPS_VERSION_STRING", VERSION)] + ([("ROIOPS_WITH_CUDA", None)] if with_cuda else [])
    return Pybind11Extension("roiops._C", ["csrc/python_module.cpp"], define_macros=macros, extra_compile_args=["-g0"])


_ops_ext, _with_cuda = op_library()

setup(
    name="roiops",
    version=VERSION,
    description="Exact, fast and safe RoIAlign / RoIPool operators for PyTorch (CPU and CUDA)",
    packages=find_packages(include=["roiops", "roiops.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.13", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "expecttest"],
        "bench": ["pycocotools", "matplotlib", "tqdm", "tifffile"],
        "export": ["onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={"console_scripts": ["roiops-bench=roiops.bench.cli:main"]},
    ext_modules=[_ops_ext, python_module(_with_cuda)],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
