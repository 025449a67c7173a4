#!/usr/bin/env bash
# The project's one test command (CI runs exactly this, via .ci/run).
#   1. formatting and clippy, both worlds
#   2. the normal tests (unit, property and end-to-end on loopback)
#   3. the simulation tests, built with --cfg madsim in their own target dir
#   4. the Controller quorum scenarios (leader crash and isolation, all-node
#      restart, live growth, linearizability under faults) over many seeds,
#      the GSLB site-failure scenario, the legacy active/standby pair and
#      the elastic HA (N+M, active/active) scenarios over many seeds
#   5. the determinism check: a few seeds run twice, traces must match
#   6. a chaos smoke: a few dozen seeds of the fault scenario, each run twice
# Needs only the Rust toolchain (cargo, rustfmt, clippy); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_TARGET=target/sim
# No incremental caches: a one-shot build does not reuse them, and they
# doubled the disk the two worlds take (CI ran out of space on it).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
SIM_PACKAGES=(-p sim -p chaos)
DETERMINISM_SEEDS=${DETERMINISM_SEEDS:-"1 2 3"}
CHAOS_SMOKE_SEEDS=${CHAOS_SMOKE_SEEDS:-32}
QUORUM_SEEDS=${QUORUM_SEEDS:-300}
GSLB_SEEDS=${GSLB_SEEDS:-50}
HA_SEEDS=${HA_SEEDS:-30}
ELASTIC_SEEDS=${ELASTIC_SEEDS:-30}

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "format"
cargo fmt --all -- --check

step "clippy (real world)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (real world)"
cargo test --workspace --locked

step "clippy (simulation world)"
RUSTFLAGS="--cfg madsim" cargo clippy "${SIM_PACKAGES[@]}" --all-targets --locked --target-dir "$SIM_TARGET" -- -D warnings

# One fixed seed, so that CI's verdict replays; the steps below sweep
# seed ranges. SIM_TEST_SEED=<n> tries another.
step "tests (simulation world, seed ${SIM_TEST_SEED:=4242})"
MADSIM_TEST_SEED=$SIM_TEST_SEED RUSTFLAGS="--cfg madsim" cargo test "${SIM_PACKAGES[@]}" --locked --target-dir "$SIM_TARGET"

step "controller quorum scenarios ($QUORUM_SEEDS seeds each, from seed 1)"
MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=$QUORUM_SEEDS RUSTFLAGS="--cfg madsim" \
  cargo test -p chaos --locked --target-dir "$SIM_TARGET" --test quorum -q

step "GSLB site failures ($GSLB_SEEDS seeds of 120 s, from seed 1)"
MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=$GSLB_SEEDS RUSTFLAGS="--cfg madsim" \
  cargo test -p chaos --locked --target-dir "$SIM_TARGET" --test gslb -q

step "legacy active/standby scenarios ($HA_SEEDS seeds each, from seed 1)"
MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=$HA_SEEDS RUSTFLAGS="--cfg madsim" \
  cargo test -p chaos --locked --target-dir "$SIM_TARGET" --test ha -q

step "elastic HA scenarios ($ELASTIC_SEEDS seeds each, from seed 1)"
MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=$ELASTIC_SEEDS RUSTFLAGS="--cfg madsim" \
  cargo test -p chaos --locked --target-dir "$SIM_TARGET" --test elastic -q

step "determinism check (seeds: $DETERMINISM_SEEDS)"
for seed in $DETERMINISM_SEEDS; do
  echo "seed $seed"
  MADSIM_TEST_SEED=$seed MADSIM_TEST_CHECK_DETERMINISM=1 RUSTFLAGS="--cfg madsim" \
    cargo test -p chaos --locked --target-dir "$SIM_TARGET" --test slice --test quorum --test gslb --test ha --test elastic -q
done

step "chaos smoke ($CHAOS_SMOKE_SEEDS seeds, each run twice)"
CHAOS_PROFILE=debug ./scripts/chaos.sh run --seeds "$CHAOS_SMOKE_SEEDS" --check-determinism --report target/chaos-smoke

step "all green in $((SECONDS - started)) s"
