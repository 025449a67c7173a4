//! Traffic statistics of virtual services and their servers: what SEs count,
//! what they send the Controller, and how the Controller adds them up.
//!
//! Counters are cumulative since the SE started (its `incarnation`); the
//! Controller keeps each SE's latest report and sums over SEs. Latency is a
//! histogram with fixed bucket bounds (1-2-5 steps from 50 µs to 60 s, as
//! Prometheus' defaults but finer), so reports from many SEs merge exactly
//! and quantiles are read off the merged counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in microseconds; a last bucket
/// holds everything slower.
pub const BUCKET_BOUNDS_US: [u64; 20] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 30_000_000, 60_000_000,
];

/// Number of buckets: one per bound and one above the last.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

fn bucket_of(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    BUCKET_BOUNDS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(BUCKET_BOUNDS_US.len())
}

/// A latency histogram as reported: a count per bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket, [`BUCKETS`] long (shorter: the rest are zero).
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Observations in it.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `other`'s counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The `q` quantile (0..=1), interpolated inside its bucket; `None`
    /// when empty. The last bucket reads as its lower bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate().take(BUCKETS) {
            if n == 0 {
                continue;
            }
            if seen + n >= rank {
                let low = if i == 0 { 0 } else { BUCKET_BOUNDS_US[i - 1] };
                let Some(&high) = BUCKET_BOUNDS_US.get(i) else {
                    return Some(Duration::from_micros(low));
                };
                let within = (rank - seen) as f64 / n as f64;
                let us = low as f64 + within * (high - low) as f64;
                return Some(Duration::from_micros(us as u64));
            }
            seen += n;
        }
        None
    }
}

/// A histogram that many tasks record into at once.
#[derive(Debug)]
pub struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl AtomicHistogram {
    /// Count one observation.
    pub fn record(&self, d: Duration) {
        self.counts[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// One virtual service's traffic through one SE (or summed over SEs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsStats {
    /// The virtual service.
    pub name: String,
    /// Client connections accepted (TCP) or UDP flows opened.
    pub connections: u64,
    /// Client connections open (or UDP flows kept) now.
    pub open_connections: u64,
    /// HTTP requests received.
    pub requests: u64,
    /// Responses sent, by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// Of the 4xx and 5xx, those the SE made itself (bad requests, no or
    /// failing servers, timeouts).
    pub own_errors: u64,
    /// Bytes clients sent (TCP and UDP).
    pub bytes_in: u64,
    /// Bytes sent to clients (TCP and UDP).
    pub bytes_out: u64,
    /// UDP datagrams dropped (flow table full, no server, too large).
    pub dropped: u64,
    /// Time from a request's head to its response head going out (HTTP).
    pub latency: Histogram,
}

impl VsStats {
    /// Add `other` (the same virtual service on another SE) to this one.
    pub fn merge(&mut self, other: &VsStats) {
        self.connections += other.connections;
        self.open_connections += other.open_connections;
        self.requests += other.requests;
        for (a, b) in self.responses.iter_mut().zip(other.responses) {
            *a += b;
        }
        self.own_errors += other.own_errors;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.dropped += other.dropped;
        self.latency.merge(&other.latency);
    }
}

/// One server's traffic through one SE (or summed over SEs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// The server.
    pub addr: SocketAddr,
    /// Whether the SE sees it up (summed: up on every SE that reports it).
    pub up: bool,
    /// Whether outlier detection has it ejected now (summed: on any SE).
    #[serde(default)]
    pub ejected: bool,
    /// Requests (HTTP), connections (TCP) or flows (UDP) sent to it.
    pub requests: u64,
    /// Failures counted against it (refused, reset, timed out, bad response).
    pub failures: u64,
    /// In flight now.
    pub in_flight: u64,
    /// Time from sending a request to its response head (HTTP), or to the
    /// connection opening (TCP).
    pub latency: Histogram,
}

/// The servers of one pool, as one SE sees them (or summed over SEs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The pool.
    pub name: String,
    /// Its servers.
    pub servers: Vec<ServerStats>,
}

impl PoolStats {
    /// Add `other` (the same pool on another SE) to this one.
    pub fn merge(&mut self, other: &PoolStats) {
        for s in &other.servers {
            match self.servers.iter_mut().find(|m| m.addr == s.addr) {
                Some(mine) => {
                    mine.up &= s.up;
                    mine.ejected |= s.ejected;
                    mine.requests += s.requests;
                    mine.failures += s.failures;
                    mine.in_flight += s.in_flight;
                    mine.latency.merge(&s.latency);
                }
                None => self.servers.push(s.clone()),
            }
        }
    }
}

/// Most virtual services and pools one report carries (the rest are left out).
pub const MAX_REPORTED: usize = 1024;

/// What one SE reports: counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeStats {
    /// CPU use of the SE since its last report, percent of the cores it
    /// may use (None: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// Per virtual service.
    pub virtual_services: Vec<VsStats>,
    /// Per pool, per server.
    pub pools: Vec<PoolStats>,
}

impl SeStats {
    /// Add another SE's report to this sum, by virtual service and pool name.
    pub fn merge(&mut self, other: &SeStats) {
        for v in &other.virtual_services {
            match self.virtual_services.iter_mut().find(|m| m.name == v.name) {
                Some(mine) => mine.merge(v),
                None => self.virtual_services.push(v.clone()),
            }
        }
        for p in &other.pools {
            match self.pools.iter_mut().find(|m| m.name == p.name) {
                Some(mine) => mine.merge(p),
                None => self.pools.push(p.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_they_fall_in() {
        let h = AtomicHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_micros(700)); // 500..1000 µs
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(15)); // 10..20 ms
        }
        let s = h.snapshot();
        assert_eq!(s.total(), 100);
        let p50 = s.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_micros(500) && p50 <= Duration::from_millis(1),
            "{p50:?}"
        );
        let p99 = s.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_millis(10) && p99 <= Duration::from_millis(20),
            "{p99:?}"
        );
        assert_eq!(Histogram::default().quantile(0.5), None);
        let slow = AtomicHistogram::default();
        slow.record(Duration::from_secs(3600));
        assert_eq!(slow.snapshot().quantile(1.0), Some(Duration::from_secs(60)));
    }

    #[test]
    fn reports_merge_over_ses() {
        let server = |n, up| ServerStats {
            addr: SocketAddr::from(([10, 0, 0, n], 80)),
            up,
            ejected: !up,
            requests: 5,
            failures: 1,
            in_flight: 0,
            latency: Histogram { counts: vec![0, 5] },
        };
        let mut a = SeStats {
            cpu_percent: None,
            virtual_services: vec![VsStats {
                name: "app".into(),
                requests: 10,
                responses: [0, 9, 0, 0, 1],
                latency: Histogram { counts: vec![1, 2] },
                ..VsStats::default()
            }],
            pools: vec![PoolStats {
                name: "web".into(),
                servers: vec![server(1, true)],
            }],
        };
        let mut b = a.clone();
        b.virtual_services[0].latency = Histogram {
            counts: vec![0, 1, 3],
        };
        b.virtual_services.push(VsStats {
            name: "other".into(),
            ..VsStats::default()
        });
        b.pools[0].servers = vec![server(1, false), server(2, true)];
        a.merge(&b);
        let app = &a.virtual_services[0];
        assert_eq!((app.requests, app.responses), (20, [0, 18, 0, 0, 2]));
        assert_eq!(app.latency.counts, vec![1, 3, 3]);
        assert_eq!(a.virtual_services.len(), 2);
        let web = &a.pools[0].servers;
        assert_eq!(web.len(), 2);
        assert_eq!(
            (web[0].requests, web[0].failures, web[0].up, web[0].ejected),
            (10, 2, false, true)
        );
        assert_eq!(web[0].latency.counts, vec![0, 10]);
    }
}
