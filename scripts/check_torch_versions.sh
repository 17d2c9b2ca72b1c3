#!/usr/bin/env bash
# One build, two torch releases: builds a roiops wheel once, in the project's environment (.venv,
# torch 2.14.1), installs that same wheel into a fresh environment with torch 2.13.0 (CPU build) and
# runs the test suite there. The op library is built on the LibTorch stable ABI of torch 2.13, so it
# must load and pass unchanged. Tests that need torchvision skip there (no torchvision release imports
# beside torch 2.13). The emulated CUDA libraries built in the checkout (stable ABI too) are loaded
# as they are.
#
# Usage: scripts/check_torch_versions.sh [pytest arguments]   (default: -m "not slow")
# Environment:
#   ROIOPS_XVER_DIR   work folder (default: $TMPDIR/roiops-xver); its wheel stays in $ROIOPS_XVER_DIR/dist
#   ROIOPS_OLD_TORCH  the other torch (default: 2.13.0+cpu, which pip finds in its local wheel folder here)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${ROIOPS_XVER_DIR:-${TMPDIR:-/tmp}/roiops-xver}"
OLD_TORCH="${ROIOPS_OLD_TORCH:-2.13.0+cpu}"
cd "$ROOT"
rm -rf "$OUT"
mkdir -p "$OUT/dist" "$OUT/run"

t0=$(date +%s)
# The wheel has the CPU kernels: a CUDA build links libtorch_cuda, which a CPU-only torch lacks.
# (build/lib* is where setuptools collects a wheel's files: a stale library there would ship too.)
rm -rf build/lib.* build/bdist.*
FORCE_CUDA=0 .venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w "$OUT/dist" .
wheel="$(ls "$OUT"/dist/roiops-*.whl)"
echo "== built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) against torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') in $(( $(date +%s) - t0 )) s"

python3 -m venv "$OUT/venv"
py="$OUT/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "torch==$OLD_TORCH"
"$py" -m pip install -q numpy pytest pytest-benchmark hypothesis expecttest
"$py" -m pip install -q --no-deps "$wheel"
echo "== installed it beside torch $("$py" -c 'import torch; print(torch.__version__)')"

# Run from a folder that holds only the tests, so that the installed wheel (not the checkout) is imported.
cp -r tests docs "$OUT/run/"
cp pyproject.toml README.md "$OUT/run/"
cd "$OUT/run"
"$py" - <<'PY'
import roiops
print("   roiops from", roiops.__file__, "| ops:", ", ".join(roiops.build_info()["ops"]))
assert "/site-packages/" in roiops.__file__, "the checkout, not the wheel, was imported"
PY
args=("$@")
# (The wheel is CPU-only, so FORCE_CUDA from CI's environment does not apply.)
[[ $# -gt 0 ]] || args=(-m "not slow")
env -u FORCE_CUDA ROIOPS_EMULATED_CUDA_DIR="$ROOT/build/emulated_cuda" ROIOPS_REQUIRE_EMULATED_CUDA=1 \
    "$py" -m pytest -q -p no:cacheprovider "${args[@]}" tests

# pip's defaults: an isolated build (pyproject.toml brings torch 2.13 for the headers), no flags. Its
# library must carry no unstable symbol either, and work in the torch 2.13 environment.
cd "$ROOT"
t0=$(date +%s)
env -u FORCE_CUDA .venv/bin/python -m pip wheel -q --no-deps -w "$OUT/dist-defaults" .
wheel="$(ls "$OUT"/dist-defaults/roiops-*.whl)"
echo "== pip wheel . (pip's defaults): $(basename "$wheel") in $(( $(date +%s) - t0 )) s"
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
cd "$OUT/run"
env -u FORCE_CUDA "$py" -m pytest -q -p no:cacheprovider tests/test_stable_abi.py tests/test_roi_align.py tests/test_roi_pool.py
