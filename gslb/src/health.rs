//! Member health for GSLB: reports from several sources combined by quorum.
//!
//! Pure: reports come in with the time they were made, snapshots go out for
//! the engine. A source is one observer of a member: a DNS server probing it
//! from its site (`dns:<site>`), or the SEs that run its virtual service
//! (`se:<name>`). Each source's report is already filtered by rise/fall
//! hysteresis (see [`Hysteresis`], which the DNS-side prober uses, and the
//! SEs' own monitors); the tracker counts the sources that reported within
//! `stale_secs` and calls a member up when at least the quorum of them see it
//! up (the quorum, or all recent sources when fewer reported). With no
//! recent source the last verdict stays: a site cut off from the others
//! keeps answering on what it knew.

use std::collections::BTreeMap;
use std::time::Duration;

use fabric::model::GslbHealth;
use serde::Serialize;

use crate::policy::{MemberHealth, Service, ServiceHealth, State};

/// Most sources remembered per member; a report from a new source past it
/// replaces the stalest.
pub const SOURCES_MAX: usize = 32;

/// Rise/fall hysteresis of one probe stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    up: Option<bool>,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    /// Unknown until the first result; then `rise` successes in a row bring
    /// it up and `fall` failures in a row take it down. The first result
    /// decides at once (a fresh prober should not hold a dead member up).
    pub fn new(rise: u32, fall: u32) -> Self {
        Hysteresis {
            up: None,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Feed one probe result; the state after it.
    pub fn observe(&mut self, success: bool) -> bool {
        match self.up {
            None => {
                self.up = Some(success);
                self.streak = 0;
            }
            Some(up) if up == success => self.streak = 0,
            Some(_) => {
                self.streak += 1;
                let needed = if success { self.rise } else { self.fall };
                if self.streak >= needed {
                    self.up = Some(success);
                    self.streak = 0;
                }
            }
        }
        self.up.unwrap_or(success)
    }
}

/// A member's verdict changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The service.
    pub fqdn: String,
    /// The member's label.
    pub member: String,
    /// Before.
    pub from: StateName,
    /// After.
    pub to: StateName,
    /// Recent sources seeing it up, and recent sources in all.
    pub up_sources: usize,
    /// Recent sources.
    pub sources: usize,
}

/// A [`State`] as text in events and explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// No report yet.
    Unknown,
    /// Up.
    Up,
    /// Down.
    Down,
}

impl From<State> for StateName {
    fn from(s: State) -> Self {
        match s {
            State::Unknown => StateName::Unknown,
            State::Up => StateName::Up,
            State::Down => StateName::Down,
        }
    }
}

/// One source's last report on a member, as explain shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// The source.
    pub source: String,
    /// What it said.
    pub up: bool,
    /// How long ago, in milliseconds.
    pub age_ms: u64,
    /// Whether it still counts (younger than `stale_secs`).
    pub counted: bool,
}

#[derive(Debug, Clone)]
struct Tracked {
    label: String,
    vs: Option<String>,
    sources: BTreeMap<String, (bool, Duration)>,
    state: State,
    changed_at: Option<Duration>,
    last_good: bool,
}

#[derive(Debug, Clone)]
struct TrackedService {
    fqdn: String,
    health: GslbHealth,
    members: Vec<Tracked>,
}

/// The health of every GSLB member, by service in engine order.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    services: Vec<Option<TrackedService>>,
}

impl Tracker {
    /// Track the members of `services` (the engine's, in its order); state
    /// of members that were tracked before under the same service name and
    /// label is kept, so a config change does not forget health.
    pub fn reconfigure(&mut self, services: &[Option<Service>]) {
        let mut old: BTreeMap<(String, String), Tracked> = BTreeMap::new();
        for s in self.services.drain(..).flatten() {
            for m in s.members {
                old.insert((s.fqdn.clone(), m.label.clone()), m);
            }
        }
        self.services = services
            .iter()
            .map(|s| {
                let s = s.as_ref()?;
                let members = s
                    .members
                    .iter()
                    .map(|m| {
                        old.remove(&(s.fqdn.clone(), m.label.clone()))
                            .unwrap_or(Tracked {
                                label: m.label.clone(),
                                vs: m.vs.clone(),
                                sources: BTreeMap::new(),
                                state: State::Unknown,
                                changed_at: None,
                                last_good: false,
                            })
                    })
                    .collect();
                Some(TrackedService {
                    fqdn: s.fqdn.clone(),
                    health: s.health.clone(),
                    members,
                })
            })
            .collect();
    }

    /// `source` saw member `label` of service `fqdn` up or down at `now`.
    pub fn report(
        &mut self,
        fqdn: &str,
        label: &str,
        source: &str,
        up: bool,
        now: Duration,
    ) -> Vec<Change> {
        self.report_where(|s, m| s.fqdn == fqdn && m.label == label, source, up, now)
    }

    /// `source` saw virtual service `vs` up or down at `now`: a report on
    /// every member that is that VS.
    pub fn report_vs(&mut self, vs: &str, source: &str, up: bool, now: Duration) -> Vec<Change> {
        self.report_where(|_, m| m.vs.as_deref() == Some(vs), source, up, now)
    }

    fn report_where(
        &mut self,
        matches: impl Fn(&TrackedService, &Tracked) -> bool,
        source: &str,
        up: bool,
        now: Duration,
    ) -> Vec<Change> {
        for s in self.services.iter_mut().flatten() {
            let hit: Vec<usize> = (0..s.members.len())
                .filter(|&i| matches(s, &s.members[i]))
                .collect();
            for i in hit {
                let sources = &mut s.members[i].sources;
                if !sources.contains_key(source) && sources.len() >= SOURCES_MAX {
                    if let Some(stalest) = sources
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(k, _)| k.clone())
                    {
                        sources.remove(&stalest);
                    }
                }
                sources.insert(source.to_string(), (up, now));
            }
        }
        self.evaluate(now)
    }

    /// Re-decide every member at `now` (reports age out); the changes.
    pub fn evaluate(&mut self, now: Duration) -> Vec<Change> {
        let mut changes = Vec::new();
        for s in self.services.iter_mut().flatten() {
            let stale = Duration::from_secs(s.health.stale_secs as u64);
            for m in &mut s.members {
                let recent: Vec<bool> = m
                    .sources
                    .values()
                    .filter(|(_, at)| now.saturating_sub(*at) < stale)
                    .map(|(up, _)| *up)
                    .collect();
                if recent.is_empty() {
                    continue;
                }
                let ups = recent.iter().filter(|u| **u).count();
                let need = match s.health.quorum as usize {
                    0 => recent.len() / 2 + 1,
                    q => q.min(recent.len()),
                };
                let state = if ups >= need { State::Up } else { State::Down };
                if state != m.state {
                    // Unknown -> Up is how every member starts, not a move.
                    if !(m.state == State::Unknown && state == State::Up) {
                        m.changed_at = Some(now);
                    }
                    changes.push(Change {
                        fqdn: s.fqdn.clone(),
                        member: m.label.clone(),
                        from: m.state.into(),
                        to: state.into(),
                        up_sources: ups,
                        sources: recent.len(),
                    });
                    m.state = state;
                }
            }
            if s.members.iter().any(|m| m.state.usable()) {
                for m in &mut s.members {
                    m.last_good = m.state.usable();
                }
            }
        }
        changes
    }

    /// The health of every service at `now`, in engine order.
    pub fn snapshot(&self, now: Duration) -> Vec<ServiceHealth> {
        self.services
            .iter()
            .map(|s| {
                let Some(s) = s else {
                    return ServiceHealth::default();
                };
                let settle = Duration::from_secs(s.health.settle_secs as u64);
                ServiceHealth {
                    members: s
                        .members
                        .iter()
                        .map(|m| MemberHealth {
                            state: m.state,
                            settling: m
                                .changed_at
                                .is_some_and(|at| now.saturating_sub(at) < settle),
                            last_good: m.last_good,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Every report `source` made itself, as (service, member label, up,
    /// when): what a site shares with the others.
    pub fn reports_of(&self, source: &str) -> Vec<(String, String, bool, Duration)> {
        self.services
            .iter()
            .flatten()
            .flat_map(|s| {
                s.members.iter().filter_map(move |m| {
                    m.sources
                        .get(source)
                        .map(|(up, at)| (s.fqdn.clone(), m.label.clone(), *up, *at))
                })
            })
            .collect()
    }

    /// The sources' last reports on a member, for explain.
    pub fn sources(&self, service: usize, member: usize, now: Duration) -> Vec<SourceReport> {
        let Some(Some(s)) = self.services.get(service) else {
            return Vec::new();
        };
        let Some(m) = s.members.get(member) else {
            return Vec::new();
        };
        let stale = Duration::from_secs(s.health.stale_secs as u64);
        m.sources
            .iter()
            .map(|(source, (up, at))| {
                let age = now.saturating_sub(*at);
                SourceReport {
                    source: source.clone(),
                    up: *up,
                    age_ms: age.as_millis() as u64,
                    counted: age < stale,
                }
            })
            .collect()
    }
}
