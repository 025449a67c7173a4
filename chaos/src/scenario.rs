//! Seeded fault scenarios over the simulated fabric.
//!
//! A scenario runs a safety phase (faults on, invariants checked as it
//! goes) and then a liveness phase (faults healed, the fabric must converge
//! by a deadline). It returns what it observed, or the first invariant that
//! failed.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use fabric::rt;
use serde::Serialize;
use sim::world::World;

/// How long the fabric may take to serve after boot or after a fault heals.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(10);
/// Length of the safety phase by default (`Params::phase`).
pub const FAULT_PHASE: Duration = Duration::from_secs(30);
/// Each fault type enabled for a seed strikes once per this much of the
/// safety phase.
pub const FAULT_ROUND: Duration = Duration::from_secs(30);
/// Most lines a seed's trace keeps (the rest are counted, not kept).
pub const TRACE_LINES_MAX: usize = 4096;

/// Settings of one run, the same for every seed of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Length of the safety phase (faults on); a fault round per
    /// [`FAULT_ROUND`] of it.
    pub phase: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Self { phase: FAULT_PHASE }
    }
}

/// The scenarios of the seed runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// [`slice_under_crashes`].
    Slice,
    /// [`pair_under_faults`].
    Pair,
    /// [`fabric_under_faults`].
    Fabric,
}

impl Scenario {
    /// Every scenario, in the order seeds rotate through them.
    pub const ALL: [Scenario; 3] = [Scenario::Slice, Scenario::Pair, Scenario::Fabric];

    /// The scenario a mixed run gives `seed`: they take turns.
    pub fn for_seed(seed: u64) -> Scenario {
        Self::ALL[(seed % Self::ALL.len() as u64) as usize]
    }

    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Slice => "slice_under_crashes",
            Scenario::Pair => "pair_under_faults",
            Scenario::Fabric => "fabric_under_faults",
        }
    }

    /// The scenario called `name` (its full name or `slice`, `pair`, `fabric`).
    pub fn parse(name: &str) -> Option<Scenario> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name || s.name().split('_').next() == Some(name))
    }

    /// Run it (inside a madsim runtime): what it observed or the invariant
    /// that failed, and its trace either way (up to the failure).
    pub async fn run(self, params: Params) -> (Result<Outcome>, Trace) {
        let trace = Trace::default();
        let t = trace.clone();
        let r = match self {
            Scenario::Slice => slice_under_crashes(params, t).await,
            Scenario::Pair => pair_under_faults(params, t).await,
            Scenario::Fabric => fabric_under_faults(params, t).await,
        };
        (r, trace)
    }
}

/// What a seed did and saw, a line each, stamped with simulated time since
/// its start: the golden traces under `snapshots/` are these. A handle:
/// clones share the lines, so the runner still has them when the seed fails.
#[derive(Clone, Default)]
pub struct Trace(std::sync::Arc<std::sync::Mutex<TraceLines>>);

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trace({} lines)", self.lines().len())
    }
}

#[derive(Debug, Default)]
struct TraceLines {
    lines: Vec<String>,
    dropped: usize,
}

impl Trace {
    /// Add a line at `t`.
    pub fn note(&self, t: Duration, what: impl std::fmt::Display) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.lines.len() < TRACE_LINES_MAX {
            g.lines.push(format!("{:>9.3}s {what}", t.as_secs_f64()));
        } else {
            g.dropped += 1;
        }
    }

    /// The lines, and a last one counting those past the bound.
    pub fn lines(&self) -> Vec<String> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = g.lines.clone();
        if g.dropped > 0 {
            lines.push(format!("... {} more lines", g.dropped));
        }
        lines
    }
}

impl PartialEq for Trace {
    fn eq(&self, other: &Self) -> bool {
        self.lines() == other.lines()
    }
}

impl Eq for Trace {}

/// Gap between client requests during the safety phase.
pub const REQUEST_GAP: Duration = Duration::from_millis(100);
/// Requests in the liveness phase; at least 99.9% must succeed.
pub const LIVENESS_REQUESTS: u32 = 1000;

/// A fault the scenario injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The SE crashed and restarted after a while.
    SeCrash,
    /// The Controller crashed and restarted after a while.
    ControllerCrash,
    /// The Controller was cut off the network (both ways), then healed.
    ControllerIsolated,
    /// An origin server crashed and restarted after a while.
    OriginCrash,
    /// The link between the two SEs of a pair was cut (both ways), then healed.
    PairLinkCut,
    /// The active SE of a pair was cut from the Controller (both ways).
    ActiveControllerCut,
    /// Every gratuitous ARP frame on the segment was lost for a while.
    GarpLoss,
    /// The Controller's process stopped being scheduled (a long GC pause, a
    /// stopped VM), then went on where it was, its timers all due at once.
    ControllerPaused,
    /// The Controller leader lost one direction of its network: what it
    /// sends, or what it receives (asymmetric routing, a one-sided
    /// firewall rule), then healed.
    ControllerOneWay,
    /// Every UDP datagram in the world (DNS, ARP, GARP) was lost with a
    /// probability (1%, 5% or 20%) for a while.
    PacketLoss,
    /// Every message on the network took up to 20, 50 or 100 ms for a while
    /// (a congested or rerouted network; TCP's retransmits under loss).
    Latency,
    /// The Controller leader's clock ran fast or slow (x0.5 to x2) as its
    /// Raft timers see it, then true again.
    ClockSkew,
    /// The Controller leader's disk took 5, 50 or 200 ms for each sync of
    /// a Raft write, then was fast again.
    SlowDisk,
}

impl Fault {
    /// The fault types of the slice scenario, for swarm selection.
    pub const SLICE: [Fault; 4] = [
        Fault::SeCrash,
        Fault::ControllerCrash,
        Fault::ControllerIsolated,
        Fault::OriginCrash,
    ];
    /// The fault types of the pair scenario (`SeCrash`: the active).
    pub const PAIR: [Fault; 7] = [
        Fault::SeCrash,
        Fault::PairLinkCut,
        Fault::ActiveControllerCut,
        Fault::GarpLoss,
        Fault::ControllerCrash,
        Fault::ControllerIsolated,
        Fault::OriginCrash,
    ];
    /// The fault types of the full fabric scenario (`SeCrash`: the SE
    /// holding a VIP; the Controller faults: the leader of the time).
    pub const FABRIC: [Fault; 11] = [
        Fault::SeCrash,
        Fault::ControllerCrash,
        Fault::ControllerIsolated,
        Fault::OriginCrash,
        Fault::GarpLoss,
        Fault::ControllerPaused,
        Fault::ControllerOneWay,
        Fault::PacketLoss,
        Fault::Latency,
        Fault::ClockSkew,
        Fault::SlowDisk,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::SeCrash => "se_crash",
            Fault::ControllerCrash => "controller_crash",
            Fault::ControllerIsolated => "controller_isolated",
            Fault::OriginCrash => "origin_crash",
            Fault::PairLinkCut => "pair_link_cut",
            Fault::ActiveControllerCut => "active_controller_cut",
            Fault::GarpLoss => "garp_loss",
            Fault::ControllerPaused => "controller_paused",
            Fault::ControllerOneWay => "controller_one_way",
            Fault::PacketLoss => "packet_loss",
            Fault::Latency => "latency",
            Fault::ClockSkew => "clock_skew",
            Fault::SlowDisk => "slow_disk",
        }
    }
}

/// What one seed observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// The scenario the seed ran.
    pub scenario: &'static str,
    /// Faults injected, in order.
    pub faults: Vec<Fault>,
    /// Simulated seconds the seed covered.
    pub sim_secs: f64,
    /// Client requests that succeeded / failed in the safety phase.
    pub requests_ok: u32,
    /// See `requests_ok`.
    pub requests_failed: u32,
    /// Client-visible outage of each SE crash, first failure to first success (ms).
    pub outages_ms: Vec<u64>,
    /// Longest stretch two SEs both held a VIP, ms.
    pub dual_hold_ms: u64,
    /// Each stretch without a leader able to reach the SEs (a crashed or
    /// cut-off leader until the next one), ms; the full shape only.
    pub elections_ms: Vec<u64>,
    /// For each origin outage during which the DNS still handed the origin
    /// out: how far into the outage it last did, ms (the full shape only;
    /// at most its detection window, or the seed fails).
    pub stale_dns_ms: Vec<u64>,
    /// For each config version the leader committed during the safety
    /// phase: how long until every SE that was up had applied it, ms (the
    /// full shape only; both ends seen once per client request, about
    /// every 100 ms).
    pub config_lag_ms: Vec<u64>,
    /// DNS queries and ARP resolves that went unanswered while datagrams
    /// were being lost (the full shape only; excused, not failures).
    pub lost_to_packet_loss: u32,
    /// Simulated and wall time of each part of the seed (boot, safety,
    /// liveness): where a slow run spends its time.
    pub laps: Vec<Lap>,
    /// What the seed did and saw (compared by the determinism check, not
    /// written to reports).
    #[serde(skip)]
    pub trace: Trace,
}

/// One part of a seed: its simulated and its wall-clock seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Lap {
    /// `boot`, `safety` or `liveness`.
    pub name: &'static str,
    /// Simulated seconds it covered.
    pub sim_secs: f64,
    /// Wall-clock seconds it took.
    pub wall_secs: f64,
}

/// Times the parts of a seed, in simulated and in wall-clock time.
struct Laps {
    sim: std::time::Instant,
    wall: f64,
    done: Vec<Lap>,
}

impl Laps {
    fn start() -> Laps {
        Laps {
            sim: rt::now(),
            wall: wall_clock_secs(),
            done: Vec::new(),
        }
    }

    /// The part named `name` ends now; the next begins.
    fn lap(&mut self, name: &'static str) {
        let (sim, wall) = (rt::now(), wall_clock_secs());
        self.done.push(Lap {
            name,
            sim_secs: (sim - self.sim).as_secs_f64(),
            wall_secs: wall - self.wall,
        });
        (self.sim, self.wall) = (sim, wall);
    }
}

/// The host's monotonic clock, in seconds, read inside the simulation:
/// madsim replaces `clock_gettime` (and so `std::time::Instant`) with
/// simulated time, so this asks the kernel directly. Only for the run's
/// speed figures: nothing the simulation does may depend on it.
fn wall_clock_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Planned,
    Down,
    Healed,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    fault: Fault,
    start: Duration,
    down_for: Duration,
    phase: Phase,
}

/// The origin the scenario crashes (the other one keeps serving).
const CRASHED_ORIGIN: &str = "origin-2";

fn inject(world: &World, fault: Fault) -> Result<()> {
    match fault {
        Fault::SeCrash => world.cloud.kill("se-1")?,
        Fault::ControllerCrash => world.kill_controller(),
        Fault::ControllerIsolated => world.isolate_controller_at(0, true),
        Fault::OriginCrash => madsim::runtime::Handle::current().kill(CRASHED_ORIGIN),
        _ => bail!("{} is not a slice fault", fault.name()),
    }
    Ok(())
}

fn heal(world: &World, fault: Fault) -> Result<()> {
    match fault {
        Fault::SeCrash => world.cloud.restart("se-1")?,
        Fault::ControllerCrash => world.restart_controller(),
        Fault::ControllerIsolated => world.isolate_controller_at(0, false),
        Fault::OriginCrash => madsim::runtime::Handle::current().restart(CRASHED_ORIGIN),
        _ => bail!("{} is not a slice fault", fault.name()),
    }
    Ok(())
}

/// Swarm testing (as FoundationDB and TigerBeetle's VOPR do): each seed
/// turns on its own subset of fault types (each with probability 1/2, at
/// least one) at its own intensity (how long a fault may last), so that
/// some seeds meet rare combinations at full strength instead of every
/// seed meeting every fault mildly.
///
/// A phase longer than one [`FAULT_ROUND`] has a round per round's length:
/// each enabled type strikes once in each, starting 1-20 s into it.
fn plan(types: &[Fault], phase: Duration) -> Vec<Window> {
    let mut windows = Vec::new();
    let pick = |lo: u64, hi: u64| Duration::from_millis(lo + rt::random_u64() % (hi - lo));
    let mut enabled: Vec<Fault> = types
        .iter()
        .copied()
        .filter(|_| rt::random_u64().is_multiple_of(2))
        .collect();
    if enabled.is_empty() {
        enabled.push(types[(rt::random_u64() % types.len() as u64) as usize]);
    }
    let longest = [2_000, 8_000, 15_000][(rt::random_u64() % 3) as usize];
    let rounds = (phase.as_millis() / FAULT_ROUND.as_millis()).max(1) as u32;
    for fault in enabled {
        for round in 0..rounds {
            let (start, mut down_for) = (pick(1_000, 20_000), pick(100, longest));
            if round + 1 < rounds {
                // Healed before the next round's window of the same type.
                down_for = down_for.min(FAULT_ROUND - start - Duration::from_millis(500));
            }
            windows.push(Window {
                fault,
                start: FAULT_ROUND * round + start,
                down_for,
                phase: Phase::Planned,
            });
        }
    }
    windows.sort_by_key(|w| w.start);
    windows
}

/// The slice world under a swarm of faults: SE and Controller crashes, the
/// Controller cut off, an origin crash. Safety: while the SE is up (and
/// has had [`CONVERGE_DEADLINE`] since its restart) every request succeeds
/// and is answered by `se-1`, including while the Controller is down or cut
/// off and while an origin is down (its refused connections are retried on
/// the other); each SE's applied version never goes backwards. Liveness:
/// once faults heal the SE is on the newest config and 99.9% of requests
/// succeed.
pub async fn slice_under_crashes(params: Params, trace: Trace) -> Result<Outcome> {
    let started = rt::now();
    let mut laps = Laps::start();
    let world = World::builder().build().await?;
    world
        .wait_until("the VIP serves after boot", CONVERGE_DEADLINE, || async {
            matches!(world.http_get("/").await, Ok(r) if r.status == 200)
        })
        .await?;

    let mut windows = plan(&Fault::SLICE, params.phase);
    laps.lap("boot");
    let mut outcome = Outcome {
        scenario: "slice_under_crashes",
        faults: windows.iter().map(|w| w.fault).collect(),
        trace,
        ..Outcome::default()
    };
    let phase_start = rt::now();
    // When a restarted SE must serve again: its deadline starts once it can
    // reach a Controller (a fresh SE has no config until then).
    let mut se_ready_by = Duration::ZERO;
    let mut se_down = false;
    // The Controller is unreachable while it is crashed or cut off.
    let (mut controller_crashed, mut controller_isolated) = (false, false);
    let mut outage_started: Option<Duration> = None;
    // Applied version per SE incarnation: it never goes backwards.
    let mut last_applied: std::collections::BTreeMap<u64, u64> = Default::default();

    while rt::now() - phase_start < params.phase {
        let t = rt::now() - phase_start;
        for w in windows.iter_mut() {
            if w.phase == Phase::Planned && t >= w.start {
                w.phase = Phase::Down;
                outcome
                    .trace
                    .note(t, format_args!("inject {}", w.fault.name()));
                inject(&world, w.fault)?;
                match w.fault {
                    Fault::SeCrash => se_down = true,
                    Fault::ControllerCrash | Fault::ControllerIsolated => {
                        if w.fault == Fault::ControllerCrash {
                            controller_crashed = true;
                        } else {
                            controller_isolated = true;
                        }
                        // An SE restarted within the deadline may not have
                        // its config yet: it waits for the Controller
                        // (seed 726: the SE came back at the instant the
                        // Controller crashed, and had nothing to serve).
                        if se_ready_by > t {
                            se_ready_by = Duration::MAX;
                        }
                    }
                    _ => {}
                }
            } else if w.phase == Phase::Down && t >= w.start + w.down_for {
                w.phase = Phase::Healed;
                outcome
                    .trace
                    .note(t, format_args!("heal {}", w.fault.name()));
                heal(&world, w.fault)?;
                match w.fault {
                    Fault::SeCrash => {
                        se_down = false;
                        se_ready_by = if controller_crashed || controller_isolated {
                            Duration::MAX
                        } else {
                            t + CONVERGE_DEADLINE
                        };
                    }
                    Fault::ControllerCrash | Fault::ControllerIsolated => {
                        if w.fault == Fault::ControllerCrash {
                            controller_crashed = false;
                        } else {
                            controller_isolated = false;
                        }
                        let reachable = !controller_crashed && !controller_isolated;
                        if reachable && se_ready_by == Duration::MAX {
                            se_ready_by = t + CONVERGE_DEADLINE;
                        }
                    }
                    _ => {}
                }
            }
        }

        let settled = !se_down && t >= se_ready_by;
        match world.http_get("/").await {
            Ok(r) if r.status == 200 => {
                if r.se.as_deref() != Some("se-1") {
                    bail!("safety: a response not tagged by se-1 at {t:?}: {r:?}");
                }
                outcome.requests_ok += 1;
                if let Some(from) = outage_started.take() {
                    let ms = (t - from).as_millis() as u64;
                    outcome.outages_ms.push(ms);
                    outcome
                        .trace
                        .note(t, format_args!("served again after {ms} ms"));
                }
            }
            other => {
                if settled {
                    bail!("safety: request failed at {t:?} while the SE was up and settled: {other:?}");
                }
                outcome.requests_failed += 1;
                if outage_started.is_none() {
                    outcome.trace.note(t, "a request failed");
                }
                outage_started.get_or_insert(t);
            }
        }
        if let Some(c) = world.controller() {
            for se in c.ses() {
                let last = last_applied.entry(se.incarnation).or_insert(0);
                if se.applied_version < *last {
                    bail!(
                        "safety: {} (incarnation {:x}) applied version went from {last} to {}",
                        se.name,
                        se.incarnation,
                        se.applied_version
                    );
                }
                *last = se.applied_version;
            }
        }
        rt::sleep(REQUEST_GAP).await;
    }

    laps.lap("safety");
    // Liveness: heal everything, then converge.
    for w in windows.iter().filter(|w| w.phase == Phase::Down) {
        heal(&world, w.fault)?;
    }
    world
        .wait_until(
            "liveness: SE connected on the newest config",
            CONVERGE_DEADLINE * 2,
            || async {
                world.controller().is_some_and(|c| {
                    let newest = c.desired().se_version();
                    c.ses()
                        .iter()
                        .all(|s| s.connected && s.applied_version == newest)
                        && !c.ses().is_empty()
                })
            },
        )
        .await?;
    let mut ok = 0;
    for _ in 0..LIVENESS_REQUESTS {
        if matches!(world.http_get("/").await, Ok(r) if r.status == 200) {
            ok += 1;
        }
    }
    if ok * 1000 < LIVENESS_REQUESTS * 999 {
        bail!("liveness: only {ok} of {LIVENESS_REQUESTS} requests succeeded after faults healed");
    }
    laps.lap("liveness");
    outcome.laps = laps.done;
    outcome.sim_secs = (rt::now() - started).as_secs_f64();
    outcome.trace.note(
        rt::now() - phase_start,
        format_args!("liveness: {ok} of {LIVENESS_REQUESTS} served"),
    );
    Ok(outcome)
}

/// Two SEs may both hold the VIP for at most this long in a row (the new
/// active's first beat reaching the old one); longer fails the seed.
pub const DUAL_HOLD_GRACE: Duration = Duration::from_millis(100);
/// Client requests in the pair scenario: one every this long...
const PAIR_PACE: Duration = Duration::from_millis(50);
/// ...each given up after this.
const PAIR_TIMEOUT: Duration = Duration::from_millis(200);

/// Which SE holds the VIP now by the client's ARP view is not the
/// question; which hosts hold it on the segment is.
/// How often [`HolderWatch`] looks at who holds each VIP (simulated time).
pub const HOLDER_SAMPLE: Duration = Duration::from_millis(5);

/// Who holds each VIP, looked at every [`HOLDER_SAMPLE`] by a task of its
/// own: the client loop looks only between requests, and would miss (or
/// shorten) a dual hold briefer than its gap. Holder changes go to the
/// trace; a dual hold past [`DUAL_HOLD_GRACE`] is a violation the scenario
/// fails on at its next step.
#[derive(Debug, Clone)]
struct HolderWatch {
    state: std::sync::Arc<std::sync::Mutex<WatchState>>,
}

#[derive(Debug)]
struct WatchState {
    last: Vec<Vec<String>>,
    dual_since: Vec<Option<Duration>>,
    max_dual: Duration,
    violation: Option<String>,
    stopped: bool,
}

impl HolderWatch {
    /// Watch `vips` (a label for the trace and the address each) from now
    /// until [`stop`](Self::stop), times relative to `start`.
    fn start(
        cloud: sim::cloud::SimCloud,
        vips: Vec<(&'static str, std::net::IpAddr)>,
        trace: Trace,
        start: std::time::Instant,
    ) -> Self {
        let state = std::sync::Arc::new(std::sync::Mutex::new(WatchState {
            last: vec![Vec::new(); vips.len()],
            dual_since: vec![None; vips.len()],
            max_dual: Duration::ZERO,
            violation: None,
            stopped: false,
        }));
        let watch = HolderWatch {
            state: state.clone(),
        };
        rt::spawn(async move {
            loop {
                {
                    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                    let s = &mut *guard;
                    if s.stopped {
                        return;
                    }
                    let t = rt::now() - start;
                    for (v, (label, vip)) in vips.iter().enumerate() {
                        if cloud.update_holders(*vip, &mut s.last[v]) {
                            let who = if label.is_empty() { "VIP" } else { label };
                            trace.note(t, format_args!("{who} held by {:?}", s.last[v]));
                        }
                        let held_by = &s.last[v];
                        if held_by.len() > 1 {
                            let since = *s.dual_since[v].get_or_insert(t);
                            let dual = t - since;
                            s.max_dual = s.max_dual.max(dual);
                            if dual > DUAL_HOLD_GRACE && s.violation.is_none() {
                                let of = if label.is_empty() {
                                    String::new()
                                } else {
                                    format!(" of {label}")
                                };
                                s.violation = Some(format!(
                                    "safety: {held_by:?} all held the VIP{of} for {dual:?} (since {since:?})"
                                ));
                            }
                        } else {
                            s.dual_since[v] = None;
                        }
                    }
                }
                rt::sleep(HOLDER_SAMPLE).await;
            }
        });
        watch
    }

    /// The longest dual hold so far, and fail if one went past the grace.
    fn check(&self, outcome: &mut Outcome) -> Result<()> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        outcome.dual_hold_ms = outcome.dual_hold_ms.max(s.max_dual.as_millis() as u64);
        match &s.violation {
            Some(v) => bail!("{v}"),
            None => Ok(()),
        }
    }

    /// Stop watching (the liveness phase checks holders its own way).
    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
    }
}

fn holders(world: &World) -> Vec<String> {
    world.cloud.holders(world.vip().ip())
}

/// The SE holding the VIP now, else se-1.
fn active_or_first(world: &World) -> String {
    holders(world)
        .into_iter()
        .next()
        .unwrap_or_else(|| "se-1".into())
}

/// Inject (`on`) or heal a pair fault. `victim` is the SE a fault picked
/// when injected (the active at the time), for healing the same one.
fn pair_fault(world: &World, fault: Fault, on: bool, victim: &mut Option<String>) -> Result<()> {
    let node = |name: &str| {
        world
            .cloud
            .node_id(name)
            .ok_or_else(|| anyhow!("no SE {name}"))
    };
    let clog_both = |a, b| {
        world.clog_link(a, b, on);
        world.clog_link(b, a, on);
    };
    if on && matches!(fault, Fault::SeCrash | Fault::ActiveControllerCut) {
        *victim = Some(active_or_first(world));
    }
    match fault {
        Fault::SeCrash => match (on, victim.as_deref()) {
            (true, Some(name)) => world.cloud.kill(name)?,
            (false, Some(name)) => world.cloud.restart(name)?,
            _ => {}
        },
        Fault::PairLinkCut => clog_both(node("se-1")?, node("se-2")?),
        Fault::ActiveControllerCut => {
            if let Some(name) = victim.as_deref() {
                clog_both(node(name)?, world.controller_node(0));
            }
        }
        Fault::GarpLoss => world.cloud.set_garp_loss(on),
        Fault::ControllerCrash if on => world.kill_controller(),
        Fault::ControllerCrash => world.restart_controller(),
        Fault::ControllerIsolated => world.isolate_controller_at(0, on),
        Fault::OriginCrash if on => madsim::runtime::Handle::current().kill("origin-1"),
        Fault::OriginCrash => madsim::runtime::Handle::current().restart("origin-1"),
        _ => bail!("{} is a full-shape fault", fault.name()),
    }
    Ok(())
}

/// A legacy active/standby pair under a swarm of faults: the active killed,
/// the link between the pair cut, the active cut from the Controller, GARPs
/// lost, the Controller crashed or cut off, the origin crashed. Safety
/// (BENCHMARKS.md invariant 1), checked every 50 ms on the segment itself:
/// two SEs never hold the VIP for longer than [`DUAL_HOLD_GRACE`] in a row.
/// Liveness: once faults heal, exactly one SE holds the VIP within
/// [`CONVERGE_DEADLINE`] and 99.9% of requests succeed.
pub async fn pair_under_faults(params: Params, trace: Trace) -> Result<Outcome> {
    let started = rt::now();
    let mut laps = Laps::start();
    let world = World::builder()
        .config(&sim::world::pair_config("fast"))
        .ses(2)
        .build()
        .await?;
    world
        .wait_until(
            "an SE serves the VIP after boot",
            CONVERGE_DEADLINE * 3,
            || async {
                matches!(world.http_get_within("/", PAIR_TIMEOUT).await, Ok(r) if r.status == 200)
            },
        )
        .await?;
    let mut windows = plan(&Fault::PAIR, params.phase);
    laps.lap("boot");
    let mut outcome = Outcome {
        scenario: "pair_under_faults",
        faults: windows.iter().map(|w| w.fault).collect(),
        trace,
        ..Outcome::default()
    };
    let mut victims: Vec<Option<String>> = vec![None; windows.len()];
    let phase_start = rt::now();
    let watch = HolderWatch::start(
        world.cloud.clone(),
        vec![("", world.vip().ip())],
        outcome.trace.clone(),
        phase_start,
    );
    let mut outage_started: Option<Duration> = None;
    while rt::now() - phase_start < params.phase {
        let t = rt::now() - phase_start;
        for (i, w) in windows.iter_mut().enumerate() {
            if w.phase == Phase::Planned && t >= w.start {
                w.phase = Phase::Down;
                pair_fault(&world, w.fault, true, &mut victims[i])?;
                match victims[i].as_deref() {
                    Some(on) => outcome
                        .trace
                        .note(t, format_args!("inject {} {on}", w.fault.name())),
                    None => outcome
                        .trace
                        .note(t, format_args!("inject {}", w.fault.name())),
                }
            } else if w.phase == Phase::Down && t >= w.start + w.down_for {
                w.phase = Phase::Healed;
                outcome
                    .trace
                    .note(t, format_args!("heal {}", w.fault.name()));
                pair_fault(&world, w.fault, false, &mut victims[i])?;
            }
        }
        watch.check(&mut outcome)?;
        match world.http_get_within("/", PAIR_TIMEOUT).await {
            Ok(r) if r.status == 200 => {
                outcome.requests_ok += 1;
                if let Some(from) = outage_started.take() {
                    let ms = (t - from).as_millis() as u64;
                    outcome.outages_ms.push(ms);
                    let by = r.se.as_deref().unwrap_or("?");
                    outcome
                        .trace
                        .note(t, format_args!("served again by {by} after {ms} ms"));
                }
            }
            _ => {
                outcome.requests_failed += 1;
                if outage_started.is_none() {
                    outcome.trace.note(t, "a request failed");
                }
                outage_started.get_or_insert(t);
            }
        }
        rt::sleep(PAIR_PACE).await;
    }
    laps.lap("safety");
    watch.check(&mut outcome)?;
    watch.stop();
    for (i, w) in windows.iter().enumerate() {
        if w.phase == Phase::Down {
            pair_fault(&world, w.fault, false, &mut victims[i])?;
        }
    }
    world
        .wait_until(
            "liveness: one SE holds the VIP",
            CONVERGE_DEADLINE,
            || async { holders(&world).len() == 1 },
        )
        .await?;
    let mut ok = 0;
    for _ in 0..LIVENESS_REQUESTS {
        if matches!(world.http_get_within("/", Duration::from_secs(2)).await, Ok(r) if r.status == 200)
        {
            ok += 1;
        }
    }
    if ok * 1000 < LIVENESS_REQUESTS * 999 {
        bail!("liveness: only {ok} of {LIVENESS_REQUESTS} requests succeeded after faults healed");
    }
    laps.lap("liveness");
    outcome.laps = laps.done;
    outcome.sim_secs = (rt::now() - started).as_secs_f64();
    outcome.trace.note(
        rt::now() - phase_start,
        format_args!("liveness: {ok} of {LIVENESS_REQUESTS} served"),
    );
    Ok(outcome)
}

/// The full shape (BENCHMARKS.md): three Controllers, an elastic N+M group
/// of four SEs (one buffer) serving two virtual services over two origins,
/// and the GSLB DNS answering a weighted name over those origins as the
/// members of two sites, probing them itself.
pub const FABRIC_CONFIG: &str = r#"
[controller]
listen = "10.0.0.1:7470"
heartbeat_ms = 500

[[se_groups]]
name = "elastic"

[[health_monitors]]
name = "http"
type = "http"
interval_ms = 1000
timeout_ms = 500
rise = 2
fall = 2
http = { path = "/", expected_status = [200] }

[[pools]]
name = "web"
servers = ["10.0.2.1:80", "10.0.2.2:80"]

[[virtual_services]]
name = "vs-1"
vip = "10.0.100.1"
port = 80
pool = "web"
se_group = "elastic"

[[virtual_services]]
name = "vs-2"
vip = "10.0.100.2"
port = 81
pool = "web"
se_group = "elastic"

[dns]
listen = "10.0.0.53:53"

[[dns.zones]]
name = "gslb.test"

[[gslb_sites]]
name = "east"

[[gslb_sites]]
name = "west"

[[gslb_services]]
fqdn = "www.gslb.test"
policy = "weighted"
members = [
  { address = "10.0.2.1", port = 80, weight = 3, site = "east" },
  { address = "10.0.2.2", port = 80, weight = 1, site = "west" },
]
health = { monitor = "http" }

[[demo_origins]]
name = "origin-1"
listen = "10.0.2.1:80"

[[demo_origins]]
name = "origin-2"
listen = "10.0.2.2:80"
"#;

/// The virtual services of [`FABRIC_CONFIG`].
const FABRIC_VSS: [&str; 2] = ["vs-1", "vs-2"];
/// Controllers and SEs of the full shape.
const FABRIC_CONTROLLERS: usize = 3;
const FABRIC_SES: usize = 4;
/// The GSLB name, and the address of the origin the scenario crashes.
const FABRIC_NAME: &str = "www.gslb.test";
const CRASHED_ORIGIN_IP: [u8; 4] = [10, 0, 2, 2];
/// How long after an origin fails the DNS may still hand it out: probe
/// interval x fall + timeout + the DNS node's tick + the query in flight.
pub const DNS_DETECTION: Duration = Duration::from_millis(1000 * 2 + 500 + 1000 + 100);
/// The DNS is asked once per this many client requests.
const DNS_EVERY: u32 = 5;

/// Config versions the leader committed and not every SE has applied yet.
#[derive(Debug, Default)]
struct ConfigLag {
    newest: u64,
    /// (version, when the leader was first seen with it); bounded.
    pending: std::collections::VecDeque<(u64, Duration)>,
}

impl ConfigLag {
    /// Most versions waiting at once; older ones are given up on.
    const PENDING_MAX: usize = 64;

    /// Look at leader `i`'s newest version and at what the SEs that are up
    /// (not in `down`) have applied, at `t`.
    fn observe(
        &mut self,
        world: &World,
        i: usize,
        down: &std::collections::BTreeSet<String>,
        t: Duration,
        outcome: &mut Outcome,
    ) {
        let Some(c) = world.controller_at(i) else {
            return;
        };
        let newest = c.desired().se_version();
        if newest > self.newest {
            if self.newest > 0 {
                if self.pending.len() == Self::PENDING_MAX {
                    self.pending.pop_front();
                }
                self.pending.push_back((newest, t));
            }
            self.newest = newest;
        }
        let applied = (1..=FABRIC_SES)
            .map(|n| format!("se-{n}"))
            .filter(|name| !down.contains(name))
            .map(|name| world.cloud.applied_version(&name).unwrap_or(0))
            .min()
            .unwrap_or(0);
        while let Some(&(version, seen)) = self.pending.front() {
            if applied < version {
                break;
            }
            self.pending.pop_front();
            let ms = (t - seen).as_millis() as u64;
            outcome.config_lag_ms.push(ms);
            // 0: within the step it was first seen in (most are); the
            // trace keeps the others.
            if ms == 0 {
                continue;
            }
            outcome.trace.note(
                t,
                format_args!("config version {version} on every SE up after {ms} ms"),
            );
        }
    }
}

/// How long after packet loss heals a lost query still counts as its doing.
const LOSS_TAIL: Duration = Duration::from_secs(3);

/// Who a fault of the full scenario hit, for healing the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Victim {
    None,
    Se(String),
    Controller(usize),
}

/// What the full scenario's faults have done so far.
#[derive(Debug, Default)]
struct FabricFaults {
    /// Controllers cut off now (a leader among them cannot move anything).
    isolated: std::collections::BTreeSet<usize>,
    /// Controllers crashed now.
    crashed: std::collections::BTreeSet<usize>,
    /// Controllers paused now.
    paused: std::collections::BTreeSet<usize>,
    /// Controllers with one direction of their network cut now, and
    /// whether it is what they send (`true`) or what they receive.
    one_way: std::collections::BTreeMap<usize, bool>,
    /// While datagrams are being lost: a DNS query or an ARP resolve may
    /// go unanswered until this long after the loss heals (replies in flight).
    loss_until: Option<Duration>,
    /// Longest message latency now, while the network is slow.
    latency_max: Option<Duration>,
    /// Requests may fail until then (an SE crash's move).
    excused_until: Duration,
    /// The SEs crashed now (SE crashes not healed yet).
    ses_down: std::collections::BTreeSet<String>,
    /// Since when the crashed origin is down.
    origin_down_since: Option<Duration>,
}

impl FabricFaults {
    /// Inject (`on`) or heal `fault` at `t`; `victim` is whom the injection
    /// hit (the holder of one of `vips`, the leader of the time), healed
    /// alike. Returns how hard it struck, for the trace ("" if it has no
    /// intensity).
    fn toggle(
        &mut self,
        world: &World,
        vips: &[std::net::IpAddr],
        fault: Fault,
        on: bool,
        victim: &mut Victim,
        t: Duration,
    ) -> Result<String> {
        let leader = world.leader_index().unwrap_or(0);
        let pick = |choices: &[u64]| choices[(rt::random_u64() % choices.len() as u64) as usize];
        let mut detail = String::new();
        match (fault, on) {
            (Fault::SeCrash, true) => {
                let vip = vips[(rt::random_u64() % vips.len() as u64) as usize];
                let name = world
                    .cloud
                    .holders(vip)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| "se-1".into());
                world.cloud.kill(&name)?;
                self.ses_down.insert(name.clone());
                *victim = Victim::Se(name);
                self.excused_until = self.excused_until.max(t + CONVERGE_DEADLINE);
            }
            (Fault::SeCrash, false) => {
                if let Victim::Se(name) = &*victim {
                    world.cloud.restart(name)?;
                    self.ses_down.remove(name);
                }
            }
            (Fault::ControllerCrash, true) => {
                // A random part of what it had not synced survives.
                world.kill_controller_at(leader, |_, unsynced| {
                    (rt::random_u64() % (unsynced as u64 + 1)) as usize
                });
                self.crashed.insert(leader);
                *victim = Victim::Controller(leader);
            }
            (Fault::ControllerIsolated, true) => {
                world.isolate_controller_at(leader, true);
                self.isolated.insert(leader);
                *victim = Victim::Controller(leader);
            }
            (Fault::ControllerCrash, false) => {
                if let Victim::Controller(n) = *victim {
                    world.restart_controller_at(n);
                    self.crashed.remove(&n);
                }
            }
            (Fault::ControllerIsolated, false) => {
                if let Victim::Controller(n) = *victim {
                    world.isolate_controller_at(n, false);
                    self.isolated.remove(&n);
                }
            }
            (Fault::ControllerPaused, true) => {
                madsim::runtime::Handle::current().pause(world.controller_node(leader));
                self.paused.insert(leader);
                *victim = Victim::Controller(leader);
            }
            (Fault::ControllerPaused, false) => {
                if let Victim::Controller(n) = *victim {
                    madsim::runtime::Handle::current().resume(world.controller_node(n));
                    self.paused.remove(&n);
                }
            }
            (Fault::OriginCrash, true) => {
                madsim::runtime::Handle::current().kill("origin-2");
                self.origin_down_since = Some(t);
            }
            (Fault::OriginCrash, false) => {
                madsim::runtime::Handle::current().restart("origin-2");
                self.origin_down_since = None;
            }
            (Fault::GarpLoss, on) => world.cloud.set_garp_loss(on),
            (Fault::ControllerOneWay, true) => {
                let outbound = rt::random_u64().is_multiple_of(2);
                world.one_way_cut_controller_at(leader, outbound, true);
                self.one_way.insert(leader, outbound);
                *victim = Victim::Controller(leader);
                detail = (if outbound { "sending" } else { "receiving" }).into();
            }
            (Fault::ControllerOneWay, false) => {
                if let Victim::Controller(n) = *victim {
                    if let Some(outbound) = self.one_way.remove(&n) {
                        world.one_way_cut_controller_at(n, outbound, false);
                    }
                }
            }
            (Fault::PacketLoss, true) => {
                let percent = pick(&[1, 5, 20]);
                world.set_udp_loss(percent as f64 / 100.0);
                self.loss_until = Some(Duration::MAX);
                detail = format!("{percent}%");
            }
            (Fault::PacketLoss, false) => {
                world.set_udp_loss(0.0);
                self.loss_until = Some(t + LOSS_TAIL);
            }
            (Fault::Latency, true) => {
                let max = Duration::from_millis(pick(&[20, 50, 100]));
                world.set_latency(Duration::from_millis(1)..max);
                self.latency_max = Some(max);
                detail = format!("up to {} ms", max.as_millis());
            }
            (Fault::Latency, false) => {
                world.set_latency(sim::world::NORMAL_LATENCY);
                self.latency_max = None;
            }
            (Fault::ClockSkew, true) => {
                let percent = pick(&[50, 80, 125, 200]);
                world.skew_controller_at(leader, percent as f64 / 100.0);
                *victim = Victim::Controller(leader);
                detail = format!("x{:.2}", percent as f64 / 100.0);
            }
            (Fault::ClockSkew, false) => {
                if let Victim::Controller(n) = *victim {
                    world.skew_controller_at(n, 1.0);
                }
            }
            (Fault::SlowDisk, true) => {
                let ms = pick(&[5, 50, 200]);
                world.slow_disk_at(leader, Duration::from_millis(ms));
                *victim = Victim::Controller(leader);
                detail = format!("{ms} ms a sync");
            }
            (Fault::SlowDisk, false) => {
                if let Victim::Controller(n) = *victim {
                    world.slow_disk_at(n, Duration::ZERO);
                }
            }
            (Fault::PairLinkCut | Fault::ActiveControllerCut, _) => {
                bail!("{} is a pair fault", fault.name())
            }
        }
        Ok(detail)
    }

    /// Whether a failed DNS query or ARP resolve at `t` is the packet
    /// loss's doing (while it lasts, and [`LOSS_TAIL`] after).
    fn lossy(&self, t: Duration) -> bool {
        self.loss_until.is_some_and(|until| t <= until)
    }

    /// How long a client request may take now: [`PAIR_TIMEOUT`], plus
    /// the round trips a slow network adds (a request crosses the network
    /// about four times each way between client, SE and origin).
    fn request_limit(&self) -> Duration {
        PAIR_TIMEOUT + self.latency_max.map_or(Duration::ZERO, |max| max * 8)
    }
}

/// The full fabric under a swarm of faults: the SE holding a VIP killed,
/// the Controller leader crashed (losing a random part of its unsynced
/// log), cut off both ways or one way, paused, with a skewed clock or a
/// slow disk; an origin crashed; datagrams lost, the network slow, GARPs
/// lost. Safety, on every step:
/// - every request to each virtual service succeeds, except within
///   [`CONVERGE_DEADLINE`] of an SE crash (extended while no Controller
///   that can reach the SEs leads, and after each leader change: the move
///   needs a leader, and a new one first waits for the SEs to find it), and
///   ARP resolves lost to packet loss;
/// - at most one leader per term;
/// - acknowledged writes of a probe object get rising versions, and the
///   last one (or one of unknown outcome) is what a linearizable read
///   returns after liveness;
/// - no two SEs hold one VIP for longer than [`DUAL_HOLD_GRACE`] in a row;
/// - no SE's served config version goes backwards within one boot;
/// - the DNS always answers the GSLB name with an address (one origin
///   never fails; a query lost to packet loss is excused), and never with
///   the crashed origin once it has been down for [`DNS_DETECTION`].
///
/// Liveness: once faults heal, a leader is elected, every SE serves the
/// newest config, each VIP has one holder, 99.9% of requests succeed and
/// the DNS hands out both sites again.
pub async fn fabric_under_faults(params: Params, trace: Trace) -> Result<Outcome> {
    let started = rt::now();
    let mut laps = Laps::start();
    let world = World::builder()
        .config(FABRIC_CONFIG)
        .controllers(FABRIC_CONTROLLERS)
        .ses(FABRIC_SES)
        .build()
        .await?;
    for vs in FABRIC_VSS {
        world
            .wait_until(
                "every virtual service serves after boot",
                CONVERGE_DEADLINE * 3,
                || async {
                    matches!(world.http_get_vs_within(vs, "/", PAIR_TIMEOUT).await,
                        Ok(r) if r.status == 200)
                },
            )
            .await?;
    }
    let vips: Vec<std::net::IpAddr> = FABRIC_VSS
        .iter()
        .map(|vs| world.vip_of(vs).map(|v| v.ip()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("a virtual service has no VIP"))?;
    let crashed_origin = std::net::IpAddr::from(CRASHED_ORIGIN_IP);

    let mut windows = plan(&Fault::FABRIC, params.phase);
    laps.lap("boot");
    let mut outcome = Outcome {
        scenario: Scenario::Fabric.name(),
        faults: windows.iter().map(|w| w.fault).collect(),
        trace,
        ..Outcome::default()
    };
    let mut victims = vec![Victim::None; windows.len()];
    let phase_start = rt::now();
    let mut faults = FabricFaults::default();
    let watch = HolderWatch::start(
        world.cloud.clone(),
        FABRIC_VSS
            .iter()
            .copied()
            .zip(vips.iter().copied())
            .collect(),
        outcome.trace.clone(),
        phase_start,
    );
    let mut outage_started: Vec<Option<Duration>> = vec![None; vips.len()];
    let mut last_leader = None;
    let mut origin_last_given: Option<Duration> = None;
    let mut leaderless_since: Option<Duration> = None;
    let mut lag = ConfigLag::default();
    let mut leaders_by_term = std::collections::BTreeMap::new();
    let probe = std::cell::RefCell::new(ConfigProbe::default());
    let safety_over = std::cell::Cell::new(false);
    let mut step = 0u32;
    let safety = async {
        while rt::now() - phase_start < params.phase {
            let t = rt::now() - phase_start;
            if let Some(why) = probe.borrow().violation.clone() {
                bail!("safety: {why}");
            }
            one_leader_per_term(&world, &mut leaders_by_term)?;
            for (i, w) in windows.iter_mut().enumerate() {
                let on = if w.phase == Phase::Planned && t >= w.start {
                    w.phase = Phase::Down;
                    true
                } else if w.phase == Phase::Down && t >= w.start + w.down_for {
                    w.phase = Phase::Healed;
                    false
                } else {
                    continue;
                };
                let detail = faults.toggle(&world, &vips, w.fault, on, &mut victims[i], t)?;
                let whom = match &victims[i] {
                    Victim::Se(name) => name.clone(),
                    Victim::Controller(n) => format!("controller-{}", n + 1),
                    Victim::None => String::new(),
                };
                let verb = if on { "inject" } else { "heal" };
                let line = [verb, w.fault.name(), &whom, &detail]
                    .into_iter()
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                outcome.trace.note(t, line);
            }

            // A leader that can reach the SEs: the one able to move a VS.
            let leader = (0..world.controller_count()).find(|i| {
                !faults.isolated.contains(i)
                    && !faults.crashed.contains(i)
                    && !faults.paused.contains(i)
                    && !faults.one_way.contains_key(i)
                    && world
                        .controller_at(*i)
                        .is_some_and(|c| c.node().is_leader())
            });
            let leader_changed = leader != last_leader;
            if leader_changed {
                let name = leader.map_or("none".to_string(), |i| format!("controller-{}", i + 1));
                outcome.trace.note(t, format_args!("leader {name}"));
                match (leader, leaderless_since) {
                    (None, None) => leaderless_since = Some(t),
                    (Some(_), Some(since)) => {
                        outcome.elections_ms.push((t - since).as_millis() as u64);
                        leaderless_since = None;
                    }
                    _ => {}
                }
                last_leader = leader;
            }
            if let Some(i) = leader {
                lag.observe(&world, i, &faults.ses_down, t, &mut outcome);
            }
            // The move needs a leader, and a new one first gives the SEs of
            // the last placement their time to find it (the rejoin bound,
            // 6 s here): an SE crash's outage runs until
            // [`CONVERGE_DEADLINE`] after the last leader change
            // (ten-minute seed 15: the leader changed 7.5 s into an outage).
            if (leader.is_none() || leader_changed)
                && (!faults.ses_down.is_empty() || t < faults.excused_until)
            {
                faults.excused_until = faults.excused_until.max(t + CONVERGE_DEADLINE);
            }

            watch.check(&mut outcome)?;

            let v = (step as usize) % FABRIC_VSS.len();
            match world
                .http_get_vs_within(FABRIC_VSS[v], "/", faults.request_limit())
                .await
            {
                Ok(r) if r.status == 200 => {
                    outcome.requests_ok += 1;
                    if let Some(from) = outage_started[v].take() {
                        let ms = (t - from).as_millis() as u64;
                        outcome.outages_ms.push(ms);
                        let by = r.se.as_deref().unwrap_or("?");
                        outcome.trace.note(
                            t,
                            format_args!("{} served again by {by} after {ms} ms", FABRIC_VSS[v]),
                        );
                    }
                }
                Err(e)
                    if faults.lossy(t) && format!("{e:#}").contains(sim::world::NO_ARP_ANSWER) =>
                {
                    outcome.lost_to_packet_loss += 1;
                    outcome.trace.note(
                        t,
                        format_args!("ARP for {} lost (packet loss)", FABRIC_VSS[v]),
                    );
                }
                other => {
                    if t >= faults.excused_until {
                        let why = match other {
                            Ok(r) => format!("status {}", r.status),
                            Err(e) => format!("{e:#}"),
                        };
                        bail!(
                        "safety: a request to {} failed at {t:?}, no SE crash in the last {CONVERGE_DEADLINE:?}: {why}",
                        FABRIC_VSS[v]
                    );
                    }
                    outcome.requests_failed += 1;
                    if outage_started[v].is_none() {
                        outcome
                            .trace
                            .note(t, format_args!("a request to {} failed", FABRIC_VSS[v]));
                    }
                    outage_started[v].get_or_insert(t);
                }
            }

            if step.is_multiple_of(DNS_EVERY) {
                let reply = world
                    .dns(FABRIC_NAME, hickory_proto::rr::RecordType::A)
                    .await;
                let addrs = match reply {
                    Ok(r)
                        if r.rcode == hickory_proto::op::ResponseCode::NoError
                            && !r.addrs.is_empty() =>
                    {
                        r.addrs
                    }
                    Ok(r) => {
                        bail!("safety: the DNS gave no address for {FABRIC_NAME} at {t:?}: {r:?}")
                    }
                    Err(_) if faults.lossy(t) => {
                        outcome.lost_to_packet_loss += 1;
                        outcome.trace.note(t, "DNS query lost (packet loss)");
                        Vec::new()
                    }
                    Err(e) => bail!("safety: no DNS answer for {FABRIC_NAME} at {t:?}: {e:#}"),
                };
                if let Some(since) = faults.origin_down_since {
                    if addrs.contains(&crashed_origin) && t - since > DNS_DETECTION {
                        bail!(
                        "safety: the DNS handed out {crashed_origin} at {t:?}, down since {since:?}"
                    );
                    }
                }
                // Traced: the last time the crashed origin was handed out while
                // down (the weighted choice itself changes on every answer).
                if let Some(since) = faults.origin_down_since {
                    if addrs.contains(&crashed_origin) {
                        origin_last_given = Some(t - since);
                    }
                } else if let Some(after) = origin_last_given.take() {
                    outcome.stale_dns_ms.push(after.as_millis() as u64);
                    outcome.trace.note(
                        t,
                        format_args!(
                            "DNS last handed out {crashed_origin} {} ms into its outage",
                            after.as_millis()
                        ),
                    );
                }
            }

            let regressions = world.cloud.applied_regressions();
            if !regressions.is_empty() {
                bail!("safety: a served config version went backwards: {regressions:?}");
            }
            step += 1;
            rt::sleep(REQUEST_GAP).await;
        }
        Ok(())
    };
    let (safety, ()) = tokio::join!(
        async {
            let r = safety.await;
            safety_over.set(true);
            r
        },
        write_probes(&world, &probe, &safety_over)
    );
    safety?;

    watch.check(&mut outcome)?;
    watch.stop();
    laps.lap("safety");
    // Liveness: heal everything, then converge.
    for (i, w) in windows.iter().enumerate() {
        if w.phase != Phase::Down {
            continue;
        }
        let t = rt::now() - phase_start;
        faults.toggle(&world, &vips, w.fault, false, &mut victims[i], t)?;
        outcome.trace.note(
            t,
            format_args!("heal {} for the liveness phase", w.fault.name()),
        );
    }
    world
        .wait_until(
            "liveness: every SE connected to a leader on the newest config",
            CONVERGE_DEADLINE * 2,
            || async {
                world.leader_index().is_some()
                    && world.controller().is_some_and(|c| {
                        let newest = c.desired().se_version();
                        let ses = c.ses();
                        ses.iter()
                            .filter(|s| s.connected && s.applied_version == newest)
                            .count()
                            >= FABRIC_SES
                    })
            },
        )
        .await?;
    world
        .wait_until(
            "liveness: one SE holds each VIP",
            CONVERGE_DEADLINE,
            || async { vips.iter().all(|vip| world.cloud.holders(*vip).len() == 1) },
        )
        .await?;
    let mut ok = 0;
    for i in 0..LIVENESS_REQUESTS {
        let vs = FABRIC_VSS[i as usize % FABRIC_VSS.len()];
        if matches!(world.http_get_vs_within(vs, "/", Duration::from_secs(2)).await,
            Ok(r) if r.status == 200)
        {
            ok += 1;
        }
    }
    if ok * 1000 < LIVENESS_REQUESTS * 999 {
        bail!("liveness: only {ok} of {LIVENESS_REQUESTS} requests succeeded after faults healed");
    }
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    world
        .wait_until(
            "liveness: the DNS hands out both sites",
            CONVERGE_DEADLINE,
            || async {
                if let Ok(r) = world
                    .dns(FABRIC_NAME, hickory_proto::rr::RecordType::A)
                    .await
                {
                    seen.borrow_mut().extend(r.addrs);
                }
                seen.borrow().len() == 2
            },
        )
        .await?;
    probe
        .into_inner()
        .check_kept(&world, &outcome.trace, rt::now() - phase_start)
        .await?;
    laps.lap("liveness");
    outcome.laps = laps.done;
    outcome.sim_secs = (rt::now() - started).as_secs_f64();
    outcome.trace.note(
        rt::now() - phase_start,
        format_args!("liveness: {ok} of {LIVENESS_REQUESTS} served"),
    );
    Ok(outcome)
}

/// BENCHMARKS.md invariant 2, "at most one leader per term", as openraft
/// defines leadership: its default election names a leader by (term, node
/// id), and a node with a higher id may be elected in a term that already
/// had a leader, which it supersedes (voters grant the higher leader id);
/// a lower id can never win after a higher one did (seed 836 of the mixed
/// swarm saw nodes 2 and 3 lead term 2, in that order). So: every
/// Controller up that calls itself leader, at each step, against the
/// leaders seen before (`seen`: term -> node ids): a node new to a term
/// must have a higher id than every leader that term had.
fn one_leader_per_term(
    world: &World,
    seen: &mut std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>,
) -> Result<()> {
    for c in (0..world.controller_count()).filter_map(|i| world.controller_at(i)) {
        let (term, leader, id) = {
            let m = c.node().raft().metrics();
            let m = m.borrow();
            (m.current_term, m.current_leader, m.id)
        };
        if leader != Some(id) {
            continue;
        }
        let leaders = seen.entry(term).or_default();
        if let Some(&other) = leaders
            .last()
            .filter(|&&l| l > id && !leaders.contains(&id))
        {
            bail!("safety: node {id} was elected in term {term} after node {other} led it");
        }
        leaders.insert(id);
    }
    Ok(())
}

/// The config object the full scenario keeps rewriting through the leader.
const PROBE_POOL: &str = "chaos-probe";
/// Its server's port is this plus the write's number.
const PROBE_PORT_BASE: u64 = 1000;
/// A write every this long, each given up after [`PROBE_TIMEOUT`].
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// BENCHMARKS.md invariant 2, "no acknowledged config write is ever lost or
/// reordered", for one writer: each write names a number one past the last;
/// acknowledged ones must get rising versions, and the object must end with
/// the last acknowledged number or one whose outcome was unknown (such a
/// write may land after it), never an earlier acknowledged one.
#[derive(Debug, Default)]
struct ConfigProbe {
    /// The number of the last write sent.
    sent: u64,
    /// (number, version) of each acknowledged write, in order.
    acked: Vec<(u64, u64)>,
    violation: Option<String>,
}

impl ConfigProbe {
    /// After the liveness phase converged: a linearizable read (through
    /// any node, confirmed by the leader's quorum) holds what it must. Not a
    /// local read of "the leader": a node paused until the liveness phase
    /// still calls itself leader of its old term for a moment, with an old
    /// state (seeds 196 and 281 read write 8 of 10 there).
    async fn check_kept(&self, world: &World, trace: &Trace, t: Duration) -> Result<()> {
        let Some(&(last, version)) = self.acked.last() else {
            return Ok(());
        };
        let mut view = None;
        for i in 0..world.controller_count() {
            let read = world.on_controller(i, |c| async move { c.node().read().await });
            if let Ok(Ok(Ok(v))) = rt::timeout(PROBE_TIMEOUT, read).await {
                view = Some(v);
                break;
            }
        }
        let view =
            view.ok_or_else(|| anyhow!("liveness: no node gave a linearizable read of the probe"))?;
        let held = view
            .objects
            .get("pools", PROBE_POOL)
            .and_then(|s| {
                s.body["servers"][0]
                    .as_str()?
                    .rsplit(':')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .map(|port| port.saturating_sub(PROBE_PORT_BASE));
        // The last acknowledged write, or one whose outcome was unknown: it
        // may land at any time after it was sent, even after later ones
        // (seeds 196 and 281 end on a write that timed out at the client,
        // sent before the last acknowledged one: through a paused node or
        // one cut one way, a write can reach the leader seconds later).
        // Never an earlier acknowledged one.
        let acked_before: std::collections::BTreeSet<u64> = self
            .acked
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != last)
            .collect();
        if !held.is_some_and(|n| n == last || (n <= self.sent && !acked_before.contains(&n))) {
            bail!(
                "safety: write {last} of {PROBE_POOL} was acknowledged (version {version}), but the leader holds {held:?} (writes sent: {})",
                self.sent
            );
        }
        trace.note(
            t,
            format_args!(
                "config probe: {} of {} writes acknowledged, write {} held",
                self.acked.len(),
                self.sent,
                held.unwrap_or(0)
            ),
        );
        Ok(())
    }
}

/// Write the probe through whichever node leads, every [`PROBE_EVERY`],
/// until `over`.
async fn write_probes(
    world: &World,
    probe: &std::cell::RefCell<ConfigProbe>,
    over: &std::cell::Cell<bool>,
) {
    loop {
        rt::sleep(PROBE_EVERY).await;
        if over.get() {
            return;
        }
        let Some(i) = world.leader_index() else {
            continue;
        };
        let number = {
            let mut p = probe.borrow_mut();
            p.sent += 1;
            p.sent
        };
        let cmd = fabric::cluster::Command::Put {
            kind: "pools".into(),
            name: PROBE_POOL.into(),
            tenant: "admin".into(),
            body: serde_json::json!({
                "name": PROBE_POOL,
                "servers": [format!("10.0.3.1:{}", PROBE_PORT_BASE + number)],
            }),
            if_version: None,
        };
        let write = world.on_controller(i, move |c| async move { c.node().write(cmd).await });
        if let Ok(Ok(Ok(version))) = rt::timeout(PROBE_TIMEOUT, write).await {
            let mut p = probe.borrow_mut();
            if let Some(&(before, at)) = p.acked.last() {
                if version <= at {
                    let why = format!("write {number} of {PROBE_POOL} was acknowledged at version {version}, not after write {before}'s {at}");
                    p.violation.get_or_insert(why);
                }
            }
            p.acked.push((number, version));
        }
    }
}
