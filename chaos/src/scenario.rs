//! Seeded fault scenarios over the simulated fabric.
//!
//! A scenario runs a safety phase (faults on, invariants checked as it
//! goes) and then a liveness phase (faults healed, the fabric must converge
//! by a deadline). It returns what it observed, or the first invariant that
//! failed.

use std::time::Duration;

use anyhow::{bail, Result};
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
}

impl Fault {
    /// Every fault type, for swarm selection.
    pub const ALL: [Fault; 4] = [
        Fault::SeCrash,
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
        }
    }
}

/// What one seed observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
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
    }
    Ok(())
}

fn heal(world: &World, fault: Fault) -> Result<()> {
    match fault {
        Fault::SeCrash => world.cloud.restart("se-1")?,
        Fault::ControllerCrash => world.restart_controller(),
        Fault::ControllerIsolated => world.isolate_controller_at(0, false),
        Fault::OriginCrash => madsim::runtime::Handle::current().restart(CRASHED_ORIGIN),
    }
    Ok(())
}

/// Swarm testing (as FoundationDB and TigerBeetle's VOPR do): each seed
/// turns on its own subset of fault types (each with probability 1/2, at
/// least one) at its own intensity (how long a fault may last), so that
/// some seeds meet rare combinations at full strength instead of every
/// seed meeting every fault mildly.
fn plan() -> Vec<Window> {
    let mut windows = Vec::new();
    let pick = |lo: u64, hi: u64| Duration::from_millis(lo + rt::random_u64() % (hi - lo));
    let mut enabled: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|_| rt::random_u64().is_multiple_of(2))
        .collect();
    if enabled.is_empty() {
        enabled.push(Fault::ALL[(rt::random_u64() % Fault::ALL.len() as u64) as usize]);
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

    let mut windows = plan();
    let mut outcome = Outcome {
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
                    Fault::OriginCrash => {}
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
                    Fault::OriginCrash => {}
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
                    let newest = c.desired().version;
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
