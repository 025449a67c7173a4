#!/usr/bin/env bash
# Install the peer servers and load generators the benchmarks in benches/ run
# beside ours (Debian packages; versions measured are in docs/benchmarks.md).
# The tests need none of them: the DNS conformance test
# (scripts/dns-conformance.sh) compares against knotd when it is installed
# and skips otherwise.
set -euo pipefail
# knot (knotd) and knot-dnsutils (kdig): the reference authoritative server;
# gdnsd: the GSLB speed anchor; dnsperf: the DNS load generator;
# keepalived: the VRRP failover anchor (benches/ha-keepalived.sh), tcpdump to
# count the gratuitous ARPs its client sees.
pkgs=(haproxy nginx-light wrk nghttp2-client bc knot knot-dnsutils gdnsd dnsperf keepalived tcpdump)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
echo "peers installed: ${pkgs[*]}"
