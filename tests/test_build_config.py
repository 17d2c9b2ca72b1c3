"""The build configuration setup.py produces (without compiling anything): setup.py runs in a
subprocess with setuptools.setup replaced by a recorder, and the recorded extension is inspected."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source checkout (setup.py)")

RECORDER = """
import json, os, runpy, setuptools
recorded = {}
setuptools.setup = lambda **kwargs: recorded.update(kwargs)
runpy.run_path("setup.py", run_name="__main__")
ext = recorded["ext_modules"][0]
print(json.dumps({"arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"), "args": ext.extra_compile_args,
                  "sources": ext.sources}))
"""


def build_config(**env):
    """setup.py's extension (compile arguments, sources) and arch list under the given environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CUDA_ARCH_LIST", "FORCE_CUDA")}
    full_env.update(env, CUDA_VISIBLE_DEVICES="")  # no visible GPU, as in CI
    result = subprocess.run(
        [sys.executable, "-c", RECORDER], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cpu_kernels_are_compiled_without_fused_multiply_add():
    config = build_config(FORCE_CUDA="0")
    assert not any(s.endswith(".cu") for s in config["sources"])
    assert "-ffp-contract=off" in config["args"]["cxx"]


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_default_cuda_architectures_end_in_ptx():
    if not (os.environ.get("CUDA_HOME") or os.path.isdir("/usr/local/cuda/lib64")):
        pytest.skip("needs a CUDA toolkit")
    config = build_config(FORCE_CUDA="1")
    assert any(s.endswith(".cu") for s in config["sources"])
    # Machine code for the listed GPUs, and PTX of the newest for any later GPU to compile.
    assert config["arch_list"].split(";")[-1].endswith("+PTX"), config["arch_list"]
    assert "--fmad=false" in config["args"]["nvcc"]
    assert "-ffp-contract=off" in config["args"]["cxx"]
    # An explicit list is left alone.
    assert build_config(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")["arch_list"] == "9.0"
