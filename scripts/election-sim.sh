#!/usr/bin/env bash
# Controller leader-loss timing in the simulation, over many seeds.
#   ./scripts/election-sim.sh [SEEDS]      (default 200)
#   SIM_PROFILE=debug ./scripts/election-sim.sh 200   (reuse the debug sim build:
#   simulated times are the same in both profiles, only the wall time differs)
# Runs the quorum scenarios (chaos/tests/quorum.rs) for SEEDS seeds each and
# prints, for leader crash, leader isolation and leader crash with skewed
# clocks, the simulated time from the
# loss to the first write a surviving node commits: count, p50, p99, max.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-200}
out=$(MADSIM_TEST_SEED=${MADSIM_TEST_SEED:-1} MADSIM_TEST_NUM=$seeds RUSTFLAGS="--cfg madsim" \
  cargo test -q -p chaos --locked $([ "${SIM_PROFILE:-release}" = release ] && echo --release) \
    --target-dir target/sim --test quorum -- --nocapture --test-threads 1 2>&1) || {
  echo "$out" | tail -40; exit 1; }
lines=$(echo "$out" | grep -o 'ELECTION_MS [a-z]* [0-9]*')
for kind in $(echo "$lines" | awk '{print $2}' | sort -u); do
  echo "$lines" | awk -v k="$kind" '$2 == k {print $3}' | sort -n | awk -v k="$kind" '
    { a[NR] = $1 }
    END {
      p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1]
      printf "leader %-8s seeds %4d   p50 %5d ms   p99 %5d ms   max %5d ms\n", k, NR, p50, p99, a[NR]
    }'
done
ok=$(echo "$out" | grep -c '^LINCHECK ok' || true)
inconclusive=$(echo "$out" | grep -c '^LINCHECK inconclusive' || true)
echo "linearizability: $ok seeds checked linearizable, $inconclusive inconclusive (checker step limit), 0 failed"
