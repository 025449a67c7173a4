#!/usr/bin/env bash
# Failover in the simulation, over many seeds: legacy active/standby pairs
# (chaos/tests/ha.rs) and the elastic modes (chaos/tests/elastic.rs).
#   ./scripts/ha-sim.sh [SEEDS]      (default 200)
#   SIM_PROFILE=debug ./scripts/ha-sim.sh 200   (reuse the debug sim build:
#   simulated times are the same in both profiles, only the wall time differs)
# Runs the pair scenarios (chaos/tests/ha.rs) for SEEDS seeds each: the
# active killed at a seeded time with the `fast` and the `default` profile,
# cuts between the pair and to the Controller, an isolated active. Prints
# per profile the simulated time from the kill to the standby's first answer
# and the client-visible outage (last answer before the kill to the first
# after it; requests every 20 ms, 200 ms timeout): count, p50, p99, max. Any
# seed where two SEs answered in turn, or the VIP did not move in time, fails
# the run with its replay command (the test's own assertion).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-200}
out=$(MADSIM_TEST_SEED=${MADSIM_TEST_SEED:-1} MADSIM_TEST_NUM=$seeds RUSTFLAGS="--cfg madsim" \
  cargo test -q -p chaos --locked $([ "${SIM_PROFILE:-release}" = release ] && echo --release) \
    --target-dir target/sim --test ha -- --nocapture --test-threads 1 2>&1) || {
  echo "$out" | grep -v '^cut:' | tail -40; exit 1; }
lines=$(echo "$out" | grep -o 'failover profile=[a-z]* kill_to_serve_ms=[0-9]* outage_ms=[0-9]*' | tr '=' ' ')
for profile in fast default; do
  for field in 5 7; do
    name=$([ $field = 5 ] && echo "kill to standby serving" || echo "client-visible outage  ")
    echo "$lines" | awk -v p="$profile" -v f=$field '$3 == p {print $f}' | sort -n | awk -v p="$profile" -v n="$name" '
      { a[NR] = $1 }
      END {
        if (NR == 0) { printf "%-8s %s: no seeds\n", p, n; exit }
        p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1]
        printf "%-8s %s  seeds %4d   p50 %5d ms   p99 %5d ms   max %5d ms\n", p, n, NR, p50, p99, a[NR]
      }'
  done
done
echo "every seed: one hand-over seen by the client, never two SEs answering in turn;"
echo "cuts between the pair or to the Controller moved nothing; an isolated active stopped before the standby started"
echo

# Elastic modes: kill (or cut) to the first answer from the new SE, and the
# samples (every 50 ms) where two SEs held one VIP.
out=$(MADSIM_TEST_SEED=${MADSIM_TEST_SEED:-1} MADSIM_TEST_NUM=$seeds RUSTFLAGS="--cfg madsim" \
  cargo test -q -p chaos --locked $([ "${SIM_PROFILE:-release}" = release ] && echo --release) \
    --target-dir target/sim --test elastic -- --nocapture --test-threads 1 2>&1) || {
  echo "$out" | tail -40; exit 1; }
# p50 / p99 / max of the numbers on stdin, named $1 (no line: "no seeds").
dist() {
  sort -n | awk -v m="$1" '
    { a[NR] = $1 }
    END {
      if (NR == 0) { printf "%-24s no seeds\n", m; exit }
      p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1]
      printf "%-24s seeds %4d   p50 %5d ms   p99 %5d ms   max %5d ms\n", m, NR, p50, p99, a[NR]
    }'
}
for mode in n_plus_m_kill active_active_kill n_plus_m_garp_loss auto_heal auto_heal_buffer; do
  { echo "$out" | grep -o "failover mode=$mode ms=[0-9]*" || true; } | sed 's/.*ms=//' | dist "$mode"
done
# Cut from everything but its clients: the SE fences itself, then the VS moves.
for field in fenced_ms moved_ms; do
  { echo "$out" | grep -o "failover mode=n_plus_m_isolated fenced_ms=[0-9]* moved_ms=[0-9]*" || true; } |
    grep -o "$field=[0-9]*" | sed 's/.*=//' | dist "n_plus_m_isolated $field"
done
# Cut from the Controller only (partitioned): nothing may move or fail.
{ echo "$out" | grep -E "failover mode=(n_plus_m_cut|active_active_cut .*isolated=false)" || true; } |
  grep -o "failed=[0-9]*" | sed 's/.*=//' | awk '
    { n++; s += $1 }
    END { printf "%-24s runs %4d   failed requests in all %d\n", "cut from the Controller", n, s }'
{ echo "$out" | grep -o "dual_samples=[0-9]*" || true; } | sed 's/.*=//' | sort -n | awk '
  { n++; s += $1; if ($1 > m) m = $1 }
  END { printf "two holders of one VIP (cut, isolated, flapping): %d runs, %d samples of 50 ms in all, at most %d in one run\n", n, s, m }'
echo "(n_plus_m_kill: the buffer SE serves; active_active_kill: the secondary; auto_heal: a new SE;"
echo " auto_heal_buffer: until the buffer is free again; isolated: the SE cut from the Controller and"
echo " its peers lets its VIPs go (fenced), then the leader moves them; a partitioned SE keeps them)"
