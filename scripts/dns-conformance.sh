#!/usr/bin/env bash
# Compare our authoritative DNS answers with knot's on the same static zone
# (gslb/tests/conformance.rs): installs knot if missing, then runs the test,
# which fails on any difference not listed in docs/dns.md. Without knotd the
# test skips, so plain `cargo test` stays green on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || bash scripts/install-peers.sh
cargo test -j "${JOBS:-1}" -p gslb --test conformance -- --nocapture
