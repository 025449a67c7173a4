//! The Controller: holds the desired state and pushes each SE its share.
//!
//! The desired state lives in the Raft state machine of this node's
//! [`ClusterNode`] (one or three nodes). Every node serves SE sessions from
//! the state it has applied: followers trail the leader by a heartbeat, and
//! while the cluster is headless each node keeps serving what it has, so
//! SEs keep their config (an SE never goes backwards: it refuses older
//! versions). SE status is kept by the node the SE is connected to.
//!
//! Each SE session runs on its own task: a reader task turns frames into a
//! bounded channel (so the session loop never cancels a half-read frame),
//! and the session loop reacts to what arrives (`on_*`) and to new desired
//! state (push the new [`SeConfig`]).

mod touch;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::{ClusterError, ClusterNode, Command, Desired, Refusal};
use crate::model::Config;
use crate::pki;
use crate::proto::{self, ControllerMessage, SeConfig, SeMessage, PROTO_VERSION};
use crate::rt;

/// Most events kept; older ones are dropped first.
pub const MAX_EVENTS: usize = 4096;
/// Most SE sessions served at once.
pub const MAX_SE_SESSIONS: usize = 1024;
/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats an SE may miss before its session is dropped.
pub const MISSED_HEARTBEATS: u32 = 3;
/// How often the leader looks at placement even when nothing was reported.
pub const PLACEMENT_TICK: Duration = Duration::from_millis(250);
/// How long auto-healing waits for an SE it created to say hello before
/// it tries again.
pub const HEAL_TIMEOUT: Duration = Duration::from_secs(60);
/// An SE of an auto-healing group that has been down this many times the
/// detection time is deleted through the cloud connector, once the group
/// has as many SEs up as it wants.
pub const DELETE_AFTER_DETECTIONS: u32 = 4;

/// Placement waits until no SE has said hello for this long (and this long
/// after the node became leader): SEs arriving together (a fresh fabric, a
/// new leader) are all seen before anything is placed, so the first SE in
/// does not get everything.
pub const PLACEMENT_QUIET: Duration = Duration::from_millis(500);
/// A gap between two runs of the placement loop longer than this is a
/// stall of this node (`notice_stall`): four ticks, below the default SE
/// detection time (1.5 s), above a placement write's commit on a slow disk.
pub const STALL_AFTER: Duration = PLACEMENT_TICK.saturating_mul(4);
/// What a node that is not the leader tells an SE saying hello (the SE
/// tries the next Controller address at once).
pub const NOT_LEADER: &str = "not the leader";

/// What the Controller knows of one SE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeStatus {
    /// SE name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Which boot of the SE this is (see `proto::SeMessage::Hello`).
    pub incarnation: u64,
    /// Whether a session is up now.
    pub connected: bool,
    /// Last config version it acknowledged.
    pub applied_version: u64,
    /// Address its session came from.
    pub addr: SocketAddr,
    /// Its latest traffic counters (cumulative since it started), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<crate::stats::SeStats>,
    /// When they came (ms since the Unix epoch; 0: never).
    pub stats_unix_ms: u64,
    /// Where it takes scale-out hand-offs, if it does (and its group's
    /// data-path beats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<SocketAddr>,
    /// How long ago an SE of its group last reported hearing its data-path
    /// beats, ms (None: none did lately). Without a session but heard by
    /// its peers, the SE is *partitioned*: alive, serving, kept where it is
    /// (docs/placement.md, "Partitioned SEs").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_heard_ms_ago: Option<u64>,
}

/// A state change worth telling an operator about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Wall-clock time, ms since the Unix epoch.
    pub unix_ms: u64,
    /// What kind of change (`se_up`, `se_down`, `config_applied`, ...).
    pub kind: &'static str,
    /// The object it concerns.
    pub object: String,
    /// Why, in words.
    pub reason: String,
}

/// A Controller node.
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: ClusterNode,
    desired: watch::Receiver<Arc<Desired>>,
    /// TLS settings of the SE listener and the CA fingerprint they were made for.
    tls: Mutex<Option<(String, Arc<rustls::ServerConfig>)>>,
    /// Addresses the SE listener is bound to (named in the node certificate).
    listen_ips: Mutex<Vec<std::net::IpAddr>>,
    ses: Mutex<BTreeMap<String, (u64, SeStatus)>>,
    events: Mutex<VecDeque<Event>>,
    next_session: Mutex<u64>,
    /// Legacy active/standby pairs: who may hold their VIPs (docs/ha.md).
    arbiter: Mutex<crate::ha::Arbiter>,
    /// Whether this node leads, and since when (SE sessions and placement
    /// are the leader's).
    leader: watch::Sender<Option<Instant>>,
    /// When each SE was last heard from (placement's failure detection).
    heard: Mutex<BTreeMap<String, Instant>>,
    /// When an SE of its group last heard each SE's data-path beats, as
    /// their heartbeats reported (docs/placement.md, "Partitioned SEs").
    heard_by_peers: Mutex<BTreeMap<String, Instant>>,
    /// When an SE last said hello.
    last_hello: Mutex<Option<Instant>>,
    /// The Raft metrics as placement last read them, and when they last
    /// changed (`quorum_fresh`).
    metrics_seen: Mutex<(watch::Receiver<crate::cluster::RaftMetrics>, Instant)>,
    /// This leader's times without a quorum heard lately, or not running,
    /// and the patience they owe each SE (SEs' silence then may be this
    /// node's own isolation).
    touch: Mutex<touch::Touch>,
    /// When the placement loop last ran (`placement_loop`: a stall of this
    /// node counts as being out of touch).
    placement_ran: Mutex<Option<Instant>>,
    /// Where auto-healing gets SEs from, and what they dial.
    cloud: Mutex<Option<Cloud>>,
    /// Per group: the SE auto-healing created and waits for, since when.
    healing: Mutex<BTreeMap<String, (String, Instant)>>,
    /// Per group: when autoscale last acted.
    scaled: Mutex<BTreeMap<String, Instant>>,
    /// Per virtual service of a predictive group: its learned load pattern
    /// (this node's memory: a new leader learns again).
    forecasts: Mutex<BTreeMap<String, crate::forecast::LoadForecast>>,
    /// Wakes the placement loop (an SE came or went).
    placement_kick: tokio::sync::Notify,
}

/// What predictive autoscale expects of one virtual service soon.
#[derive(Debug, Clone)]
struct Forecast {
    vs: String,
    /// The highest load learned for the time ahead (CPU percent, summed
    /// over the SEs carrying it).
    load: f64,
    /// Periods that taught it.
    periods: u32,
    /// SEs that load needs at `max_cpu_percent` each (within the group's
    /// scale-out bounds).
    ses: u32,
}

impl Controller {
    /// The Controller of cluster node `node`. Records an event whenever the
    /// leader or the applied desired state changes.
    pub fn new(node: ClusterNode) -> Controller {
        let inner = Inner {
            desired: node.desired(),
            metrics_seen: Mutex::new((node.raft().metrics(), rt::now())),
            node,
            tls: Mutex::new(None),
            listen_ips: Mutex::new(Vec::new()),
            ses: Mutex::new(BTreeMap::new()),
            events: Mutex::new(VecDeque::new()),
            next_session: Mutex::new(0),
            arbiter: Mutex::new(crate::ha::Arbiter::new()),
            leader: watch::channel(None).0,
            heard: Mutex::new(BTreeMap::new()),
            heard_by_peers: Mutex::new(BTreeMap::new()),
            last_hello: Mutex::new(None),
            touch: Mutex::new(touch::Touch::default()),
            placement_ran: Mutex::new(None),
            cloud: Mutex::new(None),
            healing: Mutex::new(BTreeMap::new()),
            scaled: Mutex::new(BTreeMap::new()),
            forecasts: Mutex::new(BTreeMap::new()),
            placement_kick: tokio::sync::Notify::new(),
        };
        let this = Controller {
            inner: Arc::new(inner),
        };
        rt::spawn(this.clone().watch_cluster());
        rt::spawn(this.clone().placement_loop());
        this
    }

    /// Let auto-healing create and delete SEs through `connector`; the SEs
    /// it creates dial `controllers` (docs/placement.md).
    pub fn set_cloud(
        &self,
        connector: Arc<dyn crate::platform::CloudConnector>,
        controllers: Vec<SocketAddr>,
    ) {
        *lock(&self.inner.cloud) = Some(Cloud {
            connector,
            controllers,
        });
    }

    /// The cluster node underneath.
    pub fn node(&self) -> &ClusterNode {
        &self.inner.node
    }

    /// The desired state as applied on this node now.
    pub fn desired(&self) -> Arc<Desired> {
        self.inner.desired.borrow().clone()
    }

    /// Replace the whole desired state (through the leader); returns the new
    /// version. An invalid config changes nothing.
    pub async fn apply(&self, config: Config) -> Result<u64, ClusterError> {
        self.inner
            .node
            .write(Command::Replace {
                config: Box::new(config),
                version_floor: 0,
                only_if_empty: false,
            })
            .await
    }

    async fn watch_cluster(self) {
        let mut metrics = self.inner.node.raft().metrics();
        let mut desired = self.inner.node.desired();
        let mut leader = None;
        let mut version = desired.borrow().version;
        loop {
            let (now_leader, me) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.id)
            };
            let leads = now_leader == Some(me);
            lock(&self.inner.arbiter).set_leader(rt::now(), leads);
            self.inner.leader.send_if_modified(|since| {
                let changed = since.is_some() != leads;
                if changed {
                    *since = leads.then(rt::now);
                }
                changed
            });
            if now_leader != leader {
                let term = metrics.borrow().current_term;
                let who = now_leader.map_or("none".to_string(), |l| format!("node {l}"));
                self.event(
                    "leader_change",
                    "cluster",
                    format!("leader {who} in term {term}"),
                );
                leader = now_leader;
            }
            let v = desired.borrow_and_update().version;
            if v != version {
                self.event("desired_state_changed", "cluster", format!("version {v}"));
                version = v;
            }
            tokio::select! {
                // Fixed poll order: tokio picks a random one otherwise, from a
                // generator madsim does not seed (docs/runtime.md).
                biased;
                r = metrics.changed() => if r.is_err() { return },
                r = desired.changed() => if r.is_err() { return },
            }
        }
    }

    /// The placement the leader keeps current (docs/placement.md): runs
    /// whenever an SE comes or goes, and every [`PLACEMENT_TICK`] (an SE
    /// gone quiet is down only after the failure-detection time).
    async fn placement_loop(self) {
        loop {
            let stalled = self.notice_stall();
            if let Err(e) = self.place_once(stalled).await {
                tracing::debug!(error = %e, "placement not written");
            }
            self.heal_once().await;
            tokio::select! {
                biased;
                _ = self.inner.placement_kick.notified() => {}
                _ = rt::sleep(PLACEMENT_TICK) => {}
            }
        }
    }

    /// What this node knows of the SEs, for placement: an SE is up while it
    /// has a session, and for `controller.heartbeat_ms` x
    /// [`MISSED_HEARTBEATS`] after it was last heard, by this node or (on
    /// the data path) by an SE of its group with a session: one only its
    /// peers hear is *partitioned*, kept where it is and given nothing new
    /// (docs/placement.md, "Partitioned SEs"); an SE the previous
    /// placement names is up for [`proto::se_rejoin_bound`] (at least twice
    /// the detection time) after `leading_since` (when this node became
    /// leader) or after it last regained its quorum from a time cut off
    /// that began while the SE was heard (`touch::Touch`): time for SEs to
    /// find a new leader, or to reconnect after their sessions died of this
    /// node's isolation rather than theirs (chaos seed 60 of
    /// `fabric_under_faults`).
    fn se_views(
        &self,
        config: &crate::model::Config,
        previous: &crate::placement::Placement,
        draining: &std::collections::BTreeSet<String>,
        leading_since: Instant,
    ) -> Vec<crate::placement::SeView> {
        let now = rt::now();
        let detect = Duration::from_millis(config.controller.heartbeat_ms) * MISSED_HEARTBEATS;
        let ses = lock(&self.inner.ses);
        let heard = lock(&self.inner.heard);
        let by_peers = lock(&self.inner.heard_by_peers);
        let mut views: BTreeMap<String, crate::placement::SeView> = ses
            .values()
            .map(|(_, s)| {
                let within = |t: Option<&Instant>| {
                    t.is_some_and(|t| now.saturating_duration_since(*t) < detect)
                };
                let recent = within(heard.get(&s.name));
                let partitioned = !s.connected && !recent && within(by_peers.get(&s.name));
                // A CPU figure counts while it is fresh (3 reports).
                let fresh = rt::unix_ms().saturating_sub(s.stats_unix_ms)
                    < 3 * proto::STATS_INTERVAL.as_millis() as u64;
                // Connections open per virtual service, from the last report
                // (an SE not reporting is taken as busy: nothing is cut
                // short on a guess).
                let busy = match s.stats.as_ref().filter(|_| fresh) {
                    Some(st) => st
                        .virtual_services
                        .iter()
                        .filter(|v| v.open_connections > 0)
                        .map(|v| v.name.clone())
                        .collect(),
                    None if s.connected => config
                        .virtual_services
                        .iter()
                        .map(|v| v.name.clone())
                        .collect(),
                    None => Default::default(),
                };
                let view = crate::placement::SeView {
                    name: s.name.clone(),
                    group: s.group.clone(),
                    up: s.connected || recent || partitioned,
                    partitioned,
                    draining: draining.contains(&s.name),
                    busy,
                    cpu_percent: s
                        .stats
                        .as_ref()
                        .and_then(|st| st.cpu_percent)
                        .filter(|_| fresh && s.connected),
                };
                (s.name.clone(), view)
            })
            .collect();
        let controllers = self.inner.node.membership().0.len();
        let patience = proto::se_rejoin_bound(detect, controllers).max(detect * 2);
        let touch = lock(&self.inner.touch);
        for (vs, names) in &previous.virtual_services {
            let Some(group) = config.virtual_service(vs).map(|v| v.se_group.clone()) else {
                continue;
            };
            for name in names {
                let from = touch.patience_from(name, heard.contains_key(name), leading_since);
                let settling = now.saturating_duration_since(from) < patience;
                views
                    .entry(name.clone())
                    .and_modify(|v| v.up |= settling)
                    .or_insert_with(|| crate::placement::SeView {
                        name: name.clone(),
                        group: group.clone(),
                        up: settling,
                        partitioned: false,
                        draining: draining.contains(name),
                        busy: Default::default(),
                        cpu_percent: None,
                    });
            }
        }
        views.into_values().collect()
    }

    /// Whether this leader heard a quorum within an election timeout. One
    /// that did not may have been replaced without knowing it: cut off, or
    /// restarted into its old term with a stale log (chaos seed 18 of
    /// `fabric_under_faults` at ten minutes: such a node welcomed a restarted
    /// SE and handed it an old placement).
    fn quorum_fresh(&self) -> bool {
        let now = rt::now();
        let mut seen = lock(&self.inner.metrics_seen);
        let (rx, at) = &mut *seen;
        // The figure is as old as the report it came in: when this node
        // was paused (its Raft task too), the last report is from before the
        // pause and says nothing of now (found by pausing the leader: on
        // resume it placed from a snapshot that still said "quorum 20 ms ago").
        if rx.has_changed().unwrap_or(false) {
            rx.borrow_and_update();
            *at = now;
        }
        let m = rx.borrow();
        // A single voter cannot be deposed, and reports only when it acts.
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return m.current_leader == Some(m.id);
        }
        let lease = Duration::from_millis(self.inner.node.timings().election_min_ms);
        m.millis_since_quorum_ack.is_some_and(|ms| {
            now.saturating_duration_since(*at) + Duration::from_millis(ms) <= lease
        })
    }

    /// A node that was not scheduled for a while (a stopped VM, a long GC
    /// pause, an overloaded host) finds every SE silent on waking, because
    /// it did not run, not because they are gone, and may still lead (no
    /// other node could be elected meanwhile, chaos ten-minute seed 44 of
    /// `fabric_under_faults`). Its quorum check passes at once, so it counts
    /// the stall itself as a time out of touch: the SEs get their time to
    /// come back, as after a cut. A stall is a gap between two runs of the
    /// placement loop well past its tick (a slow placement write counts
    /// too, which only makes it more patient).
    /// Returns when the stall began (the last run before it).
    fn notice_stall(&self) -> Option<Instant> {
        let now = rt::now();
        let last = lock(&self.inner.placement_ran).replace(now)?;
        let gap = now.saturating_duration_since(last);
        (gap > STALL_AFTER).then(|| {
            tracing::warn!(stalled_ms = gap.as_millis() as u64, "this node was not running for a while: SEs get time to reconnect before placement judges them");
            last
        })
    }

    /// If this node leads: place, and write the placement if it changed.
    /// `stalled`: when a stall of this node that just ended began.
    async fn place_once(&self, stalled: Option<Instant>) -> Result<(), ClusterError> {
        let Some(since) = *self.inner.leader.borrow() else {
            return Ok(());
        };
        // The term this placement is computed in fences its write; and a
        // leader that has not heard a quorum lately may be the one cut off
        // (every SE looks down from there): it moves nothing.
        let (term, leader) = {
            let m = self.inner.node.raft().metrics();
            let m = m.borrow();
            (m.current_term, m.id)
        };
        let now = rt::now();
        let desired = self.desired();
        let Some(config) = desired.config.as_ref() else {
            return Ok(());
        };
        let detect = Duration::from_millis(config.controller.heartbeat_ms) * MISSED_HEARTBEATS;
        let fresh = self.quorum_fresh();
        {
            let heard = lock(&self.inner.heard);
            let mut touch = lock(&self.inner.touch);
            if let Some(began) = stalled {
                touch.out_of_touch(began, now, &heard, since, detect);
                touch.in_touch();
            }
            if fresh {
                touch.in_touch();
            } else {
                touch.out_of_touch(now, now, &heard, since, detect);
            }
        }
        if !fresh {
            tracing::debug!("no quorum heard lately: placement waits");
            return Ok(());
        }
        let hello = lock(&self.inner.last_hello).unwrap_or(since).max(since);
        if now.saturating_duration_since(hello) < PLACEMENT_QUIET {
            return Ok(());
        }
        let views = self.se_views(config, &desired.placement, &desired.draining, since);
        let mut base = (*desired.placement).clone();
        self.autoscale(config, &views, &mut base, now);
        let next = crate::placement::place(config, &views, &base);
        if next == *desired.placement {
            return Ok(());
        }
        let write = self.inner.node.write(Command::SetPlacement {
            placement: Box::new(next.clone()),
            term: Some(term),
            leader: Some(leader),
        });
        let version = match rt::timeout(Duration::from_secs(5), write).await {
            Ok(r) => r?,
            Err(_) => return Err(ClusterError::Fatal("placement write timed out".into())),
        };
        for (vs, ses) in &next.virtual_services {
            let before = desired.placement.of(vs);
            if before != ses.as_slice() {
                let was = if before.is_empty() {
                    "nowhere".to_string()
                } else {
                    before.join(", ")
                };
                self.event(
                    "vs_placed",
                    vs,
                    format!("on {} (was {was}), version {version}", ses.join(", ")),
                );
            }
        }
        for (vs, why) in &next.problems {
            if desired.placement.problems.get(vs) != Some(why) {
                self.event("vs_placement_short", vs, why.clone());
            }
        }
        Ok(())
    }

    /// One autoscale step per group whose cooldown has passed (seed 002):
    /// a virtual service on an SE above `max_cpu_percent` wants one more SE;
    /// when every SE carrying the group's virtual services is below
    /// `min_cpu_percent`, the one on most SEs wants one fewer. Written into
    /// `placement.scaleout`, which placement then follows.
    fn autoscale(
        &self,
        config: &crate::model::Config,
        views: &[crate::placement::SeView],
        placement: &mut crate::placement::Placement,
        now: Instant,
    ) {
        for g in config.se_groups.iter().filter(|g| g.autoscale) {
            let cpu = |se: &str| {
                views
                    .iter()
                    .find(|v| v.name == se && v.up)
                    .and_then(|v| v.cpu_percent)
            };
            let vss: Vec<(&str, &[String])> = config
                .virtual_services
                .iter()
                .filter(|v| v.se_group == g.name)
                .map(|v| (v.name.as_str(), placement.of(&v.name)))
                .filter(|(_, ses)| !ses.is_empty())
                .collect();
            // Predictive: learn from every tick, cooldown or not.
            let forecasts = self.learn_load(g, &vss, &cpu);
            let cooldown = Duration::from_millis(g.autoscale_cooldown_ms);
            if lock(&self.inner.scaled)
                .get(&g.name)
                .is_some_and(|t| now.saturating_duration_since(*t) < cooldown)
            {
                continue;
            }
            let forecast_of = |vs: &str| forecasts.iter().find(|f| f.vs == vs);
            let wants = |vs: &str, n: usize| {
                placement
                    .scaleout
                    .get(vs)
                    .copied()
                    .unwrap_or(g.scaleout())
                    .max(n as u32)
            };
            // Out: the hottest SE above the line; of its virtual services,
            // the one on fewest SEs that may grow.
            let hottest = vss
                .iter()
                .flat_map(|(_, ses)| ses.iter())
                .filter_map(|se| Some((cpu(se)?, se.as_str())))
                .filter(|(c, _)| *c > g.max_cpu_percent)
                .max();
            // Ahead of a learned peak: the virtual service short of most SEs.
            let ahead = vss
                .iter()
                .filter_map(|(vs, ses)| {
                    let f = forecast_of(vs)?;
                    let n = wants(vs, ses.len());
                    if f.ses > n && n < g.max_scaleout_per_vs {
                        Some((f.ses - n, *vs, n, f))
                    } else {
                        None
                    }
                })
                .max_by_key(|(short, vs, _, _)| (*short, std::cmp::Reverse(*vs)));
            let step = if let Some((hot, se)) = hottest {
                vss.iter()
                    .filter(|(_, ses)| ses.iter().any(|s| s == se))
                    .map(|(vs, ses)| (wants(vs, ses.len()), *vs))
                    .filter(|(n, _)| *n < g.max_scaleout_per_vs)
                    .min()
                    .map(|(n, vs)| {
                        (
                            vs,
                            n + 1,
                            format!("{se} at {hot}% CPU, above {}%", g.max_cpu_percent),
                        )
                    })
            } else if let Some((_, vs, n, f)) = ahead {
                Some((
                    vs,
                    n + 1,
                    format!(
                        "forecast: {:.0}% CPU within {} s (learned over {} periods) needs {} SEs at {}% each",
                        f.load,
                        g.autoscale_lead_ms / 1000,
                        f.periods,
                        f.ses,
                        g.max_cpu_percent
                    ),
                ))
            } else {
                let carrying: Vec<&str> = vss
                    .iter()
                    .flat_map(|(_, ses)| ses.iter().map(String::as_str))
                    .collect();
                let all_cold = !carrying.is_empty()
                    && carrying
                        .iter()
                        .all(|se| cpu(se).is_some_and(|c| c < g.min_cpu_percent));
                all_cold
                    .then(|| {
                        vss.iter()
                            .map(|(vs, ses)| (wants(vs, ses.len()), *vs))
                            // Not below what a peak ahead needs.
                            .filter(|(n, vs)| {
                                *n > g.scaleout() && forecast_of(vs).is_none_or(|f| f.ses < *n)
                            })
                            .max()
                            .map(|(n, vs)| {
                                (
                                    vs,
                                    n - 1,
                                    format!("every SE below {}% CPU", g.min_cpu_percent),
                                )
                            })
                    })
                    .flatten()
            };
            let Some((vs, n, why)) = step else {
                continue;
            };
            let was = wants(vs, placement.of(vs).len());
            placement.scaleout.insert(vs.to_string(), n);
            lock(&self.inner.scaled).insert(g.name.clone(), now);
            let kind = if n > was { "scale_out" } else { "scale_in" };
            self.event(kind, vs, format!("{was} -> {n} SEs: {why}"));
        }
    }

    /// Predictive autoscale, for group `g`: each virtual service's load now
    /// (the CPU its SEs report, summed) joins its learned pattern, and what
    /// the pattern holds for the next `autoscale_lead_ms` comes back, with
    /// the SEs that load needs at `max_cpu_percent` each. Nothing for a
    /// reactive group (and its patterns are dropped).
    fn learn_load(
        &self,
        g: &crate::model::SeGroup,
        vss: &[(&str, &[String])],
        cpu: &dyn Fn(&str) -> Option<u32>,
    ) -> Vec<Forecast> {
        let mut models = lock(&self.inner.forecasts);
        if g.autoscale_mode != crate::model::AutoscaleMode::Predictive {
            for (vs, _) in vss {
                models.remove(*vs);
            }
            return Vec::new();
        }
        let t = Duration::from_millis(rt::unix_ms());
        let period = Duration::from_millis(g.autoscale_period_ms);
        let lead = Duration::from_millis(g.autoscale_lead_ms);
        let mut out = Vec::new();
        for (vs, ses) in vss {
            let model = models
                .entry(vs.to_string())
                .or_insert_with(|| crate::forecast::LoadForecast::new(period));
            if model.period() != period {
                *model = crate::forecast::LoadForecast::new(period);
            }
            let mut reported = ses.iter().filter_map(|se| cpu(se)).peekable();
            if reported.peek().is_some() {
                model.observe(t, reported.map(f64::from).sum());
            }
            if let Some((load, periods)) = model.peak_ahead(t, lead) {
                let per_se = f64::from(g.max_cpu_percent.max(1));
                let ses =
                    ((load / per_se).ceil() as u32).clamp(g.scaleout(), g.max_scaleout_per_vs);
                out.push(Forecast {
                    vs: vs.to_string(),
                    load,
                    periods,
                    ses,
                });
            }
        }
        out
    }

    /// If this node leads and has a cloud connector: for each auto-healing
    /// group with fewer SEs up than its placement wants, create one (one at
    /// a time per group, until it says hello or [`HEAL_TIMEOUT`]); delete
    /// SEs of the group that have been down long, once it has enough up.
    async fn heal_once(&self) {
        let Some(cloud) = lock(&self.inner.cloud).clone() else {
            return;
        };
        let Some(since) = *self.inner.leader.borrow() else {
            return;
        };
        let desired = self.desired();
        let Some(config) = desired.config.clone() else {
            return;
        };
        let now = rt::now();
        let detect = Duration::from_millis(config.controller.heartbeat_ms) * MISSED_HEARTBEATS;
        let views = self.se_views(&config, &desired.placement, &desired.draining, since);
        for g in config.se_groups.iter().filter(|g| g.auto_heal) {
            let Some(usage) = desired.placement.groups.get(&g.name) else {
                continue;
            };
            let wanted = usage.ses_wanted.min(g.max_ses);
            if self.creation_pending(&g.name, now) {
                continue;
            }
            // SEs up now, not as the last placement counted them: an SE
            // just created is up before placement (waiting for quiet) has
            // counted it, and must not be created again.
            let up = views.iter().filter(|v| v.group == g.name && v.up).count() as u32;
            if up < wanted {
                self.create_se(&cloud, g, usage, up, wanted, now).await;
                continue;
            }
            // Enough up: delete what failed long ago (the cloud's, only).
            let hosts = cloud.connector.list_ses().await;
            // Autoscale in: one empty SE beyond what the group wants.
            if g.autoscale && up > wanted {
                let empty = views.iter().find(|v| {
                    v.group == g.name
                        && v.up
                        && hosts.iter().any(|h| h.name == v.name)
                        && !desired
                            .placement
                            .virtual_services
                            .values()
                            .any(|l| l.contains(&v.name))
                });
                let cooled = lock(&self.inner.scaled).get(&g.name).is_none_or(|t| {
                    now.saturating_duration_since(*t)
                        >= Duration::from_millis(g.autoscale_cooldown_ms)
                });
                if let (Some(v), true) = (empty, cooled) {
                    if cloud.connector.delete_se(&v.name).await.is_ok() {
                        lock(&self.inner.ses).remove(&v.name);
                        lock(&self.inner.heard).remove(&v.name);
                        lock(&self.inner.touch).forget(&v.name);
                        lock(&self.inner.heard_by_peers).remove(&v.name);
                        lock(&self.inner.scaled).insert(g.name.clone(), now);
                        self.event(
                            "se_scaled_in",
                            &v.name,
                            format!("empty, group {} has {up} up and wants {wanted}", g.name),
                        );
                    }
                }
            }
            for v in views.iter().filter(|v| v.group == g.name && !v.up) {
                let quiet = lock(&self.inner.heard).get(&v.name).is_none_or(|t| {
                    now.saturating_duration_since(*t) >= detect * DELETE_AFTER_DETECTIONS
                });
                if !quiet || !hosts.iter().any(|h| h.name == v.name) {
                    continue;
                }
                match cloud.connector.delete_se(&v.name).await {
                    Ok(()) => {
                        lock(&self.inner.ses).remove(&v.name);
                        lock(&self.inner.heard).remove(&v.name);
                        lock(&self.inner.touch).forget(&v.name);
                        lock(&self.inner.heard_by_peers).remove(&v.name);
                        self.event(
                            "se_deleted",
                            &v.name,
                            format!(
                                "down for over {:?}, group {} has {} up",
                                detect * DELETE_AFTER_DETECTIONS,
                                g.name,
                                usage.ses_up
                            ),
                        );
                    }
                    Err(e) => self.event("se_delete_failed", &v.name, e.to_string()),
                }
            }
        }
    }

    /// Whether auto-healing still waits for the SE it created for `group`.
    fn creation_pending(&self, group: &str, now: Instant) -> bool {
        let mut healing = lock(&self.inner.healing);
        let Some((name, at)) = healing.get(group).cloned() else {
            return false;
        };
        let arrived = lock(&self.inner.ses)
            .get(&name)
            .is_some_and(|(_, s)| s.connected);
        if arrived {
            healing.remove(group);
            return false;
        }
        if now.saturating_duration_since(at) < HEAL_TIMEOUT {
            return true;
        }
        healing.remove(group);
        drop(healing);
        self.event(
            "se_create_timed_out",
            &name,
            format!("no hello within {HEAL_TIMEOUT:?}"),
        );
        false
    }

    async fn create_se(
        &self,
        cloud: &Cloud,
        g: &crate::model::SeGroup,
        usage: &crate::placement::GroupUse,
        up: u32,
        wanted: u32,
        now: Instant,
    ) {
        let name = self.next_se_name(&g.name);
        let join = match self.create_join_token(&name).await {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "no join token for a new SE");
                return;
            }
        };
        let spec = crate::platform::SeSpec {
            name: name.clone(),
            group: g.name.clone(),
            controllers: cloud.controllers.clone(),
            join: Some(join),
            ha: None,
        };
        let why = format!(
            "group {} has {up} SE(s) up and wants {wanted}{}",
            g.name,
            usage
                .note
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
        match cloud.connector.create_se(spec).await {
            Ok(_) => {
                lock(&self.inner.healing).insert(g.name.clone(), (name.clone(), now));
                self.event("se_created", &name, why);
            }
            Err(e) => self.event("se_create_failed", &name, format!("{why}: {e}")),
        }
    }

    /// `<group>-auto-<n>`, `n` one above any such name this cluster knows.
    fn next_se_name(&self, group: &str) -> String {
        let prefix = format!("{group}-auto-");
        let number = |name: &str| {
            name.strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
        };
        let registered = self
            .inner
            .node
            .peek(|o| o.se_certs.values().filter_map(|n| number(n)).max());
        let known = lock(&self.inner.ses).keys().filter_map(|n| number(n)).max();
        let pending = lock(&self.inner.healing)
            .values()
            .filter_map(|(n, _)| number(n))
            .max();
        let n = registered.max(known).max(pending).unwrap_or(0) + 1;
        format!("{prefix}{n}")
    }

    /// The relay listeners of the SEs with a session (or partitioned: their
    /// peers heard them within `detect`), by name, but for the draining
    /// ones: primaries hand them no new connections. A down SE placement
    /// keeps a place for (no other SE could take it) is not among them:
    /// primaries hand it nothing, where a UDP flow relayed to it would be
    /// lost (its going down changes the placement's problems, so the
    /// primaries get a push without it).
    fn relays(
        &self,
        draining: &std::collections::BTreeSet<String>,
        detect: Duration,
    ) -> BTreeMap<String, SocketAddr> {
        let now = rt::now();
        // The order `se_views` takes them in.
        let ses = lock(&self.inner.ses);
        let by_peers = lock(&self.inner.heard_by_peers);
        ses.iter()
            .filter(|(name, _)| !draining.contains(*name))
            .filter(|(name, (_, s))| {
                s.connected
                    || by_peers
                        .get(*name)
                        .is_some_and(|t| now.saturating_duration_since(*t) < detect)
            })
            .filter_map(|(name, (_, s))| Some((name.clone(), s.relay?)))
            .collect()
    }

    /// Drain SE `name` (or stop draining it), through the leader.
    pub async fn set_draining(&self, name: &str, draining: bool) -> Result<u64, ClusterError> {
        let v = self
            .inner
            .node
            .write(Command::SetDraining {
                se: name.to_string(),
                draining,
            })
            .await?;
        self.inner.placement_kick.notify_one();
        Ok(v)
    }

    /// Every SE the Controller has heard from, by name.
    pub fn ses(&self) -> Vec<SeStatus> {
        let now = rt::now();
        let by_peers = lock(&self.inner.heard_by_peers);
        lock(&self.inner.ses)
            .values()
            .map(|(_, s)| SeStatus {
                peers_heard_ms_ago: by_peers
                    .get(&s.name)
                    .map(|t| now.saturating_duration_since(*t).as_millis() as u64),
                ..s.clone()
            })
            .collect()
    }

    /// The SEs of `group` with a relay address, which is where their
    /// data-path beats go too.
    fn group_peers(&self, group: &str) -> Vec<proto::ScaleoutPeer> {
        lock(&self.inner.ses)
            .values()
            .filter(|(_, s)| s.group == group)
            .filter_map(|(_, s)| {
                Some(proto::ScaleoutPeer {
                    se: s.name.clone(),
                    relay: s.relay?,
                })
            })
            .collect()
    }

    /// SE `name` of `group` heard these SEs' data-path beats: each counts
    /// as heard when its beat came (the report's time less its age, which
    /// is no earlier than the truth: the report's transit only delays it).
    /// Only SEs of the reporter's own group, at most
    /// [`proto::MAX_PEERS_REPORTED`].
    fn on_peers_heard(&self, name: &str, group: &str, peers: &[proto::PeerHeard]) {
        if peers.is_empty() {
            return;
        }
        let now = rt::now();
        let ses = lock(&self.inner.ses);
        let mut by_peers = lock(&self.inner.heard_by_peers);
        for p in peers.iter().take(proto::MAX_PEERS_REPORTED) {
            let same_group = ses.get(&p.se).is_some_and(|(_, s)| s.group == group);
            if p.se == name || !same_group {
                continue;
            }
            let Some(at) = now.checked_sub(Duration::from_millis(p.ms_ago)) else {
                continue;
            };
            let entry = by_peers.entry(p.se.clone()).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner.events).iter().cloned().collect()
    }

    /// Serve SE sessions on `listener` until it fails.
    pub async fn serve(&self, listener: rt::TcpListener) -> std::io::Result<()> {
        // SEs verify this node by the address they dial: name it in the
        // node's certificate as well as the Raft address.
        let ip = listener.local_addr()?.ip();
        if !ip.is_unspecified() {
            lock(&self.inner.listen_ips).push(ip);
        }
        let this = self.clone();
        rt::accept_loop(listener, MAX_SE_SESSIONS, move |stream, peer| {
            let this = this.clone();
            async move { this.on_tls_connection(stream, peer).await }
        })
        .await
    }

    /// A one-time join token for an SE, and the CA fingerprint it pins
    /// (goes through the leader).
    pub async fn create_join_token(&self, label: &str) -> Result<pki::JoinTicket, ClusterError> {
        let ca = self
            .inner
            .node
            .peek(|o| o.ca.clone())
            .ok_or_else(|| ClusterError::Invalid("the cluster has no CA yet".into()))?;
        let ca_sha256 = ca
            .fingerprint()
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let (secret, cmd) = Command::new_join_token(label);
        self.inner.node.write(cmd).await?;
        Ok(pki::JoinTicket {
            token: secret,
            ca_sha256,
        })
    }

    /// TLS settings for this node's SE listener, rebuilt when the CA changes.
    fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let ca = self
            .inner
            .node
            .peek(|o| o.ca.clone())
            .ok_or("the cluster has no CA yet")?;
        let fp = ca.fingerprint().map_err(|e| e.to_string())?;
        let mut cached = lock(&self.inner.tls);
        if let Some((have, config)) = cached.as_ref() {
            if *have == fp {
                return Ok(config.clone());
            }
        }
        let raft_ip = self
            .inner
            .node
            .addr()
            .raft
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .map_err(|e| format!("node address: {e}"))?;
        let mut ips = lock(&self.inner.listen_ips).clone();
        if !ips.contains(&raft_ip) {
            ips.push(raft_ip);
        }
        let name = format!("controller-{}", self.inner.node.id());
        let cert = ca.issue_node_cert(&name, &ips).map_err(|e| e.to_string())?;
        let config = ca.server_config(&cert).map_err(|e| e.to_string())?;
        *cached = Some((fp, config.clone()));
        Ok(config)
    }

    async fn on_tls_connection(&self, stream: rt::TcpStream, peer: SocketAddr) {
        let config = match self.tls_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "SE connection refused");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match rt::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "no TLS handshake in time");
                return;
            }
        };
        let client_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| pki::sha256_hex(c));
        self.on_connection(tls, peer, client_cert).await
    }

    /// Issue a certificate for a registering SE and record it through Raft.
    async fn register(
        &self,
        se_name: &str,
        join_token: &str,
        public_key: &[u8],
    ) -> Result<ControllerMessage, String> {
        let ca = self
            .inner
            .node
            .peek(|o| o.ca.clone())
            .ok_or("the cluster has no CA yet")?;
        let cert_pem = ca
            .issue_se_cert(se_name, public_key)
            .map_err(|e| e.to_string())?;
        let cmd = Command::RegisterSe {
            token_sha256: pki::sha256_hex(join_token.as_bytes()),
            se_name: se_name.to_string(),
            cert_sha256: pki::fingerprint(&cert_pem).map_err(|e| e.to_string())?,
        };
        match self.inner.node.write(cmd).await {
            Ok(_) => {
                self.event(
                    "se_registered",
                    se_name,
                    "join token used, certificate issued",
                );
                Ok(ControllerMessage::Registered {
                    cert_pem,
                    ca_pem: ca.cert_pem,
                })
            }
            Err(ClusterError::Refused(Refusal::NotFound)) => Err("unknown join token".into()),
            Err(ClusterError::Refused(Refusal::Conflict { .. })) => {
                Err("join token already used".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn event(&self, kind: &'static str, object: impl Into<String>, reason: impl Into<String>) {
        let e = Event {
            unix_ms: rt::unix_ms(),
            kind,
            object: object.into(),
            reason: reason.into(),
        };
        tracing::info!(kind = e.kind, object = %e.object, reason = %e.reason, "event");
        let mut events = lock(&self.inner.events);
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(e);
    }

    async fn on_connection<S>(&self, stream: S, peer: SocketAddr, client_cert: Option<String>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello =
            match rt::timeout(HELLO_TIMEOUT, proto::read_frame::<_, SeMessage>(&mut rd)).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "bad hello");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "no hello in time");
                    return;
                }
            };
        let refuse = |reason: String| ControllerMessage::Refused { reason };
        let (proto_version, se_name, se_group, incarnation, applied_version, relay) = match hello {
            SeMessage::Hello {
                proto_version,
                se_name,
                se_group,
                incarnation,
                applied_version,
                relay,
            } => (
                proto_version,
                se_name,
                se_group,
                incarnation,
                applied_version,
                relay,
            ),
            SeMessage::Register {
                proto_version,
                se_name,
                join_token,
                public_key,
            } => {
                let reply = if proto_version != PROTO_VERSION || !valid_se_name(&se_name) {
                    refuse(format!("need protocol {PROTO_VERSION} and a name of 1-64 letters, digits, '-', '_' or '.'"))
                } else {
                    match self.register(&se_name, &join_token, &public_key).await {
                        Ok(m) => m,
                        Err(reason) => {
                            self.event("se_registration_refused", &se_name, reason.clone());
                            refuse(reason)
                        }
                    }
                };
                let _ = proto::write_frame(&mut wr, &reply).await;
                return;
            }
            _ => {
                let reason = "the first message must be a hello or a registration".to_string();
                let _ = proto::write_frame(&mut wr, &refuse(reason)).await;
                return;
            }
        };
        if proto_version != PROTO_VERSION || !valid_se_name(&se_name) {
            let reason = format!(
                "need protocol {PROTO_VERSION} and a name of 1-64 letters, digits, '-', '_' or '.'"
            );
            let _ = proto::write_frame(&mut wr, &refuse(reason)).await;
            return;
        }
        // The session is the SE's only if its client certificate was issued to that name.
        let certified = client_cert
            .as_ref()
            .and_then(|fp| self.inner.node.peek(|o| o.se_certs.get(fp).cloned()));
        if certified.as_deref() != Some(se_name.as_str()) {
            let reason = match certified {
                None => "no client certificate issued by this cluster: register with a join token"
                    .to_string(),
                Some(other) => format!("this certificate was issued to {other}, not {se_name}"),
            };
            self.event("se_refused", &se_name, reason.clone());
            let _ = proto::write_frame(&mut wr, &refuse(reason)).await;
            return;
        }
        // SE sessions are the leader's: it alone places virtual services,
        // so it must know every SE that is up (docs/placement.md); and a
        // leader that may have been replaced hands out nothing.
        if self.inner.leader.borrow().is_none() || !self.quorum_fresh() {
            let _ = proto::write_frame(&mut wr, &refuse(NOT_LEADER.into())).await;
            return;
        }
        // An unspecified relay IP: the SE listens on all its addresses, and
        // the one its session comes from reaches it.
        let relay = relay.map(|r| {
            if r.ip().is_unspecified() {
                SocketAddr::new(peer.ip(), r.port())
            } else {
                r
            }
        });
        let session = self.on_hello(
            &se_name,
            &se_group,
            incarnation,
            applied_version,
            peer,
            relay,
        );
        let result = self
            .run_session(session, &se_name, &se_group, rd, &mut wr)
            .await;
        self.on_session_end(session, &se_name, result);
    }

    fn on_hello(
        &self,
        name: &str,
        group: &str,
        incarnation: u64,
        applied_version: u64,
        addr: SocketAddr,
        relay: Option<SocketAddr>,
    ) -> u64 {
        let session = {
            let mut next = lock(&self.inner.next_session);
            *next += 1;
            *next
        };
        let status = SeStatus {
            name: name.into(),
            group: group.into(),
            incarnation,
            connected: true,
            applied_version,
            addr,
            stats: None,
            stats_unix_ms: 0,
            relay,
            peers_heard_ms_ago: None,
        };
        lock(&self.inner.ses).insert(name.to_string(), (session, status));
        self.heard(name);
        *lock(&self.inner.last_hello) = Some(rt::now());
        self.event(
            "se_up",
            name,
            format!("session from {addr}, serving version {applied_version}"),
        );
        session
    }

    fn on_session_end(&self, session: u64, name: &str, result: Result<(), String>) {
        {
            let mut ses = lock(&self.inner.ses);
            match ses.get_mut(name) {
                // A newer session of the same SE owns the entry now.
                Some((s, _)) if *s != session => return,
                Some((_, status)) => status.connected = false,
                None => return,
            }
        }
        let reason = result.err().unwrap_or_else(|| "session closed".into());
        self.event("se_down", name, reason);
        self.inner.placement_kick.notify_one();
    }

    fn heard(&self, name: &str) {
        lock(&self.inner.heard).insert(name.to_string(), rt::now());
    }

    /// Record an acknowledgement; an SE whose applied version goes backwards
    /// breaks the protocol and loses its session.
    fn on_stats(&self, session: u64, name: &str, mut stats: crate::stats::SeStats) {
        stats.virtual_services.truncate(crate::stats::MAX_REPORTED);
        stats.pools.truncate(crate::stats::MAX_REPORTED);
        let mut ses = lock(&self.inner.ses);
        if let Some((s, status)) = ses.get_mut(name) {
            if *s == session {
                status.stats = Some(stats);
                status.stats_unix_ms = rt::unix_ms();
            }
        }
    }

    /// Traffic summed over the SEs with a session now: their latest
    /// reports, added up by virtual service and pool.
    pub fn stats(&self) -> (crate::stats::SeStats, usize) {
        let ses = lock(&self.inner.ses);
        let mut sum = crate::stats::SeStats::default();
        let mut reporting = 0;
        for (_, status) in ses.values() {
            if let (true, Some(stats)) = (status.connected, &status.stats) {
                sum.merge(stats);
                reporting += 1;
            }
        }
        (sum, reporting)
    }

    /// The dead interval of `group` if it is a legacy active/standby group
    /// of the desired state.
    fn ha_dead(&self, group: &str) -> Option<Duration> {
        let desired = self.inner.desired.borrow().clone();
        let config = desired.config.as_ref()?;
        let g = config.se_groups.iter().find(|g| g.name == group)?;
        (g.ha_mode == crate::model::HaMode::LegacyActiveStandby)
            .then(|| g.ha_profile.timing().dead())
    }

    /// An HA beat from SE `name` of `group`: recorded if it speaks for
    /// itself and its own legacy active/standby group, else acked as from a
    /// non-leader (no lease).
    fn on_ha_beat(&self, name: &str, group: &str, beat: &crate::ha::Beat) -> crate::ha::HaAck {
        let no_lease = crate::ha::HaAck {
            seq: beat.seq,
            leader: false,
        };
        let Some(dead) = self.ha_dead(group) else {
            return no_lease;
        };
        if beat.from != name || beat.pair != group {
            return no_lease;
        }
        lock(&self.inner.arbiter).beat(rt::now(), beat, dead)
    }

    /// SE `name` of `group` asks for its pair's VIPs.
    fn on_ha_takeover(&self, name: &str, group: &str, epoch: u64) -> crate::ha::Verdict {
        let Some(dead) = self.ha_dead(group) else {
            return crate::ha::Verdict::Refused {
                reason: format!("SE group {group} is not a legacy active/standby group"),
                retry_after_ms: None,
            };
        };
        let verdict = lock(&self.inner.arbiter).takeover(rt::now(), group, name, epoch, dead);
        match &verdict {
            crate::ha::Verdict::Granted { epoch } => self.event(
                "ha_takeover",
                group,
                format!("{name} holds the VIPs, epoch {epoch}"),
            ),
            crate::ha::Verdict::Refused { reason, .. } => {
                tracing::debug!(se = name, group, %reason, "HA takeover refused")
            }
        }
        verdict
    }

    fn on_ack(&self, session: u64, name: &str, version: u64) -> Result<(), String> {
        {
            let mut ses = lock(&self.inner.ses);
            let Some((s, status)) = ses.get_mut(name) else {
                return Ok(());
            };
            if *s != session {
                return Ok(());
            }
            if version < status.applied_version {
                return Err(format!(
                    "acked version {version} after {}",
                    status.applied_version
                ));
            }
            status.applied_version = version;
        }
        self.event("config_applied", name, format!("version {version}"));
        Ok(())
    }

    async fn run_session<S, W>(
        &self,
        session: u64,
        name: &str,
        group: &str,
        rd: tokio::io::ReadHalf<S>,
        wr: &mut W,
    ) -> Result<(), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut desired_rx = self.inner.desired.clone();
        let mut leader_rx = self.inner.leader.subscribe();
        let heartbeat_ms = desired_rx
            .borrow()
            .config
            .as_ref()
            .map_or(1000, |c| c.controller.heartbeat_ms);
        let welcome = ControllerMessage::Welcome {
            proto_version: PROTO_VERSION,
            heartbeat_ms,
            health_events: true,
            stats: true,
        };
        proto::write_frame(wr, &welcome)
            .await
            .map_err(|e| e.to_string())?;

        let (mut incoming, reader) = proto::spawn_reader::<_, SeMessage>(rd, 16);
        let liveness = Duration::from_millis(heartbeat_ms * u64::from(MISSED_HEARTBEATS));
        let mut pushed = 0;
        let result = loop {
            let desired = desired_rx.borrow_and_update().clone();
            if let Some(config) = desired
                .config
                .as_ref()
                .filter(|_| desired.se_version() != pushed)
            {
                let cfg = SeConfig::for_se(
                    config,
                    group,
                    name,
                    &desired.placement,
                    &self.relays(&desired.draining, liveness),
                    &self.group_peers(group),
                    desired.se_version(),
                );
                if let Err(e) = proto::write_frame(wr, &ControllerMessage::Config(cfg)).await {
                    break Err(e.to_string());
                }
                pushed = desired.se_version();
            }
            tokio::select! {
                // Fixed poll order: tokio picks a random one otherwise, from a
                // generator madsim does not seed (docs/runtime.md).
                biased;
                changed = desired_rx.changed() => {
                    if changed.is_err() { break Ok(()) }
                }
                _ = async { leader_rx.wait_for(Option::is_none).await.is_ok() } => {
                    let _ = proto::write_frame(wr, &ControllerMessage::Refused { reason: NOT_LEADER.into() }).await;
                    break Err("this node no longer leads".into());
                }
                msg = rt::timeout(liveness, incoming.recv()) => match msg.inspect(|m| if matches!(m, Some(Ok(_))) { self.heard(name) }) {
                    Err(_) => break Err(format!("missed {MISSED_HEARTBEATS} heartbeats")),
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(e.to_string()),
                    Ok(Some(Ok(m))) => match m {
                        SeMessage::Ack { version } => {
                            if let Err(e) = self.on_ack(session, name, version) {
                                break Err(e);
                            }
                        }
                        SeMessage::Nack { version, reason } => {
                            self.event("config_refused", name, format!("version {version}: {reason}"))
                        }
                        SeMessage::Heartbeat { peers, .. } => {
                            self.on_peers_heard(name, group, &peers);
                            let ack = ControllerMessage::HeartbeatAck { desired_version: pushed };
                            if let Err(e) = proto::write_frame(wr, &ack).await {
                                break Err(e.to_string());
                            }
                        }
                        SeMessage::Health { pool, server, up, reason, outlier } => {
                            let (pool, reason) = (proto::truncate(&pool, 64), proto::truncate(&reason, proto::MAX_REASON_BYTES));
                            let (kind, state) = match (outlier, up) {
                                (false, up) => ("health_change", if up { "up" } else { "down" }),
                                (true, up) => ("outlier_ejection", if up { "returned" } else { "ejected" }),
                            };
                            self.event(kind, format!("{pool}/{server}"), format!("{state} on {name}: {reason}"))
                        }
                        SeMessage::Stats { stats } => self.on_stats(session, name, stats),
                        SeMessage::HaBeat { beat } => {
                            let ack = ControllerMessage::HaAck { ack: self.on_ha_beat(name, group, &beat) };
                            if let Err(e) = proto::write_frame(wr, &ack).await {
                                break Err(e.to_string());
                            }
                        }
                        SeMessage::HaTakeover { epoch } => {
                            let verdict = ControllerMessage::HaVerdict { verdict: self.on_ha_takeover(name, group, epoch) };
                            if let Err(e) = proto::write_frame(wr, &verdict).await {
                                break Err(e.to_string());
                            }
                        }
                        SeMessage::Hello { .. } | SeMessage::Register { .. } => {
                            break Err("hello or registration inside a session".into())
                        }
                    },
                },
            }
        };
        reader.abort();
        result
    }
}

/// Where auto-healing gets SEs from.
#[derive(Debug, Clone)]
struct Cloud {
    connector: Arc<dyn crate::platform::CloudConnector>,
    controllers: Vec<SocketAddr>,
}

fn valid_se_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
