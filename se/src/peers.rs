//! Data-path beats between the SEs of an elastic group, and the lease an SE
//! holds its VIPs on (docs/placement.md, "Partitioned SEs").
//!
//! The Controller cannot tell an SE that died from one cut off from it but
//! not from its clients. Like Avi's SE-to-SE data-path heartbeats, every SE
//! of an elastic group sends each other SE of its group a small datagram
//! every half heartbeat, to the other's relay address (UDP on the port of
//! its TCP relay listener), and reports to the Controller, in its own
//! heartbeats, which peers it heard and how long ago. The leader then
//! declares an SE down only when neither it nor any SE of the group heard
//! it for the detection time: an SE only its peers hear is *partitioned*,
//! keeps its virtual services, and nobody else claims its VIPs.
//!
//! The other half is the SE's lease. Each beat echoes the token of the last
//! beat received from its addressee, so an SE knows which of its own beats
//! a peer heard (sent at some time `t`, the peer heard it at `t` or later)
//! and, from the acknowledged Controller heartbeats, which the Controller
//! heard. The leader moves nothing off an SE sooner than the detection time
//! after the later of the two; so an SE that has peers but heard of neither
//! for [`lease_window`] of that time lets its VIPs go on its own (*fenced*),
//! before the leader can place them elsewhere, and serves them again when
//! a Controller's config says so. An SE whose group has no other SE never
//! fences: the headless rule (keep serving) holds for it.
//!
//! [`Peers`] is the pure state (time passed in); [`run`] the thin driver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::proto::{PeerHeard, ScaleoutPeer};
use fabric::rt;

use crate::ha::HaL2;

/// First bytes of every beat.
const MAGIC: &[u8; 4] = b"FKPB";
/// Version of the beat's layout.
const VERSION: u8 = 1;
/// Longest group or SE name a beat carries (SE names are at most 64 bytes).
const MAX_NAME: usize = 64;
/// Largest beat: magic, version, two tokens, two names with their lengths.
pub const MAX_BEAT_BYTES: usize = 4 + 1 + 8 + 8 + 2 * (1 + MAX_NAME);
/// Most peers kept (configured and learned from their beats).
pub const MAX_PEERS: usize = fabric::proto::MAX_PEERS_REPORTED;
/// Beats before a heartbeat is sent when no session said how often.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// One data-path beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat<'a> {
    /// The sender's elastic group.
    pub group: &'a str,
    /// The sender.
    pub from: &'a str,
    /// The sender's token for this beat (its send time; never 0).
    pub token: u64,
    /// The token of the last beat the sender received from the addressee
    /// (0: none).
    pub echo: u64,
}

/// Why a datagram is not a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BeatError {
    /// Too short, too long, or a length that points past the end.
    #[error("malformed beat")]
    Malformed,
    /// Not our magic or version.
    #[error("not a beat of this version")]
    Foreign,
}

impl<'a> Beat<'a> {
    /// Append the wire form to `out`: `FKPB`, version 1, token and echo
    /// (big-endian u64), then the group and the sender as a length byte and
    /// UTF-8 each. Names longer than [`MAX_NAME`] are cut (never the case:
    /// SE and group names are validated shorter).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.token.to_be_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
        for name in [self.group, self.from] {
            let name = fabric::proto::truncate(name, MAX_NAME);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
    }

    /// Parse one datagram.
    pub fn decode(bytes: &'a [u8]) -> Result<Beat<'a>, BeatError> {
        if bytes.len() < 4 + 1 + 16 + 2 || bytes.len() > MAX_BEAT_BYTES {
            return Err(BeatError::Malformed);
        }
        if &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err(BeatError::Foreign);
        }
        let token = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
        let echo = u64::from_be_bytes(bytes[13..21].try_into().expect("8 bytes"));
        let mut rest = &bytes[21..];
        let mut name = || -> Result<&'a str, BeatError> {
            let (&len, tail) = rest.split_first().ok_or(BeatError::Malformed)?;
            let len = usize::from(len);
            if len == 0 || len > MAX_NAME || tail.len() < len {
                return Err(BeatError::Malformed);
            }
            let (text, tail) = tail.split_at(len);
            rest = tail;
            std::str::from_utf8(text).map_err(|_| BeatError::Malformed)
        };
        let group = name()?;
        let from = name()?;
        if !rest.is_empty() || token == 0 {
            return Err(BeatError::Malformed);
        }
        Ok(Beat {
            group,
            from,
            token,
            echo,
        })
    }
}

/// How long after the later of "the Controller heard me" and "a peer heard
/// me" an SE keeps its VIPs without hearing of either again: three quarters
/// of the leader's detection time (`heartbeat` x missed heartbeats), so it
/// has let them go a quarter of that before the leader could move them.
pub fn lease_window(heartbeat: Duration, missed: u32) -> Duration {
    heartbeat * missed * 3 / 4
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    /// Named by the Controller's config (else learned from its beats).
    configured: bool,
    /// When its last beat came.
    heard: Option<Instant>,
    /// The token of its last beat, echoed in ours.
    their_token: u64,
}

/// The pure state of this SE's data-path beats and lease.
#[derive(Debug)]
pub struct Peers {
    me: String,
    group: String,
    /// Tokens are nanoseconds since this instant, plus one.
    epoch: Instant,
    peers: BTreeMap<String, Peer>,
    /// Send time of the latest own beat a peer echoed.
    vouched: Option<Instant>,
    /// Send time of the latest heartbeat the Controller acknowledged.
    controller: Option<Instant>,
    /// How often to beat, and the lease (None until a session said).
    interval: Duration,
    window: Option<Duration>,
    fenced: bool,
}

impl Peers {
    /// No peers yet; `now` anchors the tokens.
    pub fn new(me: &str, group: &str, now: Instant) -> Self {
        Self {
            me: me.into(),
            group: group.into(),
            epoch: now,
            peers: BTreeMap::new(),
            vouched: None,
            controller: None,
            interval: DEFAULT_INTERVAL,
            window: None,
            fenced: false,
        }
    }

    /// The Controller's list of the group's other SEs: they are beaten
    /// from now on; peers it no longer names are kept while they beat (as
    /// if learned), until they go quiet.
    pub fn configure(&mut self, list: &[ScaleoutPeer]) {
        for p in self.peers.values_mut() {
            p.configured = false;
        }
        for l in list.iter().filter(|l| l.se != self.me) {
            if let Some(p) = self.peers.get_mut(&l.se) {
                p.configured = true;
                p.addr = l.relay;
            } else if self.peers.len() < MAX_PEERS {
                self.peers.insert(
                    l.se.clone(),
                    Peer {
                        addr: l.relay,
                        configured: true,
                        heard: None,
                        their_token: 0,
                    },
                );
            }
        }
    }

    /// A session told how often to beat: half its heartbeat; and the lease.
    pub fn set_timing(&mut self, heartbeat: Duration, missed: u32) {
        self.interval = (heartbeat / 2).max(Duration::from_millis(5));
        self.window = Some(lease_window(heartbeat, missed));
    }

    /// How often to beat.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The Controller acknowledged a heartbeat this SE sent at `sent` (or
    /// welcomed a hello sent then).
    pub fn controller_heard(&mut self, sent: Instant) {
        self.controller = Some(self.controller.map_or(sent, |c| c.max(sent)));
    }

    fn token(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() as u64).saturating_add(1)
    }

    /// A datagram from `from`: a beat of a peer of this group is recorded
    /// (an unknown sender of the group is learned, up to [`MAX_PEERS`]);
    /// anything else is ignored. Returns whether it was a beat taken.
    pub fn on_datagram(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) -> bool {
        let Ok(beat) = Beat::decode(bytes) else {
            return false;
        };
        if beat.group != self.group || beat.from == self.me {
            return false;
        }
        if !self.peers.contains_key(beat.from) {
            if self.peers.len() >= MAX_PEERS {
                return false;
            }
            self.peers.insert(
                beat.from.to_string(),
                Peer {
                    addr: from,
                    configured: false,
                    heard: None,
                    their_token: 0,
                },
            );
        }
        let peer = self.peers.get_mut(beat.from).expect("inserted above");
        peer.heard = Some(now);
        peer.their_token = beat.token;
        if !peer.configured {
            peer.addr = from;
        }
        // The echo names one of our own beats: when we sent it. A token
        // from the future (a forged or garbled echo) proves nothing.
        if beat.echo != 0 {
            let sent = self.epoch + Duration::from_nanos(beat.echo - 1);
            if sent <= now {
                self.vouched = Some(self.vouched.map_or(sent, |v| v.max(sent)));
            }
        }
        true
    }

    /// The beats to send now, one per peer, as (address, bytes) into `out`
    /// (cleared first); learned peers quiet for ten lease windows are
    /// forgotten.
    pub fn beats(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        out.clear();
        let forget = self.window.unwrap_or(DEFAULT_INTERVAL * 3) * 10;
        self.peers.retain(|_, p| {
            p.configured
                || p.heard
                    .is_some_and(|h| now.saturating_duration_since(h) < forget)
        });
        let token = self.token(now);
        for p in self.peers.values() {
            let mut bytes = Vec::with_capacity(MAX_BEAT_BYTES);
            Beat {
                group: &self.group,
                from: &self.me,
                token,
                echo: p.their_token,
            }
            .encode(&mut bytes);
            out.push((p.addr, bytes));
        }
    }

    /// The peers heard within `within`, and how long ago, for a heartbeat.
    pub fn heard(&self, now: Instant, within: Duration) -> Vec<PeerHeard> {
        self.peers
            .iter()
            .filter_map(|(name, p)| {
                let ago = now.saturating_duration_since(p.heard?);
                (ago < within).then(|| PeerHeard {
                    se: name.clone(),
                    ms_ago: ago.as_millis() as u64,
                })
            })
            .collect()
    }

    /// Whether this SE should let its VIPs go now: it has peers, a session
    /// told it the lease, and neither the Controller nor any peer heard a
    /// message it sent within the lease window. Only once: true again only
    /// after [`lift`](Self::lift).
    pub fn fence_due(&mut self, now: Instant) -> bool {
        let Some(window) = self.window else {
            return false;
        };
        if self.fenced || self.peers.is_empty() {
            return false;
        }
        let Some(base) = self.controller.max(self.vouched) else {
            return false;
        };
        if now.saturating_duration_since(base) <= window {
            return false;
        }
        self.fenced = true;
        true
    }

    /// Whether the VIPs are fenced now.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// A Controller's config arrived: the SE serves what it says again.
    /// Returns whether it was fenced.
    pub fn lift(&mut self) -> bool {
        std::mem::take(&mut self.fenced)
    }
}

/// What the agent's session and the beat driver share.
#[derive(Debug)]
pub struct PeerLink {
    state: Mutex<Peers>,
    /// The VIPs' gate: closed while fenced.
    gate: Arc<HaL2>,
    wake: tokio::sync::Notify,
}

impl PeerLink {
    /// A link for SE `me` of `group`, fencing through `gate`.
    pub fn new(me: &str, group: &str, gate: Arc<HaL2>) -> Self {
        Self {
            state: Mutex::new(Peers::new(me, group, rt::now())),
            gate,
            wake: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session was welcomed: its heartbeat sets the beat and lease
    /// timing, and the hello sent at `hello_sent` was heard.
    pub fn session_up(&self, hello_sent: Instant, heartbeat: Duration, missed: u32) {
        let mut s = self.state();
        s.set_timing(heartbeat, missed);
        s.controller_heard(hello_sent);
        drop(s);
        self.wake.notify_one();
    }

    /// The Controller acknowledged the heartbeat sent at `sent`.
    pub fn controller_heard(&self, sent: Instant) {
        self.state().controller_heard(sent);
    }

    /// The peers heard within `within`, for a heartbeat.
    pub fn heard(&self, within: Duration) -> Vec<PeerHeard> {
        self.state().heard(rt::now(), within)
    }

    /// A config from the Controller was applied: its peers are beaten, and
    /// a fenced SE takes its VIPs again (what the config still gives it).
    pub async fn config_applied(&self, peers: &[ScaleoutPeer]) {
        let was_fenced = {
            let mut s = self.state();
            s.configure(peers);
            s.lift()
        };
        self.wake.notify_one();
        if was_fenced {
            tracing::warn!("a Controller's config came: serving the VIPs it gives again");
            self.gate.activate().await;
        }
    }
}

/// Beats and the lease until the task is dropped: a reader task records
/// the beats that come on `socket` (its own task, so that no datagram is
/// lost to a receive dropped half-way), and this loop sends this SE's every
/// interval and fences the VIPs when the lease runs out.
pub async fn run(link: Arc<PeerLink>, socket: rt::UdpSocket, relays: crate::scaleout::RelayTable) {
    let socket = Arc::new(socket);
    let relay = crate::l4::UdpRelay::new(relays, socket.clone());
    let reader = rt::spawn(read_beats(link.clone(), socket.clone(), relay));
    let _reader = crate::ha::AbortOnDrop(reader);
    let mut out = Vec::new();
    let mut next = rt::now();
    loop {
        let wait = next.saturating_duration_since(rt::now());
        tokio::select! {
            // Fixed poll order (docs/runtime.md).
            biased;
            _ = link.wake.notified() => {}
            _ = rt::sleep(wait) => {}
        }
        let now = rt::now();
        let fence = {
            let mut s = link.state();
            s.beats(now, &mut out);
            next = now + s.interval();
            s.fence_due(now)
        };
        for (addr, bytes) in &out {
            if let Err(e) = socket.send_to(bytes, *addr).await {
                tracing::debug!(%addr, error = %e, "peer beat not sent");
            }
        }
        if fence {
            tracing::warn!("neither the Controller nor any peer heard this SE within its lease: letting the VIPs go until a Controller's config comes");
            link.gate.deactivate().await;
        }
    }
}

/// Read the relay port's datagrams: beats, and UDP flows a primary relays
/// here (`scaleout::PROXY_V2_SIGNATURE` first).
async fn read_beats(link: Arc<PeerLink>, socket: Arc<rt::UdpSocket>, relay: crate::l4::UdpRelay) {
    let size = crate::l4::MAX_DATAGRAM + crate::scaleout::MAX_PROXY_V2_HEADER + 1;
    let mut buf = vec![0u8; size.max(MAX_BEAT_BYTES + 1)];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let datagram = &buf[..len];
                if datagram.starts_with(&crate::scaleout::PROXY_V2_SIGNATURE) {
                    relay.on_datagram(datagram, from).await;
                    continue;
                }
                link.state().on_datagram(rt::now(), datagram, from);
            }
            Err(e) => {
                tracing::debug!(error = %e, "peer beat receive error");
                rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
