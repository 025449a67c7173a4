#!/usr/bin/env bash
# The chaos seed runner, built for the simulation (--cfg madsim, target/sim).
#   ./scripts/chaos.sh run --seeds 500        many seeds on all cores, report in target/chaos/
#   ./scripts/chaos.sh replay SEED            one seed again, full trace on stderr
# Set CHAOS_PROFILE=debug for a faster build and a slower run (CI's smoke uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${CHAOS_PROFILE:-release}
flag=(); [ "$profile" = release ] && flag=(--release)
RUSTFLAGS="--cfg madsim" cargo build -q -p chaos --bin chaos "${flag[@]}" --locked --target-dir target/sim
exec "target/sim/$profile/chaos" "$@"
