#!/usr/bin/env bash
# `make demo` end to end: cold (empty model cache, fresh results), warm (models, evaluations and masks cached,
# fresh results) and rerun (same results: every run skipped). Prints the three wall times and warm / cold.
#   bash benchmarks/demo.sh          (about 100 minutes on the 2-core reference CPU)
set -euo pipefail
work=$(mktemp -d)
export UNLEARN_BENCH_CACHE="$work/cache"
run() { local start; start=$(date +%s); make demo RESULTS="$work/$1" LEADERBOARD="$work/board-$1" >"$work/$1.log" 2>&1; echo $(( $(date +%s) - start )); }
cold=$(run cold); warm=$(run warm); rerun=$(run warm)
echo "make demo: cold ${cold} s, warm ${warm} s (warm/cold $(python3 -c "print(round(${warm}/${cold}, 2))")), rerun ${rerun} s"
echo "logs and leaderboards: $work"
