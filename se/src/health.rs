//! Server health: a pure rise/fall state machine, the bounded queue of
//! health changes the agent reports to the Controller, and thin async probes
//! (TCP connect, HTTP or HTTPS GET, UDP, DNS) with the loop that runs one per
//! monitored server.
//!
//! A server starts **up**, as Avi's do: a config push or an SE restart must
//! not open a window of 503s while the first checks run, and a server that is
//! in fact dead costs no failed request meanwhile (a refused connect is
//! retried on the next server and counts toward `fall`). It goes down after
//! `fall` consecutive failures and comes back after `rise` consecutive
//! successes; a success resets the failure count and a failure the success
//! count, so a server that flaps faster than that keeps its state.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{DnsCheck, HealthMonitor, HttpCheck, MonitorKind, PoolTls, UdpCheck};
use fabric::rt;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use tokio::sync::Notify;

use crate::lb::ServerState;
use crate::upstream::UpstreamTls;

/// Most body bytes an HTTP check reads (and searches for `body_match`).
pub const MAX_CHECK_BODY_BYTES: usize = 64 * 1024;
/// Most health changes waiting for the Controller before they are coalesced.
pub const MAX_PENDING_CHANGES: usize = 1024;

/// Rise/fall hysteresis of one server's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMachine {
    up: bool,
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
}

impl HealthMachine {
    /// A machine starting `up` (or down) with thresholds `rise` and `fall`
    /// (values below 1 count as 1).
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Self {
            up,
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
        }
    }

    /// Whether the server counts as up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A check succeeded; `Some(true)` if the server just came up.
    pub fn on_success(&mut self) -> Option<bool> {
        self.failures = 0;
        if self.up {
            return None;
        }
        self.successes = self.successes.saturating_add(1);
        if self.successes >= self.rise {
            self.become_up();
            return Some(true);
        }
        None
    }

    /// A check failed; `Some(false)` if the server just went down.
    pub fn on_failure(&mut self) -> Option<bool> {
        self.successes = 0;
        if !self.up {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.fall {
            self.become_down();
            return Some(false);
        }
        None
    }

    /// New thresholds; the state stays, the counts start over.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        *self = Self::new(self.up, rise, fall);
    }

    fn become_up(&mut self) {
        self.up = true;
        self.successes = 0;
        self.failures = 0;
    }

    fn become_down(&mut self) {
        self.up = false;
        self.successes = 0;
        self.failures = 0;
    }
}

/// A server went up or down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// Its pool.
    pub pool: String,
    /// The server.
    pub server: SocketAddr,
    /// Whether it is up now (with `outlier`: false when ejected, true when
    /// it returned).
    pub up: bool,
    /// Why.
    pub reason: String,
    /// An ejection or return by outlier detection, not a health change.
    pub outlier: bool,
}

/// Health changes waiting to be reported, oldest first. Bounded: when full,
/// only the latest change per server (and kind: health or outlier) is kept
/// (a server's last state is what the Controller needs); if every entry is a distinct server, the oldest
/// goes and is counted in [`HealthEvents::dropped`].
#[derive(Debug)]
pub struct HealthEvents {
    queue: Mutex<VecDeque<HealthChange>>,
    capacity: usize,
    dropped: AtomicU64,
    notify: Notify,
}

impl HealthEvents {
    /// An empty queue holding at most `capacity` (at least 1) changes.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    /// Queue a change and wake the reporter.
    pub fn push(&self, change: HealthChange) {
        if change.outlier {
            tracing::info!(pool = %change.pool, server = %change.server, returned = change.up, reason = %change.reason, "server ejection changed");
        } else {
            tracing::info!(pool = %change.pool, server = %change.server, up = change.up, reason = %change.reason, "server health changed");
        }
        {
            let mut queue = lock(&self.queue);
            queue.push_back(change);
            self.trim(&mut queue);
        }
        self.notify.notify_one();
    }

    /// Put back changes taken by [`drain`](Self::drain) that could not be
    /// delivered, ahead of any newer ones.
    pub fn requeue(&self, changes: Vec<HealthChange>) {
        let mut queue = lock(&self.queue);
        for change in changes.into_iter().rev() {
            queue.push_front(change);
        }
        self.trim(&mut queue);
    }

    /// Take every queued change, oldest first.
    pub fn drain(&self) -> Vec<HealthChange> {
        lock(&self.queue).drain(..).collect()
    }

    /// Wait until a change is pushed (returns at once if one was pushed since
    /// the last wait).
    pub async fn pushed(&self) {
        self.notify.notified().await
    }

    /// Changes lost because the queue was full of distinct servers.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn trim(&self, queue: &mut VecDeque<HealthChange>) {
        if queue.len() <= self.capacity {
            return;
        }
        keep_latest_per_server(queue);
        while queue.len() > self.capacity {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Keep only the newest change of each server and kind, in their order.
fn keep_latest_per_server(queue: &mut VecDeque<HealthChange>) {
    let mut seen = BTreeSet::new();
    let mut kept = VecDeque::with_capacity(queue.len());
    for change in queue.drain(..).rev() {
        if seen.insert((change.pool.clone(), change.server, change.outlier)) {
            kept.push_front(change);
        }
    }
    *queue = kept;
}

/// A health monitor ready to check a pool's servers: for `https`, with its
/// TLS settings built (once, not per check).
#[derive(Debug, Clone)]
pub struct Checker {
    monitor: HealthMonitor,
    tls: Option<Arc<UpstreamTls>>,
}

impl Checker {
    /// `monitor` for a pool speaking `pool_tls` to its servers. An `https`
    /// check speaks TLS as the pool does (so it checks what traffic meets);
    /// a pool without `tls` (say, TCP passing TLS through) takes the
    /// monitor's own `tls`; with neither it is an error.
    pub fn new(monitor: &HealthMonitor, pool_tls: Option<&PoolTls>) -> Result<Self, String> {
        let tls = match Self::tls_settings(monitor, pool_tls) {
            Some(settings) => Some(Arc::new(UpstreamTls::new(settings, &[b"http/1.1"])?)),
            None if monitor.kind == MonitorKind::Https => {
                return Err(
                    "an https check needs TLS settings: the pool's `tls` or the monitor's".into(),
                )
            }
            None => None,
        };
        Ok(Self {
            monitor: monitor.clone(),
            tls,
        })
    }

    /// The TLS settings a check of `monitor` in a pool with `pool_tls` uses
    /// (none unless it is `https`).
    pub fn tls_settings<'a>(
        monitor: &'a HealthMonitor,
        pool_tls: Option<&'a PoolTls>,
    ) -> Option<&'a PoolTls> {
        match monitor.kind {
            MonitorKind::Https => pool_tls.or(monitor.tls.as_ref()),
            _ => None,
        }
    }

    /// The monitor.
    pub fn monitor(&self) -> &HealthMonitor {
        &self.monitor
    }

    /// Check `server` once, within the monitor's timeout.
    pub async fn probe(&self, server: SocketAddr) -> Result<(), String> {
        let monitor = &self.monitor;
        let timeout_ms = monitor.timeout_ms.max(1);
        let check = async {
            match monitor.kind {
                MonitorKind::Tcp => probe_tcp(server).await,
                MonitorKind::Http | MonitorKind::Https => {
                    let default = HttpCheck::default();
                    let check = monitor.http.as_ref().unwrap_or(&default);
                    probe_http(server, check, self.tls.as_deref()).await
                }
                MonitorKind::Udp => match &monitor.udp {
                    Some(check) => probe_udp(server, check).await,
                    None => Err("a udp check needs `send`".into()),
                },
                MonitorKind::Dns => match &monitor.dns {
                    Some(check) => probe_dns(server, check).await,
                    None => Err("a dns check needs `name`".into()),
                },
            }
        };
        rt::timeout(Duration::from_millis(timeout_ms), check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout_ms} ms")))
    }
}

/// Check `server` once as `monitor` says, within its timeout (an `https`
/// monitor with its own `tls`).
pub async fn probe(monitor: &HealthMonitor, server: SocketAddr) -> Result<(), String> {
    Checker::new(monitor, None)?.probe(server).await
}

async fn probe_tcp(server: SocketAddr) -> Result<(), String> {
    rt::connect(server)
        .await
        .map(drop)
        .map_err(|e| format!("connect: {e}"))
}

async fn probe_http(
    server: SocketAddr,
    check: &HttpCheck,
    tls: Option<&UpstreamTls>,
) -> Result<(), String> {
    let req = Request::get(check.path.as_str())
        .header(http::header::HOST, server.to_string())
        .header(http::header::USER_AGENT, "fabric-health/1")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad check request: {e}"))?;
    // No `Connection: close`: in the simulation hyper's client then fails the
    // exchange ("error writing a body to connection"); dropping the sender
    // and the body closes the connection anyway.
    let mut sender = crate::proxy::open_via(server, crate::proxy::CONNECT_TIMEOUT, tls)
        .await
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = resp.status().as_u16();
    if !check.expected_status.contains(&status) {
        return Err(format!(
            "status {status}, expected one of {:?}",
            check.expected_status
        ));
    }
    let Some(needle) = check.body_match.as_deref() else {
        return Ok(());
    };
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while seen.len() < MAX_CHECK_BODY_BYTES {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("reading the body: {e}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = MAX_CHECK_BODY_BYTES - seen.len();
                    seen.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    if contains(&seen, needle.as_bytes()) {
        Ok(())
    } else {
        Err(format!("body lacks `{needle}`"))
    }
}

/// Send `request` to `server` from a fresh UDP socket and return the first
/// datagram that comes back from it (the caller's timeout bounds the wait).
async fn udp_exchange(server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let socket = crate::upstream::udp_socket_toward(server)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .send_to(request, server)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if from == server {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn probe_udp(server: SocketAddr, check: &UdpCheck) -> Result<(), String> {
    let answer = udp_exchange(server, check.send.as_bytes()).await?;
    match &check.expect {
        Some(expect) if !contains(&answer, expect.as_bytes()) => {
            Err(format!("answer lacks `{expect}`"))
        }
        _ => Ok(()),
    }
}

/// A DNS query (RD clear) for `name` and `qtype` with id `id`.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

async fn probe_dns(server: SocketAddr, check: &DnsCheck) -> Result<(), String> {
    let qtype = check.qtype().ok_or("unsupported record type")?;
    let id = (rt::random_u64() & 0xffff) as u16;
    let answer = udp_exchange(server, &dns_query(id, &check.name, qtype)).await?;
    if answer.len() < 12 || answer[..2] != id.to_be_bytes() || answer[2] & 0x80 == 0 {
        return Err("not an answer to our query".into());
    }
    match answer[3] & 0x0f {
        0 => Ok(()),
        rcode => Err(format!("rcode {rcode} (expected NOERROR)")),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Check `state`'s server every `interval_ms` forever (until aborted), feeding
/// each outcome to its state. The first check runs at once.
pub async fn run_monitor(checker: Checker, state: Arc<ServerState>) {
    let interval = Duration::from_millis(checker.monitor().interval_ms.max(1));
    let mut next = rt::now();
    loop {
        let result = checker.probe(state.addr()).await;
        if let Err(reason) = &result {
            tracing::debug!(server = %state.addr(), %reason, "health check failed");
        }
        state.on_check(result.as_ref().map(|_| ()).map_err(String::as_str));
        next += interval;
        let now = rt::now();
        // A check slower than the interval delays the next one; never a burst.
        if next < now {
            next = now;
        }
        rt::sleep(next - now).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut HealthMachine, outcomes: &str) -> Vec<Option<bool>> {
        outcomes
            .chars()
            .map(|c| match c {
                '+' => m.on_success(),
                _ => m.on_failure(),
            })
            .collect()
    }

    #[test]
    fn goes_down_after_fall_failures_in_a_row_and_up_after_rise_successes() {
        let mut m = HealthMachine::new(true, 2, 3);
        assert_eq!(run(&mut m, "--"), [None, None]);
        assert!(m.is_up());
        assert_eq!(run(&mut m, "-"), [Some(false)]);
        assert!(!m.is_up());
        assert_eq!(run(&mut m, "-+"), [None, None]);
        assert_eq!(run(&mut m, "+"), [Some(true)]);
        assert!(m.is_up());
        // Counts start over after each change: fall failures again to go down.
        assert_eq!(run(&mut m, "---"), [None, None, Some(false)]);
    }

    #[test]
    fn flapping_faster_than_the_thresholds_changes_nothing() {
        let mut up = HealthMachine::new(true, 2, 2);
        assert!(run(&mut up, &"-+".repeat(50)).iter().all(Option::is_none));
        assert!(up.is_up());
        let mut down = HealthMachine::new(false, 2, 2);
        assert!(run(&mut down, &"+-".repeat(50)).iter().all(Option::is_none));
        assert!(!down.is_up());
        // rise = fall = 1 follows every outcome.
        let mut eager = HealthMachine::new(true, 1, 1);
        assert_eq!(
            run(&mut eager, "-+-"),
            [Some(false), Some(true), Some(false)]
        );
    }

    #[test]
    fn new_thresholds_keep_the_state() {
        let mut m = HealthMachine::new(true, 2, 2);
        m.on_failure();
        m.set_thresholds(3, 3);
        assert!(m.is_up());
        assert_eq!(m.failures(), 0);
        assert_eq!(run(&mut m, "---"), [None, None, Some(false)]);
        let mut zero = HealthMachine::new(true, 0, 0);
        assert_eq!(zero.on_failure(), Some(false), "0 counts as 1");
    }

    fn change(server: u16, up: bool) -> HealthChange {
        HealthChange {
            pool: "web".into(),
            server: SocketAddr::from(([10, 0, 0, 1], server)),
            up,
            reason: format!("check {server} {up}"),
            outlier: false,
        }
    }

    #[test]
    fn a_full_queue_keeps_the_latest_state_per_server() {
        let events = HealthEvents::new(4);
        for i in 0..10 {
            events.push(change(1 + i % 2, i % 3 == 0));
        }
        let got = events.drain();
        assert!(got.len() <= 4, "{got:?}");
        // The newest change of each server is kept: i = 8 (server 1) and 9 (server 2).
        let last_of = |s: u16| got.iter().rev().find(|c| c.server.port() == s).cloned();
        assert_eq!(last_of(1), Some(change(1, false)));
        assert_eq!(last_of(2), Some(change(2, true)));
        assert_eq!(events.dropped(), 0);

        // More distinct servers than room: the oldest go, counted.
        for i in 0..6 {
            events.push(change(10 + i, false));
        }
        let got = events.drain();
        assert_eq!(
            got.iter().map(|c| c.server.port()).collect::<Vec<_>>(),
            [12, 13, 14, 15]
        );
        assert_eq!(events.dropped(), 2);
        assert!(events.drain().is_empty());

        // Undelivered changes go back ahead of newer ones; the newest still wins.
        events.push(change(1, true));
        events.requeue(vec![change(1, false), change(2, false)]);
        assert_eq!(
            events.drain(),
            [change(1, false), change(2, false), change(1, true)]
        );
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"o", b"ok"));
        assert!(contains(b"", b""));
    }
}
