#!/usr/bin/env bash
# Builds the emulated CUDA test libraries: the CUDA sources of csrc/ops/*/cuda.cu (kernels and host
# wrappers, unchanged) compiled as C++ by the host compiler against csrc/common/cuda/emulation.h, so
# that they run on the CPU. tests/test_cuda.py loads them with torch.ops.load_library and compares them with the CPU
# kernels; no GPU and no CUDA toolkit are needed.
#
#   libroiops_emu.so    ops under torch.ops.roiops_emu, built as the real library is
#   libroiops_emu64.so  ops under torch.ops.roiops_emu64, with the 32-bit work limit at 0 (every launch
#                       takes the 64-bit index kernels) and at most 3 blocks per launch (threads make
#                       several grid-stride rounds even on tiny inputs)
#
# Usage: scripts/build_emulated_cuda.sh   (from anywhere; the project's .venv python, or $PYTHON)
# Environment:
#   ROIOPS_EMULATED_CUDA_DIR  output folder (default: build/emulated_cuda in the checkout; the tests
#                             look there too)
#   ROIOPS_EMU_CXXFLAGS       extra compiler and linker flags (scripts/sanitize.sh adds the sanitizers)
#   ROIOPS_EMU_VARIANTS       which libraries to build (default: "emu emu64")
#   MAX_JOBS                  parallel compiles (default: the number of cores)
# Objects are rebuilt only when a source or a header they include changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${ROIOPS_EMULATED_CUDA_DIR:-$ROOT/build/emulated_cuda}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
CXX="${CXX:-g++}"
read -ra VARIANTS <<< "${ROIOPS_EMU_VARIANTS:-emu emu64}"
JOBS="${MAX_JOBS:-$(nproc)}"

read -r TORCH_INCLUDE TORCH_API_INCLUDE TORCH_LIB CXX11_ABI < <("$PYTHON" - <<'EOF'
import torch
from torch.utils import cpp_extension
print(*cpp_extension.include_paths(), cpp_extension.library_paths()[0], int(torch._C._GLIBCXX_USE_CXX11_ABI))
EOF
)

# -fvisibility=hidden: these libraries share names (roiops::cuda::...) with roiops._C and with each
# other; hidden symbols keep each library bound to its own definitions.
# -ffp-contract=off: no fused multiply-adds, as the real build's --fmad=false.
# -O1: the tests run small inputs; compile time matters more than kernel speed here.
CXXFLAGS=(-std=c++20 -O1 -fPIC -fvisibility=hidden -fvisibility-inlines-hidden -ffp-contract=off
          -Wall -Wno-unknown-pragmas -D_GLIBCXX_USE_CXX11_ABI="$CXX11_ABI" -DROIOPS_EMULATE_CUDA
          -isystem "$TORCH_INCLUDE" -isystem "$TORCH_API_INCLUDE")
# shellcheck disable=SC2206
EXTRA=(${ROIOPS_EMU_CXXFLAGS:-})

mkdir -p "$OUT/obj"
cd "$ROOT"

# Every source of the op library but the CPU kernels (the emulated kernels take the CPU key of their
# own namespace), found as setup.py finds them: a new op's folder needs no edit here.
sources() {
    find csrc/common csrc/ops \( -name '*.cpp' -o -name '*.cu' \) ! -name cpu.cpp | sort
}

# One line per object: <object> <source> <flags...>. Sources that register nothing (no
# STABLE_TORCH_LIBRARY) are compiled once and shared by the libraries.
plan() {
    local variant ns defines src name
    for src in $(sources); do
        name="$(echo "${src#csrc/}" | tr '/' '_')"
        if ! grep -q STABLE_TORCH_LIBRARY "$src"; then
            echo "$OUT/obj/shared.${name%.*}.o $src"
            continue
        fi
        for variant in "${VARIANTS[@]}"; do
            ns="roiops_$variant"
            defines="-DROIOPS_OP_NAMESPACE=$ns"
            [[ $variant == emu64 ]] && defines+=" -DROIOPS_MAX_INT32_WORK=0 -DROIOPS_MAX_BLOCKS=3"
            echo "$OUT/obj/$variant.${name%.*}.o $src $defines"
        done
    done
}

# Compiles one object unless it is newer than everything in its dependency file (written by -MMD).
compile() {
    local obj="$1" src="$2"
    shift 2
    if [[ -f "$obj" && -f "$obj.d" ]]; then
        local deps newer=0 flags_file="$obj.flags"
        deps="$(sed -e 's/^[^:]*://' -e 's/\\$//' "$obj.d")"
        for dep in $deps; do [[ "$dep" -nt "$obj" ]] && newer=1 && break; done
        if [[ $newer == 0 && "$(cat "$flags_file" 2>/dev/null)" == "$* ${CXXFLAGS[*]} ${EXTRA[*]}" ]]; then
            return 0
        fi
    fi
    echo "   compiling $src -> $(basename "$obj")"
    # .cu sources are C++ here (-x c++).
    "$CXX" -x c++ "${CXXFLAGS[@]}" "${EXTRA[@]}" "$@" -MMD -MF "$obj.d" -c "$src" -o "$obj" || {
        rm -f "$obj"  # (a stale object must not pass for this source)
        return 1
    }
    echo "$* ${CXXFLAGS[*]} ${EXTRA[*]}" > "$obj.flags"
}
export -f compile
export CXX OUT
export CXXFLAGS_STR="${CXXFLAGS[*]}" EXTRA_STR="${EXTRA[*]}"

t0=$(date +%s)
echo "== building the emulated CUDA libraries in $OUT ($JOBS jobs)"
# Arrays do not cross into xargs' shells: pass them as strings and split them there.
plan | xargs -P "$JOBS" -L 1 bash -c \
    'read -ra CXXFLAGS <<< "$CXXFLAGS_STR"; read -ra EXTRA <<< "$EXTRA_STR"; compile "$@"' _
for variant in "${VARIANTS[@]}"; do
    objs=("$OUT"/obj/shared.*.o "$OUT"/obj/"$variant".*.o)
    "$CXX" -shared "${EXTRA[@]}" "${objs[@]}" -o "$OUT/libroiops_$variant.so" -L"$TORCH_LIB" -lc10 -ltorch_cpu \
        -ltorch -Wl,-rpath,"$TORCH_LIB"
done
echo "   built in $(( $(date +%s) - t0 )) s: ${VARIANTS[*]} in $OUT"
