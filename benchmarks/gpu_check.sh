#!/usr/bin/env bash
# GPU check (issue 17): on a fresh GPU machine with only this repository, run the CUDA tests and the CUDA
# load benchmark; results (JSON + Markdown + PNG, and the logs) go to $OUT (default benchmarks/results/cuda).
#   benchmarks/gpu_check.sh            on a GPU machine (about 10 GB checkpoint; well inside 8 minutes on an H100)
#   benchmarks/gpu_check.sh --dry-run  on a CPU machine: every step but the device calls (CI runs this)
# Python packages: the machine's python3 must have torch with CUDA; anything else missing (e.g. jsonschema) is
# installed from wheels carried in .whl/ (pip download them on a connected machine), never from the network.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dry=()
[ "${1:-}" = "--dry-run" ] && dry=(--dry-run)
export OUT=${OUT:-$repo/benchmarks/results/cuda}
mkdir -p "$OUT"
py=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ckpt-site .whl/*.whl
  export PYTHONPATH=/tmp/ckpt-site:$repo
else
  export PYTHONPATH=$repo
fi
export PYTHONUNBUFFERED=1
"$py" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "numpy", "safetensors", "jsonschema", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry their wheels in .whl/)")
import torch, convert
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, ckpt-convert from {convert.__file__}")
PY
echo "== CUDA tests"
set +e
# every test that needs CUDA (skipped on CPU machines); -rs lists the skips so a dry run shows them
"$py" -m pytest -q -rs -p no:cacheprovider -k "cuda" tests/ 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e
echo "== CUDA load benchmark"
"$py" -m benchmarks.cuda "${dry[@]}" --out "$OUT" 2>&1 | tee "$OUT/benchmark.log"
[ "$tests_rc" = 0 ] || { echo "CUDA tests failed (exit $tests_rc): see $OUT/cuda_tests.log"; exit "$tests_rc"; }
echo "gpu_check: done; results in $OUT"
