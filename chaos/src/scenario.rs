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
/// Length of the safety phase.
pub const FAULT_PHASE: Duration = Duration::from_secs(30);
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
    /// Longest stretch two SEs both held the VIP (pair scenario), ms.
    pub dual_hold_ms: u64,
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
        Fault::PairLinkCut | Fault::ActiveControllerCut | Fault::GarpLoss => {
            bail!("{} is a pair fault", fault.name())
        }
    }
    Ok(())
}

fn heal(world: &World, fault: Fault) -> Result<()> {
    match fault {
        Fault::SeCrash => world.cloud.restart("se-1")?,
        Fault::ControllerCrash => world.restart_controller(),
        Fault::ControllerIsolated => world.isolate_controller_at(0, false),
        Fault::OriginCrash => madsim::runtime::Handle::current().restart(CRASHED_ORIGIN),
        Fault::PairLinkCut | Fault::ActiveControllerCut | Fault::GarpLoss => {
            bail!("{} is a pair fault", fault.name())
        }
    }
    Ok(())
}

/// Swarm testing (as FoundationDB and TigerBeetle's VOPR do): each seed
/// turns on its own subset of fault types (each with probability 1/2, at
/// least one) at its own intensity (how long a fault may last), so that
/// some seeds meet rare combinations at full strength instead of every
/// seed meeting every fault mildly.
fn plan(types: &[Fault]) -> Vec<Window> {
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
    for fault in enabled {
        windows.push(Window {
            fault,
            start: pick(1_000, 20_000),
            down_for: pick(100, longest),
            phase: Phase::Planned,
        });
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
pub async fn slice_under_crashes() -> Result<Outcome> {
    let started = rt::now();
    let world = World::builder().build().await?;
    world
        .wait_until("the VIP serves after boot", CONVERGE_DEADLINE, || async {
            matches!(world.http_get("/").await, Ok(r) if r.status == 200)
        })
        .await?;

    let mut windows = plan(&Fault::SLICE);
    let mut outcome = Outcome {
        scenario: "slice_under_crashes",
        faults: windows.iter().map(|w| w.fault).collect(),
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

    while rt::now() - phase_start < FAULT_PHASE {
        let t = rt::now() - phase_start;
        for w in windows.iter_mut() {
            if w.phase == Phase::Planned && t >= w.start {
                w.phase = Phase::Down;
                inject(&world, w.fault)?;
                match w.fault {
                    Fault::SeCrash => se_down = true,
                    Fault::ControllerCrash => controller_crashed = true,
                    Fault::ControllerIsolated => controller_isolated = true,
                    _ => {}
                }
            } else if w.phase == Phase::Down && t >= w.start + w.down_for {
                w.phase = Phase::Healed;
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
                    outcome.outages_ms.push((t - from).as_millis() as u64);
                }
            }
            other => {
                if settled {
                    bail!("safety: request failed at {t:?} while the SE was up and settled: {other:?}");
                }
                outcome.requests_failed += 1;
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
    outcome.sim_secs = (rt::now() - started).as_secs_f64();
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
pub async fn pair_under_faults() -> Result<Outcome> {
    let started = rt::now();
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
    let mut windows = plan(&Fault::PAIR);
    let mut outcome = Outcome {
        scenario: "pair_under_faults",
        faults: windows.iter().map(|w| w.fault).collect(),
        ..Outcome::default()
    };
    let mut victims: Vec<Option<String>> = vec![None; windows.len()];
    let phase_start = rt::now();
    let mut dual_since: Option<Duration> = None;
    let mut outage_started: Option<Duration> = None;
    while rt::now() - phase_start < FAULT_PHASE {
        let t = rt::now() - phase_start;
        for (i, w) in windows.iter_mut().enumerate() {
            if w.phase == Phase::Planned && t >= w.start {
                w.phase = Phase::Down;
                pair_fault(&world, w.fault, true, &mut victims[i])?;
            } else if w.phase == Phase::Down && t >= w.start + w.down_for {
                w.phase = Phase::Healed;
                pair_fault(&world, w.fault, false, &mut victims[i])?;
            }
        }
        let held_by = holders(&world);
        if held_by.len() > 1 {
            let since = *dual_since.get_or_insert(t);
            let dual = t - since;
            outcome.dual_hold_ms = outcome.dual_hold_ms.max(dual.as_millis() as u64);
            if dual > DUAL_HOLD_GRACE {
                bail!("safety: {held_by:?} all held the VIP for {dual:?} (since {since:?})");
            }
        } else {
            dual_since = None;
        }
        match world.http_get_within("/", PAIR_TIMEOUT).await {
            Ok(r) if r.status == 200 => {
                outcome.requests_ok += 1;
                if let Some(from) = outage_started.take() {
                    outcome.outages_ms.push((t - from).as_millis() as u64);
                }
            }
            _ => {
                outcome.requests_failed += 1;
                outage_started.get_or_insert(t);
            }
        }
        rt::sleep(PAIR_PACE).await;
    }
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
    outcome.sim_secs = (rt::now() - started).as_secs_f64();
    Ok(outcome)
}
