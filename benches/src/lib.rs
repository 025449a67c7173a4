//! Benchmarks of the fabric against real peers (HAProxy, nginx, gdnsd, knot,
//! keepalived), run side by side on this host as `../shared/BENCHMARKS.md`
//! describes. Each benchmark is a command of its own, never part of CI; the
//! first arrive with the data-plane (issue 5) and GSLB DNS (issue 7) work.
