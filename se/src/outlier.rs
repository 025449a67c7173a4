//! Outlier detection: passive monitoring that takes a server which keeps
//! failing out of the rotation for a while, with Envoy's semantics.
//!
//! The core is pure: an [`OutlierMachine`] per server counts failures in a
//! row and keeps its ejection, with the time passed in; [`may_eject`] is the
//! pool-wide limit. [`PoolOutliers`] is the thin shared part of one pool (its
//! settings and who is ejected until when); [`crate::lb::ServerState`] feeds
//! the machine from the data plane and reports ejections and returns.
//!
//! - A **gateway failure** is a request refused, reset, timed out or answered
//!   with a malformed head, or a 502, 503 or 504 response; `consecutive_errors`
//!   of them in a row eject the server (Envoy's `consecutive_gateway_failure`).
//! - `consecutive_5xx` counts any 5xx response and the failures above
//!   (Envoy's `consecutive_5xx` without `split_external_local_origin_errors`).
//! - Any other outcome resets the matching count. Reaching a threshold resets
//!   both, ejected or not, so a server the pool-wide limit spared gets
//!   ejected after the next run of failures if there is room then.
//! - The n-th ejection in a row lasts n x `ejection_ms`, at most
//!   `max_ejection_ms`; n drops by one for every `ejection_ms` the server
//!   then goes without being ejected (Envoy drops it once per `interval`).
//! - At most `max_ejected_percent` of the pool's servers (rounded down) are
//!   ejected at once. Unlike Envoy, which ejects at least one server whatever
//!   the share, a share that rounds to zero ejects none: a pool of one is
//!   never emptied by outlier detection.
//! - Outcomes of requests that were already in flight while the server is
//!   ejected are ignored; counting starts afresh when it returns.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fabric::model::OutlierDetection;

/// What came of one request (or connection) to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked, and there is no status to judge (an L4 connection opened).
    Success,
    /// A response arrived with this status.
    Status(u16),
    /// No usable response: refused, reset, timed out or malformed (Envoy's
    /// locally originated errors).
    Failed,
}

impl Outcome {
    fn is_gateway_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Status(502..=504))
    }

    fn is_5xx(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Status(500..=599))
    }
}

/// Which threshold a server reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// This many gateway failures in a row (`consecutive_errors`).
    Errors(u32),
    /// This many 5xx in a row (`consecutive_5xx`).
    FiveXx(u32),
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trip::Errors(n) => write!(f, "{n} gateway failures in a row"),
            Trip::FiveXx(n) => write!(f, "{n} 5xx responses in a row"),
        }
    }
}

/// One server's outlier state: failures in a row, and its ejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierMachine {
    /// Gateway failures in a row.
    errors: u32,
    /// 5xx (and failures) in a row.
    fives: u32,
    /// Ejections in a row: the multiplier of the current (or last) one.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When the last ejection ended (the multiplier decays from there).
    returned_at: Option<Instant>,
}

impl OutlierMachine {
    /// Whether the server is ejected (until [`on_time`](Self::on_time) sees
    /// the ejection end).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// When the current ejection ends.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Whether a count is running (a success would have one to reset).
    pub fn has_streak(&self) -> bool {
        self.errors > 0 || self.fives > 0
    }

    /// Ejections in a row so far (the last one's multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// A request's outcome; `Some` when it made the server reach a threshold
    /// (the caller then ejects it with [`eject`](Self::eject) if the pool
    /// has room). Ignored while ejected.
    pub fn on_outcome(&mut self, outcome: Outcome, settings: &OutlierDetection) -> Option<Trip> {
        if self.is_ejected() {
            return None;
        }
        self.errors = if outcome.is_gateway_failure() {
            self.errors.saturating_add(1)
        } else {
            0
        };
        self.fives = if outcome.is_5xx() {
            self.fives.saturating_add(1)
        } else {
            0
        };
        let reached = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        let trip = if reached(self.errors, settings.consecutive_errors) {
            Some(Trip::Errors(self.errors))
        } else if reached(self.fives, settings.consecutive_5xx) {
            Some(Trip::FiveXx(self.fives))
        } else {
            None
        };
        if trip.is_some() {
            self.errors = 0;
            self.fives = 0;
        }
        trip
    }

    /// Eject the server at `now`; how long for.
    pub fn eject(&mut self, now: Instant, settings: &OutlierDetection) -> Duration {
        assert!(!self.is_ejected(), "ejecting an ejected server");
        if let Some(back) = self.returned_at {
            let behaved_ms = now.saturating_duration_since(back).as_millis();
            let steps = behaved_ms / u128::from(settings.ejection_ms.max(1));
            self.ejections = self
                .ejections
                .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        self.ejections = self.ejections.saturating_add(1);
        let length = settings
            .ejection()
            .saturating_mul(self.ejections)
            .min(settings.max_ejection());
        self.ejected_until = Some(now + length);
        self.errors = 0;
        self.fives = 0;
        length
    }

    /// Time is `now`: `true` if the ejection just ended.
    pub fn on_time(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                // From when it was due, not when someone looked: the decay
                // does not depend on traffic.
                self.returned_at = Some(until);
                true
            }
            _ => false,
        }
    }

    /// End an ejection early (outlier detection was turned off); `true` if
    /// there was one.
    pub fn end(&mut self, now: Instant) -> bool {
        let was = self.ejected_until.take().is_some();
        if was {
            self.returned_at = Some(now);
        }
        was
    }
}

/// Whether a pool of `servers` with `ejected` of them ejected may eject one
/// more without going over `max_percent` of its servers (rounded down).
pub fn may_eject(ejected: usize, servers: usize, max_percent: u32) -> bool {
    let max_percent = max_percent.min(100) as usize;
    (ejected + 1) * 100 <= servers.saturating_mul(max_percent)
}

/// One pool's outlier detection, shared by the states of its servers: the
/// settings, the pool's size and which servers are ejected until when.
#[derive(Debug)]
pub struct PoolOutliers {
    inner: Mutex<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    settings: OutlierDetection,
    servers: usize,
    ejected: BTreeMap<SocketAddr, Instant>,
}

impl PoolOutliers {
    /// Outlier detection with `settings` over a pool of `servers`.
    pub fn new(settings: OutlierDetection, servers: usize) -> Self {
        Self {
            inner: Mutex::new(PoolInner {
                settings,
                servers,
                ejected: BTreeMap::new(),
            }),
        }
    }

    /// New settings or pool size (a config change); ejections stay.
    pub fn set(&self, settings: OutlierDetection, servers: usize) {
        let mut inner = lock(&self.inner);
        inner.settings = settings;
        inner.servers = servers;
    }

    /// The settings now.
    pub fn settings(&self) -> OutlierDetection {
        lock(&self.inner).settings
    }

    /// Eject `server` (whose machine just tripped) at `now` if the pool has
    /// room; how long for.
    pub fn try_eject(
        &self,
        server: SocketAddr,
        machine: &mut OutlierMachine,
        now: Instant,
    ) -> Option<Duration> {
        let mut inner = lock(&self.inner);
        // Ejections whose time has passed no longer count, whether or not
        // their servers have been seen to return.
        inner.ejected.retain(|_, until| *until > now);
        let PoolInner {
            settings,
            servers,
            ejected,
        } = &mut *inner;
        if !may_eject(ejected.len(), *servers, settings.max_ejected_percent) {
            return None;
        }
        let length = machine.eject(now, settings);
        ejected.insert(server, now + length);
        Some(length)
    }

    /// `server` is back (its ejection ended or was ended).
    pub fn on_return(&self, server: SocketAddr) {
        lock(&self.inner).ejected.remove(&server);
    }

    /// Servers ejected now.
    pub fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let inner = lock(&self.inner);
        inner
            .ejected
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(addr, _)| *addr)
            .collect()
    }

    /// Forget servers that left the pool.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        lock(&self.inner).ejected.retain(|addr, _| keep(addr));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(consecutive_errors: u32, consecutive_5xx: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_errors,
            consecutive_5xx,
            ejection_ms: 1_000,
            max_ejection_ms: 2_500,
            max_ejected_percent: 50,
        }
    }

    fn feed(m: &mut OutlierMachine, outcomes: &[Outcome], s: &OutlierDetection) -> Vec<Trip> {
        outcomes
            .iter()
            .filter_map(|o| m.on_outcome(*o, s))
            .collect()
    }

    const FAIL: Outcome = Outcome::Failed;
    const OK: Outcome = Outcome::Status(200);

    #[test]
    fn ejected_after_n_consecutive_errors_and_a_success_resets_the_count() {
        let s = settings(3, 0);
        let mut m = OutlierMachine::default();
        assert!(feed(&mut m, &[FAIL, FAIL, OK, FAIL, FAIL], &s).is_empty());
        assert!(m.has_streak());
        // Gateway failures: refused/reset/timeouts and 502-504 alike.
        assert_eq!(feed(&mut m, &[Outcome::Status(503)], &s), [Trip::Errors(3)]);
        assert!(!m.has_streak(), "a trip starts the count over");
        // 500 is not a gateway failure, nor is a 4xx; both reset the count.
        let mixed = [FAIL, Outcome::Status(500), FAIL, Outcome::Status(404)];
        assert!(feed(&mut m, &mixed, &s).is_empty());
        // An L4 success resets it too.
        assert!(feed(&mut m, &[FAIL, FAIL, Outcome::Success, FAIL, FAIL], &s).is_empty());
        assert_eq!(feed(&mut m, &[FAIL], &s), [Trip::Errors(3)]);
    }

    #[test]
    fn consecutive_5xx_counts_every_5xx_and_failures() {
        let s = settings(0, 3);
        let mut m = OutlierMachine::default();
        let fives = [Outcome::Status(500), FAIL, Outcome::Status(599)];
        assert_eq!(feed(&mut m, &fives, &s), [Trip::FiveXx(3)]);
        assert!(feed(&mut m, &[Outcome::Status(500), Outcome::Status(499)], &s).is_empty());
        assert!(!m.has_streak());
        // With both on, whichever threshold comes first trips.
        let both = settings(2, 5);
        let mut m = OutlierMachine::default();
        assert_eq!(feed(&mut m, &[FAIL, FAIL], &both), [Trip::Errors(2)]);
        assert_eq!(Trip::Errors(2).to_string(), "2 gateway failures in a row");
    }

    #[test]
    fn back_after_the_ejection_time_and_longer_the_second_time() {
        let s = settings(1, 0);
        let t0 = fabric::rt::now();
        let ms = Duration::from_millis;
        let mut m = OutlierMachine::default();
        assert!(m.on_outcome(FAIL, &s).is_some());
        assert_eq!(m.eject(t0, &s), ms(1_000));
        assert!(m.is_ejected());
        assert_eq!(m.on_outcome(FAIL, &s), None, "ignored while ejected");
        assert!(!m.on_time(t0 + ms(999)));
        assert!(m.is_ejected());
        assert!(m.on_time(t0 + ms(1_000)));
        assert!(!m.is_ejected());
        assert!(!m.on_time(t0 + ms(1_001)), "returns once");

        // Ejected again soon after: twice as long, then capped at the max.
        let t1 = t0 + ms(1_200);
        m.on_outcome(FAIL, &s);
        assert_eq!(m.eject(t1, &s), ms(2_000));
        assert!(m.on_time(t1 + ms(2_000)));
        let t2 = t1 + ms(2_100);
        m.on_outcome(FAIL, &s);
        assert_eq!(m.eject(t2, &s), ms(2_500), "max_ejection_ms");
        assert_eq!(m.ejections(), 3);
        assert!(m.on_time(t2 + ms(2_500)));

        // Behaving for two ejection times takes the multiplier down by two.
        let t3 = t2 + ms(2_500) + ms(2_000);
        m.on_outcome(FAIL, &s);
        assert_eq!(m.eject(t3, &s), ms(2_000));
        assert_eq!(m.ejections(), 2);
        assert!(m.end(t3 + ms(1)));
        assert!(!m.end(t3 + ms(2)));
    }

    #[test]
    fn the_pool_never_ejects_more_than_its_share() {
        assert!(may_eject(0, 2, 50));
        assert!(!may_eject(1, 2, 50));
        assert!(!may_eject(0, 1, 50), "a pool of one is never emptied");
        assert!(may_eject(0, 1, 100));
        assert!(may_eject(2, 10, 30) && !may_eject(3, 10, 30));
        assert!(!may_eject(0, 3, 10), "10% of 3 rounds down to none");

        let s = settings(1, 0);
        let pool = PoolOutliers::new(s, 4);
        let addr = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
        let t0 = fabric::rt::now();
        let mut machines: Vec<OutlierMachine> = vec![OutlierMachine::default(); 4];
        let mut ejected = 0;
        for (i, m) in machines.iter_mut().enumerate() {
            assert!(m.on_outcome(FAIL, &s).is_some());
            if pool.try_eject(addr(i as u16), m, t0).is_some() {
                ejected += 1;
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        assert_eq!(pool.ejected(t0), [addr(0), addr(1)]);
        assert!(!machines[2].is_ejected() && !machines[2].has_streak());
        // Once an ejection's time has passed its slot is free again, even
        // before the server is seen to return.
        let later = t0 + Duration::from_millis(1_000);
        assert!(machines[2].on_outcome(FAIL, &s).is_some());
        assert!(pool.try_eject(addr(2), &mut machines[2], later).is_some());
        assert_eq!(pool.ejected(later), [addr(2)]);
        // Servers that left the pool free theirs.
        pool.retain(|a| *a != addr(2));
        assert!(pool.ejected(later).is_empty());
    }
}
