#!/usr/bin/env bash
# Builds roiops' compiled extension with AddressSanitizer + UndefinedBehaviorSanitizer into a separate
# folder and runs a focused set of tests against that build. The checkout's compiled libraries
# (roiops/*.so, the editable build) are neither used nor touched.
#
# Usage (from anywhere, with the project's virtualenv active or in .venv):
#   scripts/sanitize.sh                      # build (if sources changed) + run the default test subset
#   scripts/sanitize.sh tests/test_roi_pool.py -k grad    # run other tests / pytest arguments
# Environment:
#   ROIOPS_ASAN_DIR       where the build and the package copy go (default /tmp/roiops_asan)
#   ROIOPS_ASAN_REBUILD=1 force a clean rebuild
#   ROIOPS_FUZZ_EXAMPLES  hypothesis examples per property test (default here: 100)
#   MAX_JOBS              parallel compile jobs (torch's cpp_extension honours it)
#
# How it works:
#   1. ROIOPS_SANITIZE=1 python setup.py build_ext --build-lib $DIR/lib --build-temp $DIR/tmp
#      (setup.py then adds -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g).
#   2. $DIR/lib/roiops = a copy of the Python package + the sanitized libraries; PYTHONPATH points there
#      (setuptools' editable finder comes after PYTHONPATH, so this copy is the one imported; the
#      script checks that).
#   3. python runs with LD_PRELOAD=libasan (the ASan runtime must be loaded before anything else;
#      libstdc++ is preloaded right after it so that ASan can intercept C++ exceptions),
#      ASAN_OPTIONS=detect_leaks=0 (CPython and torch keep memory until exit by design), and
#      UBSAN_OPTIONS=halt_on_error=1, so the first report of either sanitizer ends the run with a
#      stack trace and a non-zero exit status. ROIOPS_SANITIZED=1 tells the tests, which skip what
#      cannot work under ASan (resident-memory measurements: ASan's quarantine holds freed memory;
#      multi-GB allocations).
#
# The emulated CUDA library roiops_emu (scripts/build_emulated_cuda.sh) is built instrumented too,
# and the default subset includes tests/test_cuda.py, which runs the CUDA kernels on it.
# Measured on the 2-core development machine (others working beside): a clean build 1.5-4 min
# (later runs rebuild only what changed, seconds), the default test subset (~475 tests, 100
# hypothesis examples per property) ~30 s. Negative control: with the empty-map-axis fix of
# common/geometry.h reverted, UBSan stops the run ("applying non-zero offset to null pointer"), and
# with the NaN-sample fix reverted ASan does (SEGV). Not enabled: -fsanitize=float-cast-overflow
# (not part of GCC's "undefined"; it would flag a NaN/huge float cast to int directly).
# The exit status is pytest's, 134 for a sanitizer abort, 1 if a report file was written.
set -euo pipefail

ORIG_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${ROIOPS_ASAN_DIR:-/tmp/roiops_asan}"
cd "$ROOT"
if [[ -z "${VIRTUAL_ENV:-}" && -f "$ROOT/.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
fi

LIBASAN="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" ]]; then
    echo "sanitize.sh: libasan not found (gcc -print-file-name=libasan.so gave '$LIBASAN')" >&2
    exit 2
fi

# libstdc++ right after libasan: otherwise ASan's __cxa_throw interceptor finds no real __cxa_throw
# when it initializes, and the first C++ exception (any TORCH_CHECK) aborts with a CHECK failure.
LIBSTDCXX="$(gcc -print-file-name=libstdc++.so.6)"
PRELOAD="$LIBASAN $LIBSTDCXX"

t0=$(date +%s)
if [[ "${ROIOPS_ASAN_REBUILD:-0}" == "1" ]]; then
    rm -rf "$DIR"
fi
mkdir -p "$DIR/lib" "$DIR/tmp"
echo "== building the sanitized extension in $DIR (sources in $ROOT/csrc)"
# build_ext recompiles only what changed; the CPU kernels only (no CUDA: ASan and CUDA do not mix).
ROIOPS_SANITIZE=1 FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" \
    python setup.py -q build_ext --build-lib "$DIR/lib" --build-temp "$DIR/tmp" > "$DIR/build.log" 2>&1 || {
    tail -50 "$DIR/build.log"
    echo "sanitize.sh: build failed (full log: $DIR/build.log)" >&2
    exit 2
}
# The emulated CUDA libraries (the CUDA sources run on the CPU, see scripts/build_emulated_cuda.sh),
# instrumented too, so that tests/test_cuda.py runs the CUDA kernels under the sanitizers.
# Only the roiops_emu variant: it runs the same code paths as roiops_emu64 bar the index type, and
# halves this build (~1.5 min instead of ~3); tests/test_cuda.py skips the variant not built.
export ROIOPS_EMULATED_CUDA_DIR="$DIR/emulated_cuda"
ROIOPS_EMU_VARIANTS=emu ROIOPS_EMU_CXXFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g" \
    PYTHON="$(command -v python)" bash "$ROOT/scripts/build_emulated_cuda.sh" > "$DIR/build_emulated.log" 2>&1 || {
    tail -50 "$DIR/build_emulated.log"
    echo "sanitize.sh: emulated CUDA build failed (full log: $DIR/build_emulated.log)" >&2
    exit 2
}
rm -f "$ROIOPS_EMULATED_CUDA_DIR/libroiops_emu64.so"  # (left by an older run: it would be stale)
unset ROIOPS_REQUIRE_EMULATED_CUDA
t1=$(date +%s)
echo "   built in $((t1 - t0)) s"

# The package copy: Python sources from the checkout, the extension from the sanitized build.
SO="$(ls "$DIR"/lib/roiops/libroiops_ops*.so)"  # the op library: the kernels
mkdir -p "$DIR/pkg"
rm -rf "$DIR/pkg/roiops"
(cd "$ROOT" && find roiops -name '*.py' -print0 | xargs -0 -I{} install -D -m 644 {} "$DIR/pkg/{}")
cp "$SO" "$DIR"/lib/roiops/_C*.so "$DIR/pkg/roiops/"
SYMBOLS="$(nm -D "$SO")"  # (not piped into grep -q: with pipefail, nm's SIGPIPE would fail the test)
[[ "$SYMBOLS" == *__asan_report* && "$SYMBOLS" == *__ubsan_handle* ]] || {
    echo "sanitize.sh: $SO is not instrumented (does setup.py still honour ROIOPS_SANITIZE=1?)" >&2
    exit 2
}

export PYTHONPATH="$DIR/pkg${PYTHONPATH:+:$PYTHONPATH}"
export ROIOPS_SANITIZED=1
export ROIOPS_FUZZ_EXAMPLES="${ROIOPS_FUZZ_EXAMPLES:-100}"
# protect_shadow_gap=0: CUDA builds of torch map memory where ASan would otherwise reserve it.
# ASan reports also go to $DIR/reports/asan.<pid> (UBSan's to stderr: it ignores log_path here).
rm -rf "$DIR/reports"
mkdir -p "$DIR/reports"
export ASAN_OPTIONS="log_path=$DIR/reports/asan:detect_leaks=0:protect_shadow_gap=0:detect_odr_violation=0:alloc_dealloc_mismatch=0:abort_on_error=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="log_path=$DIR/reports/ubsan:print_stacktrace=1:halt_on_error=1:abort_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

# Run from the build folder: the checkout's roiops/ (with the uninstrumented libraries) must not be on
# sys.path (python puts the working directory first).
cd "$DIR"
LD_PRELOAD="$PRELOAD" python - <<'EOF'
import roiops, roiops._C as c
print("   using", c.__file__)
assert "/pkg/roiops/" in c.__file__, "the sanitized copy was not the one imported"
EOF

if [[ $# -gt 0 ]]; then
    # Test paths relative to where the script was called from (or to the checkout) become absolute.
    TESTS=()
    for a in "$@"; do
        p="${a%%::*}"
        if [[ "$a" != -* && "$a" != /* && -e "$ORIG_PWD/$p" ]]; then
            a="$ORIG_PWD/$a"
        elif [[ "$a" != -* && "$a" != /* && -e "$ROOT/$p" ]]; then
            a="$ROOT/$a"
        fi
        TESTS+=("$a")
    done
else
    TESTS=()
    for f in tests/test_properties.py tests/test_properties_values.py tests/test_hardening.py \
             tests/test_memory_bound.py tests/test_roi_align.py tests/test_roi_pool.py tests/test_hand_checked.py \
             tests/test_cuda.py; do
        [[ -f "$ROOT/$f" ]] && TESTS+=("$ROOT/$f")
    done
fi
echo "== pytest under ASan+UBSan: ${TESTS[*]}"
status=0
# --capture=sys: pytest captures Python's sys.stdout/stderr only, so sanitizer reports written to fd 2
# reach the terminal even when the process aborts.
LD_PRELOAD="$PRELOAD" python -m pytest -q -p no:cacheprovider --capture=sys --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
    "${TESTS[@]}" || status=$?
t2=$(date +%s)
if compgen -G "$DIR/reports/*" > /dev/null; then
    echo "== sanitizer reports:"
    cat "$DIR"/reports/*
    [[ $status -eq 0 ]] && status=1
fi
echo "== sanitizer run: build $((t1 - t0)) s, tests $((t2 - t1)) s, exit status $status"
exit $status
