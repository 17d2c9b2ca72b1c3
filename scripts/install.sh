#!/usr/bin/env bash
# Sets up a fresh checkout: a virtual environment in .venv with torch, the test and benchmark
# dependencies, and roiops built from source (editable). Safe to re-run.
#   FORCE_CUDA=1                 also compile the CUDA kernels (needs a CUDA build of torch + toolkit)
#   TORCH_CUDA_ARCH_LIST="9.0"   GPU architectures to compile for (default without a GPU: "8.0;9.0")
#   ROIOPS_VENV=path             put the environment elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ROIOPS_VENV:-.venv}"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip setuptools wheel
# torch 2.14.1 + torchvision 0.29.1 are the pinned, tested pair (torchvision is the test oracle).
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$py" -m pip install -q -r requirements-dev.txt
# stardist ships the one real microscopy image the misalignment benchmark uses; its own heavy
# dependencies are not needed for reading the TIFFs.
"$py" -m pip install -q --no-deps stardist || echo "install.sh: stardist unavailable; the real-image benchmark will be skipped"
# OpenVINO is one of the speed benchmark's peers; optional (the benchmark says when it is absent).
"$py" -m pip install -q openvino || echo "install.sh: openvino unavailable; the speed benchmark will skip it"
# Without build isolation the op library compiles against the torch installed above (and, with
# FORCE_CUDA=1, its CUDA headers); `pip install .` alone would build in an isolated environment.
start=$(date +%s)
"$py" -m pip install -q --no-build-isolation -e .
echo "install.sh: roiops built in $(( $(date +%s) - start )) s"
# The CUDA kernels compiled for the CPU (emulated CUDA), so that the test suite runs them here as CI
# does (tests/test_cuda.py and the device-parametrized tests); no GPU or CUDA toolkit needed.
PYTHON="$py" bash scripts/build_emulated_cuda.sh
"$venv/bin/roiops-bench" info
