#!/usr/bin/env bash
# Install the peer servers and load generators the benchmarks in benches/ run
# beside ours (Debian packages; versions measured are in docs/benchmarks.md).
# The tests need none of them.
set -euo pipefail
pkgs=(haproxy nginx-light wrk nghttp2-client bc)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
echo "peers installed: ${pkgs[*]}"
