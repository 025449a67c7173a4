//! Benchmarks of the fabric against real peers (HAProxy, nginx, gdnsd, knot,
//! keepalived), run side by side on this host as `../shared/BENCHMARKS.md`
//! describes. Each benchmark is a command of its own, never part of CI:
//! `benches/http-proxy.sh` (HTTP/1.1 keep-alive beside HAProxy) so far;
//! results and method in `docs/benchmarks.md`.
