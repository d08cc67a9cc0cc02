#!/usr/bin/env bash
# CI smoke test of the benchmark suite (a few seconds): asv imports and checks every benchmark,
# then runs a small NumPy subset once, saving nothing. A failing benchmark fails the script
# (asv run exits 2); backends without a GPU or not installed are skipped, not failures.
#
#   bash asv_bench/ci_quick.sh                 # from anywhere
#   CI_COMPARE=1 bash asv_bench/ci_quick.sh    # also the comparison runner's smoke test (< 1 min)
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v asv >/dev/null 2>&1; then
    echo "asv is not installed: pip install asv" >&2
    exit 1
fi
# asv run needs a machine description; write the default one if there is none yet.
[ -f "${ASV_MACHINE_FILE:-$HOME/.asv-machine.json}" ] || asv machine --yes >/dev/null

asv check --python=same
asv run --python=same --quick --dry-run --show-stderr \
    --bench "Kernels\.time_(dense_push|tanh_push_curvature|contract)\('numpy', 32\)" \
    --bench "InputHessian\.time_derivatives\('numpy', 'narrow'" \
    --bench "ParameterHessian\.time_param_hessian\('numpy', 'narrow', '0.weight'\)"

if [ "${CI_COMPARE:-0}" = "1" ]; then
    python compare.py --quick
fi
