#!/usr/bin/env bash
# hessarray on a GPU, in one go (about 6-8 minutes; installs nothing, needs no network):
#   1. versions (Python, NumPy, CuPy, torch, JAX, CUDA) and the GPU's name;
#   2. the test suite on the GPU backends only (pytest -k "cupy or cuda");
#   3. the asv benchmarks on the GPU backends (asv run --quick when asv is installed, else timed
#      by asv_bench/gpu_compare.py without asv);
#   4. hessarray (CuPy, torch CUDA, JAX jit) against JAX jit(vmap(hessian)) and torch.func, and
#      against the cuBLAS GEMM rate (asv_bench/gpu_compare.py compare);
#   5. the tables into docs/benchmarks.md (between <!-- gpu-bench:begin/end -->), and copies of
#      every output into $OUT when OUT is set.
# Without a usable GPU (none, no driver, CUDA_VISIBLE_DEVICES="") it says so and exits 0.
#
#   bash asv_bench/gpu_check.sh                  # everything, from anywhere
#   bash asv_bench/gpu_check.sh tests compare    # some parts (tests, asv, compare); report always runs
#
# Environment: PYTHON (default python3), GPU_CHECK_DIR (outputs; default a new folder in /tmp),
# GPU_CHECK_TESTS_S / GPU_CHECK_ASV_S / GPU_CHECK_COMPARE_S (wall-clock caps of the parts, s),
# GPU_CHECK_DOCS (the markdown file the report goes into; default docs/benchmarks.md).
# Set-up beforehand, and the goals: asv_bench/README.md, "GPU".
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# JAX would otherwise take 75 % of the GPU's memory at start, leaving little to CuPy and torch.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
WORK=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK"
PARTS=${*:-tests asv compare}
STATUS=0

say() { echo "gpu_check: $*" | tee -a "$WORK/gpu_check.log"; }

copy_out() {  # at most 8 files come back from $OUT: keep to these
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        for f in gpu_check.log versions.md tests.log asv.md compare.md compare.json gpu_section.md env.json; do
            [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"
        done
    fi
}

say "outputs in $WORK; parts: $PARTS"
# 1. Versions and GPU detection. First without Python: no NVIDIA device node and no nvidia-smi,
# or CUDA_VISIBLE_DEVICES empty / -1, means no GPU (a second). Else gpu_compare.py asks CuPy,
# torch and JAX (exit status 3: none of them has a usable GPU). GPU_CHECK_FULL_DETECT=1 always
# asks them.
no_gpu_hint=""
if [ "${CUDA_VISIBLE_DEVICES-unset}" = "" ] || [ "${CUDA_VISIBLE_DEVICES-unset}" = "-1" ]; then
    no_gpu_hint="CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES}' hides every GPU"
elif ! ls /dev/nvidia[0-9]* >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
    no_gpu_hint="no /dev/nvidia* device and no nvidia-smi"
fi
if [ -n "$no_gpu_hint" ] && [ "${GPU_CHECK_FULL_DETECT:-0}" != 1 ]; then
    "$PY" -c "import platform, numpy; print('  python', platform.python_version(), '| numpy', numpy.__version__)" \
        2>&1 | tee -a "$WORK/gpu_check.log"
    say "$no_gpu_hint"
    rc=3
else
    "$PY" asv_bench/gpu_compare.py detect --work "$WORK" 2>&1 | tee -a "$WORK/gpu_check.log"
    rc=${PIPESTATUS[0]}
fi
if [ "$rc" = 3 ]; then
    say "no GPU here (CuPy, torch and JAX see none): the GPU tests, benchmarks and comparison are skipped"
    copy_out
    exit 0
elif [ "$rc" != 0 ]; then
    say "detection failed (exit $rc): see above"
    copy_out
    exit "$rc"
fi

run_part() {  # name, cap in seconds, command...
    local name=$1 cap=$2
    shift 2
    say "--- $name (at most ${cap}s)"
    local t0=$SECONDS
    timeout -k 15 "$cap" "$@" 2>&1 | tee -a "$WORK/$name.log" >>"$WORK/gpu_check.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "$name stopped at its ${cap}s cap (what it measured so far is kept)"
        echo "gpu_check: stopped at the ${cap}s cap" >>"$WORK/$name.log"
    fi
    say "$name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" = 0 ] || STATUS=1
}

# 2. Tests of the GPU backends. Their ids hold the backend: [cupy-...], [torch:cuda-...],
# [jax:cuda-...]. tests/test_gpu_check.py runs this script: left out (no recursion).
if [[ " $PARTS " == *" tests "* ]]; then
    # One line per test (-v), so that a run stopped at its cap still shows what passed; 4
    # processes with pytest-xdist and at most 120 s per test with pytest-timeout, where installed.
    EXTRA=()
    # (Without pytest-xdist, pyproject's addopts would pass an unknown -n: replace them.)
    if "$PY" -c "import xdist" >/dev/null 2>&1; then EXTRA+=(-n 4); else EXTRA+=(-o "addopts=-ra"); fi
    "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && EXTRA+=(--timeout 120)
    run_part tests "${GPU_CHECK_TESTS_S:-180}" "$PY" -m pytest tests -v -rfE -p no:cacheprovider \
        -k "cupy or cuda" --ignore=tests/test_gpu_check.py ${EXTRA[@]+"${EXTRA[@]}"}
    grep -E "(passed|failed|error|skipped).* in [0-9.]+s" "$WORK/tests.log" | tail -1 | sed 's/^/gpu_check: tests: /'
fi

# 3. asv benchmarks of the GPU backends.
if [[ " $PARTS " == *" asv "* ]]; then
    if command -v asv >/dev/null 2>&1 && [ "${GPU_CHECK_NO_ASV:-0}" != 1 ]; then
        [ -f "${ASV_MACHINE_FILE:-$HOME/.asv-machine.json}" ] || (cd asv_bench && asv machine --yes >/dev/null)
        run_part asv "${GPU_CHECK_ASV_S:-75}" bash -c "cd asv_bench && asv run --python=same --quick \
            --show-stderr --bench \"\\('(cupy|torch:cuda|jax:cuda)'\""
        { echo "asv run --quick (one call each); the end of asv's output:"; echo; echo '```'
          tail -n 300 "$WORK/asv.log"; echo '```'; } >"$WORK/asv.md"
    else
        run_part asv "${GPU_CHECK_ASV_S:-75}" "$PY" asv_bench/gpu_compare.py asv --work "$WORK" --budget 60
    fi
fi

# 4. hessarray against JAX and torch.func, and the GEMM rate.
if [[ " $PARTS " == *" compare "* ]]; then
    run_part compare "${GPU_CHECK_COMPARE_S:-180}" "$PY" asv_bench/gpu_compare.py compare --work "$WORK" --budget 150
fi

# 5. The report: docs/benchmarks.md here, and everything into $OUT.
"$PY" asv_bench/gpu_compare.py report --work "$WORK" --docs "${GPU_CHECK_DOCS:-docs/benchmarks.md}" 2>&1 |
    tee -a "$WORK/gpu_check.log"
say "done in ${SECONDS}s, exit $STATUS; outputs in $WORK"
copy_out
exit "$STATUS"
