//! Traffic counters of one virtual service on this SE: relaxed atomics that
//! every connection task updates, read into a [`VsStats`] for reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fabric::rt;
use fabric::stats::{AtomicHistogram, VsStats};

/// Counters of one virtual service, since this SE started serving it.
#[derive(Debug, Default)]
pub struct VsCounters {
    connections: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    own_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: AtomicU64,
    latency: AtomicHistogram,
}

/// Keeps a connection (or UDP flow) counted open until dropped.
#[derive(Debug)]
pub struct Open(std::sync::Arc<VsCounters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl VsCounters {
    /// A new connection or UDP flow, counted open while the guard lives.
    pub fn open(self: &std::sync::Arc<Self>) -> Open {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(self.clone())
    }

    /// A request head arrived.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A response head with `status` went out for a request that arrived
    /// at `since`; `own`: the SE made it (an error of ours).
    pub fn response(&self, status: u16, since: Instant, own: bool) {
        self.response_at(status, since, rt::now(), own);
    }

    /// [`VsCounters::response`] with the time it went out, read already.
    pub fn response_at(&self, status: u16, since: Instant, now: Instant, own: bool) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        if own {
            self.own_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(now.saturating_duration_since(since));
    }

    /// Bytes relayed (L4): from the client, to the client.
    pub fn bytes(&self, from_client: u64, to_client: u64) {
        self.bytes_in.fetch_add(from_client, Ordering::Relaxed);
        self.bytes_out.fetch_add(to_client, Ordering::Relaxed);
    }

    /// A UDP datagram dropped.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, as the report for virtual service `name`.
    pub fn snapshot(&self, name: &str) -> VsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsStats {
            name: name.to_string(),
            connections: get(&self.connections),
            open_connections: get(&self.open),
            requests: get(&self.requests),
            responses: std::array::from_fn(|i| get(&self.responses[i])),
            own_errors: get(&self.own_errors),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            dropped: get(&self.dropped),
            latency: self.latency.snapshot(),
        }
    }
}
