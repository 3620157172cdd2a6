#!/usr/bin/env bash
# CI fuzz step: every fuzz target, plain random mutation of its seeds, seeded and bounded in time.
#   tests/fuzz/run_ci.sh                 # 90 s per target (4.5 minutes in all)
#   FUZZ_SECONDS=30 FUZZ_SEED=7 tests/fuzz/run_ci.sh
# The inputs tried depend only on the seed (how many depends on the machine). A failure prints the
# exception and saves the input as $TMPDIR/ckpt-fuzz-crash-<sha1>; replay it with
#   python -m tests.fuzz.fuzz_pickle_reader $TMPDIR/ckpt-fuzz-crash-<sha1>
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-90}"
seed="${FUZZ_SEED:-1}"
python="${PYTHON:-python}"
status=0
for target in fuzz_pickle_reader fuzz_load_path fuzz_differential; do
    echo "fuzz: $target for ${seconds}s (seed $seed)"
    # the outer timeout is a backstop: a hang inside one input is caught by the per-input alarm first
    if ! timeout --kill-after=30 "$((seconds + 300))" \
            "$python" -m "tests.fuzz.$target" --plain --seconds "$seconds" --seed "$seed"; then
        echo "fuzz: $target FAILED" >&2
        status=1
    fi
done
exit "$status"
