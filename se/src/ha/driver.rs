//! The async side of legacy active/standby: the gate between the data plane
//! and the L2 fabric ([`HaL2`]), and the loop that feeds a [`Member`] and
//! carries out what it says ([`run`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fabric::ha::{PairPeer, PairSettings};
use fabric::platform::{L2Error, L2Fabric};
use fabric::proto::{ControllerMessage, SeMessage};
use fabric::rt;
use tokio::sync::watch;

use super::{Action, ControllerLink, Member, MemberConfig};

/// Largest heartbeat datagram read; a beat is about 150 bytes of JSON.
const BEAT_BYTES: usize = 1024;

/// While active, the VIPs are announced again this often (keepalived's
/// `vrrp_garp_master_refresh`), so a neighbour that missed the takeover's
/// frames, or flushed its cache, finds the holder without asking.
pub const REANNOUNCE: Duration = Duration::from_secs(60);

/// The L2 fabric as the data plane of a pair member sees it: it claims and
/// releases VIPs as its config says, but they reach the real fabric only
/// while this SE is active. A standby binds its listeners (so a takeover is
/// only a claim) and answers nothing ([`L2Fabric::serves`]).
#[derive(Debug)]
pub struct HaL2 {
    inner: Arc<dyn L2Fabric>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    active: bool,
    wanted: BTreeSet<IpAddr>,
}

impl HaL2 {
    /// A gate in front of `inner`, standby.
    pub fn new(inner: Arc<dyn L2Fabric>) -> Self {
        Self {
            inner,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the VIPs are held now.
    pub fn is_active(&self) -> bool {
        self.state().active
    }

    /// Take every VIP the config wants (claims them and announces them).
    pub async fn activate(&self) {
        let vips = {
            let mut state = self.state();
            state.active = true;
            state.wanted.clone()
        };
        for vip in vips {
            if let Err(e) = self.inner.claim_vip(vip).await {
                tracing::error!(%vip, error = %e, "HA takeover: claiming the VIP failed");
            }
        }
    }

    /// Let every VIP go.
    pub async fn deactivate(&self) {
        let vips = {
            let mut state = self.state();
            state.active = false;
            state.wanted.clone()
        };
        for vip in vips {
            if let Err(e) = self.inner.release_vip(vip).await {
                tracing::warn!(%vip, error = %e, "HA step-down: releasing the VIP failed");
            }
        }
    }

    /// Announce every held VIP again.
    pub async fn reannounce(&self) {
        let vips = {
            let state = self.state();
            if !state.active {
                return;
            }
            state.wanted.clone()
        };
        for vip in vips {
            if let Err(e) = self.inner.announce(vip).await {
                tracing::warn!(%vip, error = %e, "re-announcing the VIP failed");
            }
        }
    }
}

#[async_trait]
impl L2Fabric for HaL2 {
    async fn claim_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        let active = {
            let mut state = self.state();
            state.wanted.insert(vip);
            state.active
        };
        if active {
            self.inner.claim_vip(vip).await
        } else {
            // A standby must not hold it: an address left on the interface
            // by an earlier run that crashed (the kernel would answer ARP
            // for it and take its connections) goes now.
            if let Err(e) = self.inner.release_vip(vip).await {
                tracing::warn!(%vip, error = %e, "standby: removing a stale VIP failed");
            }
            Ok(())
        }
    }

    async fn release_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        let active = {
            let mut state = self.state();
            state.wanted.remove(&vip);
            state.active
        };
        if active {
            self.inner.release_vip(vip).await
        } else {
            Ok(())
        }
    }

    async fn announce(&self, vip: IpAddr) -> Result<(), L2Error> {
        if self.is_active() {
            self.inner.announce(vip).await
        } else {
            Ok(())
        }
    }

    fn bind_addr(&self, vip: IpAddr) -> IpAddr {
        self.inner.bind_addr(vip)
    }

    fn lost(&self, vip: IpAddr) -> bool {
        self.inner.lost(vip)
    }

    fn serves(&self, vip: IpAddr) -> bool {
        self.is_active() && self.inner.serves(vip)
    }
}

/// Who this SE is in its pair, for [`run`].
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The SE's name.
    pub name: String,
    /// Its group (the pair's name).
    pub group: String,
    /// Its peer and priority.
    pub peer: PairPeer,
}

/// Run this SE's side of its pair until the task is dropped: beats to the
/// peer over UDP (from the peer's port on any local address) and to the
/// Controller over `link`, takeovers through the Controller, the VIPs
/// claimed and released through `gate`. Waits for the group's settings
/// (`settings`, from the Controller's config) before doing anything; new
/// settings restart the member, after letting the VIPs go.
pub async fn run(
    opts: PairOptions,
    link: Arc<ControllerLink>,
    gate: Arc<HaL2>,
    mut settings: watch::Receiver<Option<PairSettings>>,
) {
    let local = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), opts.peer.peer.port());
    let socket = loop {
        match rt::UdpSocket::bind(local).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                tracing::error!(%local, error = %e, "HA: cannot bind the heartbeat port; retrying");
                rt::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Beats come through a channel from a task of their own, so that no
    // datagram is lost when the loop below drops a pending receive.
    let (beats_tx, mut beats) = tokio::sync::mpsc::channel(BEATS_QUEUE);
    let _reader = AbortOnDrop(rt::spawn(read_beats(
        socket.clone(),
        opts.peer.peer.ip(),
        beats_tx,
    )));
    loop {
        let Some(current) = *settings.borrow_and_update() else {
            if settings.changed().await.is_err() {
                return;
            }
            continue;
        };
        let config = MemberConfig {
            pair: opts.group.clone(),
            name: opts.name.clone(),
            priority: opts.peer.priority,
            preempt: current.preempt,
            profile: current.profile.timing(),
        };
        tracing::info!(se = %opts.name, peer = %opts.peer.peer, ?current, "HA: pair member starting");
        let mut member = Member::new(rt::now(), config, 0);
        let mut next_announce = rt::now() + REANNOUNCE;
        let mut out = Vec::new();
        loop {
            let wait = member.next_deadline().saturating_duration_since(rt::now());
            tokio::select! {
                // Fixed poll order (docs/runtime.md).
                biased;
                changed = settings.changed() => {
                    if changed.is_err() || *settings.borrow() != Some(current) {
                        if gate.is_active() {
                            gate.deactivate().await;
                        }
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                }
                beat = beats.recv() => match beat {
                    Some(beat) => member.on_peer_beat(rt::now(), beat, &mut out),
                    None => return,
                },
                answers = link.answers() => {
                    for answer in answers {
                        match answer {
                            ControllerMessage::HaAck { ack } => member.on_ack(ack),
                            ControllerMessage::HaVerdict { verdict } => {
                                member.on_verdict(rt::now(), verdict, &mut out)
                            }
                            _ => {}
                        }
                    }
                }
                _ = rt::sleep(wait) => {}
            }
            member.tick(rt::now(), &mut out);
            for action in out.drain(..) {
                perform(&opts, &socket, &link, &gate, action).await;
            }
            if gate.is_active() && rt::now() >= next_announce {
                gate.reannounce().await;
                next_announce = rt::now() + REANNOUNCE;
            }
        }
    }
}

/// Beats from the peer waiting for the loop; more are dropped (the next
/// one says the same, newer).
const BEATS_QUEUE: usize = 16;

/// A task aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) rt::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read beats from `peer` on `socket` into `beats` until the loop is gone.
async fn read_beats(
    socket: Arc<rt::UdpSocket>,
    peer: IpAddr,
    beats: tokio::sync::mpsc::Sender<fabric::ha::Beat>,
) {
    let mut buf = vec![0u8; BEAT_BYTES];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) if from.ip() == peer => match serde_json::from_slice(&buf[..len]) {
                Ok(beat) => {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                        beats.try_send(beat)
                    {
                        return;
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "HA: not a beat"),
            },
            Ok((_, from)) => tracing::debug!(%from, "HA: a datagram not from the peer, ignored"),
            Err(e) => tracing::debug!(error = %e, "HA: heartbeat receive error"),
        }
    }
}

async fn perform(
    opts: &PairOptions,
    socket: &rt::UdpSocket,
    link: &ControllerLink,
    gate: &HaL2,
    action: Action,
) {
    match action {
        Action::Beat(beat) => {
            let bytes = serde_json::to_vec(&beat).expect("beats always serialize");
            if let Err(e) = socket.send_to(&bytes, opts.peer.peer).await {
                tracing::debug!(peer = %opts.peer.peer, error = %e, "HA: beat not sent");
            }
            link.send(SeMessage::HaBeat { beat });
        }
        Action::AskTakeover { epoch } => link.send(SeMessage::HaTakeover { epoch }),
        Action::Claim { epoch, reason } => {
            tracing::warn!(se = %opts.name, epoch, %reason, "HA: taking over the VIPs");
            gate.activate().await;
        }
        Action::Release { reason } => {
            tracing::warn!(se = %opts.name, %reason, "HA: releasing the VIPs");
            gate.deactivate().await;
        }
    }
}
