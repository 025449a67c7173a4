//! Legacy active/standby: one SE's side of a pair, as a pure state machine.
//!
//! [`Member`] is fed what the SE hears (its peer's [`Beat`]s, the
//! Controller's [`HaAck`]s and [`Verdict`]s) and the time, and says what to
//! do ([`Action`]): send a beat, ask for the VIPs, claim them, release them.
//! The driver moves bytes and calls the L2 fabric; the rules live here
//! (docs/ha.md, "Who may hold a VIP"):
//!
//! - A member starts in [`Role::Starting`] and listens for a dead interval
//!   before it may ask for anything, so an old active that restarts learns
//!   of the new one before it answers.
//! - An active keeps its VIPs while it holds a lease: a leader's ack, or
//!   its peer's echo ([`Beat::heard`]), of a beat it sent within the dead
//!   interval. The standby asks for nothing until a dead interval after the
//!   last beat it heard, and the leader grants nothing until a dead interval
//!   after the last beat it acked, so neither can act before the lease is
//!   over. With neither for a dead interval, the active is the isolated
//!   side, or everything else is down: it releases. It also releases when its peer is active with a higher rank
//!   ([`Beat::outranks`]), or, with preemption on, when a standby peer of
//!   higher priority is ready.
//! - A standby asks the Controller for the VIPs when its peer has been
//!   silent for the dead interval, or says it is not active and this member
//!   is preferred (higher priority, then smaller name), or (preemption) is
//!   active with a lower priority. Only a grant makes it active: without a
//!   Controller leader (headless) nobody takes over, and the active keeps
//!   serving while it hears its peer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fabric::proto::{ControllerMessage, SeMessage};
use tokio::sync::Notify;

pub use fabric::ha::{Beat, HaAck, Profile, Role, Verdict};

/// Who this member is.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The pair's name (its SE group).
    pub pair: String,
    /// This SE's name.
    pub name: String,
    /// Preferred when higher.
    pub priority: u8,
    /// Whether a higher-priority standby takes the VIPs back from a
    /// lower-priority active.
    pub preempt: bool,
    /// Heartbeat timing.
    pub profile: Profile,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this beat to the peer and to the Controller.
    Beat(Beat),
    /// Ask the Controller for the VIPs; `epoch` is the highest one known.
    AskTakeover {
        /// Highest epoch this member knows.
        epoch: u64,
    },
    /// Become active: claim every VIP of the pair and announce them.
    Claim {
        /// The epoch granted.
        epoch: u64,
        /// Why, for logs and events.
        reason: String,
    },
    /// Stop being active: release every VIP.
    Release {
        /// Why, for logs and events.
        reason: String,
    },
}

/// Beats remembered for matching acks and echoes; older ones no longer
/// matter (a dead interval is a few beats).
const SENT_BEATS: usize = 16;

/// One SE's side of a legacy active/standby pair.
#[derive(Debug, Clone)]
pub struct Member {
    config: MemberConfig,
    role: Role,
    epoch: u64,
    started: Instant,
    next_beat: Instant,
    seq: u64,
    /// The peer's last beat and when it came.
    peer: Option<(Instant, Beat)>,
    /// When the newest beat a leader acked was sent: the lease runs a
    /// dead interval from there.
    lease_from: Option<Instant>,
    /// When the newest beat the peer echoed was sent: the same for the
    /// peer's side.
    echo_from: Option<Instant>,
    /// The newest beats sent: (seq, sent at).
    sent: VecDeque<(u64, Instant)>,
    /// No takeover request before this (one is in flight, or was refused).
    ask_after: Option<Instant>,
    /// When the last takeover request was sent: a grant is a lease from then.
    asked_at: Option<Instant>,
    /// The epoch of this member's own grant, while active.
    claimed_epoch: u64,
    /// Since when neither this member nor its peer has been active (as the
    /// peer's beats say).
    no_active_since: Option<Instant>,
}

impl Member {
    /// A member that just started at `now`; `epoch` is the highest epoch it
    /// remembers (0 for none).
    pub fn new(now: Instant, config: MemberConfig, epoch: u64) -> Self {
        Self {
            config,
            role: Role::Starting,
            epoch,
            started: now,
            next_beat: now,
            seq: 0,
            peer: None,
            lease_from: None,
            echo_from: None,
            sent: VecDeque::new(),
            ask_after: None,
            asked_at: None,
            claimed_epoch: 0,
            no_active_since: None,
        }
    }

    /// Its role now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The highest epoch it knows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When [`tick`](Self::tick) must run next at the latest.
    pub fn next_deadline(&self) -> Instant {
        let dead = self.config.profile.dead();
        let mut next = self.next_beat;
        let mut consider = |t: Instant| next = next.min(t);
        match self.role {
            Role::Starting => consider(self.started + dead),
            Role::Active => consider(self.hold_until()),
            Role::Standby => {
                consider(self.peer_until());
                if let Some(since) = self.no_active_since {
                    consider(since + dead);
                }
            }
        }
        if let Some(at) = self.ask_after {
            consider(at);
        }
        next
    }

    fn peer_until(&self) -> Instant {
        match &self.peer {
            Some((at, _)) => *at + self.config.profile.dead(),
            None => self.started,
        }
    }

    /// Until when an active may hold its VIPs: a dead interval after the
    /// newest of its beats a leader acked or its peer echoed.
    fn hold_until(&self) -> Instant {
        match self.lease_from.max(self.echo_from) {
            Some(from) => from + self.config.profile.dead(),
            None => self.started,
        }
    }

    fn sent_at(&self, seq: u64) -> Option<Instant> {
        self.sent.iter().find(|(s, _)| *s == seq).map(|(_, at)| *at)
    }

    /// Whether the peer was heard within the dead interval.
    pub fn peer_alive(&self, now: Instant) -> bool {
        self.peer.is_some() && now < self.peer_until()
    }

    /// Whether a lease (a leader's ack or the peer's echo) holds at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        now < self.hold_until()
    }

    fn beat(&mut self, now: Instant) -> Beat {
        self.seq += 1;
        if self.sent.len() == SENT_BEATS {
            self.sent.pop_front();
        }
        self.sent.push_back((self.seq, now));
        self.next_beat = now + self.config.profile.heartbeat;
        Beat {
            pair: self.config.pair.clone(),
            from: self.config.name.clone(),
            role: self.role,
            epoch: self.beat_epoch(),
            priority: self.config.priority,
            seq: self.seq,
            heard: self.peer.as_ref().map_or(0, |(_, b)| b.seq),
        }
    }

    /// The epoch a beat carries: its own grant's while active, else the
    /// highest one known.
    fn beat_epoch(&self) -> u64 {
        if self.role == Role::Active {
            self.claimed_epoch
        } else {
            self.epoch
        }
    }

    fn step_down(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        if self.role == Role::Active {
            out.push(Action::Release { reason });
            self.role = Role::Standby;
            // Tell the peer at once, so it need not wait for a dead interval.
            let beat = self.beat(now);
            out.push(Action::Beat(beat));
        } else {
            self.role = Role::Standby;
        }
    }

    /// Whether this member should hold the VIPs rather than its peer, as
    /// far as the peer's last beat says.
    fn should_take_over(&self, now: Instant) -> bool {
        let Some((_, peer)) = self.peer.as_ref().filter(|_| self.peer_alive(now)) else {
            return true;
        };
        let me_preferred = (self.config.priority, std::cmp::Reverse(&self.config.name))
            > (peer.priority, std::cmp::Reverse(&peer.from));
        match peer.role {
            // A preempting standby waits for the active to step down
            // (it does on seeing this member ready: `on_peer_beat`).
            Role::Active => false,
            // The preferred one asks at once; the other after the pair has
            // been without an active for a dead interval (the preferred one
            // cannot get a grant: it may be cut from the Controller).
            Role::Standby => {
                me_preferred
                    || self
                        .no_active_since
                        .is_some_and(|since| now >= since + self.config.profile.dead())
            }
            // A peer that just (re)started holds nothing and asks for nothing yet.
            Role::Starting => true,
        }
    }

    /// Let time pass to `now`.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let dead = self.config.profile.dead();
        if self.role == Role::Starting && now >= self.started + dead {
            self.role = Role::Standby;
        }
        if self.role == Role::Active && !self.lease_valid(now) {
            self.step_down(
                now,
                format!(
                    "isolated: neither the peer nor the Controller leader heard a beat \
                     of ours within {} ms",
                    dead.as_millis()
                ),
                out,
            );
        }
        if self.role == Role::Standby && self.should_take_over(now) {
            // One request in flight; a lost one is asked again after a
            // dead interval, a refused one after a heartbeat.
            if self.ask_after.is_none_or(|at| now >= at) {
                self.ask_after = Some(now + dead);
                self.asked_at = Some(now);
                out.push(Action::AskTakeover { epoch: self.epoch });
            }
        }
        if now >= self.next_beat {
            let beat = self.beat(now);
            out.push(Action::Beat(beat));
        }
    }

    /// The peer's beat arrived at `now`.
    pub fn on_peer_beat(&mut self, now: Instant, beat: Beat, out: &mut Vec<Action>) {
        if beat.pair != self.config.pair || beat.from == self.config.name {
            return;
        }
        self.epoch = self.epoch.max(beat.epoch);
        if let Some(sent) = self.sent_at(beat.heard) {
            self.echo_from = Some(self.echo_from.map_or(sent, |e| e.max(sent)));
        }
        match (self.role, beat.role) {
            (Role::Active, Role::Active)
                if beat.rank()
                    > fabric::ha::rank(
                        self.claimed_epoch,
                        self.config.priority,
                        &self.config.name,
                    ) =>
            {
                let reason = format!(
                    "{} is active with epoch {} (ours {})",
                    beat.from, beat.epoch, self.claimed_epoch
                );
                self.peer = Some((now, beat));
                self.step_down(now, reason, out);
                return;
            }
            (Role::Active, Role::Standby)
                if self.config.preempt && beat.priority > self.config.priority =>
            {
                let reason = format!(
                    "preempted by {} (priority {} over {})",
                    beat.from, beat.priority, self.config.priority
                );
                self.peer = Some((now, beat));
                self.step_down(now, reason, out);
                return;
            }
            (Role::Starting, Role::Active) => self.role = Role::Standby,
            _ => {}
        }
        if self.role != Role::Active && beat.role != Role::Active {
            self.no_active_since.get_or_insert(now);
        } else {
            self.no_active_since = None;
        }
        let echo = beat.role == Role::Active && self.role != Role::Active;
        self.peer = Some((now, beat));
        if echo {
            // The active's lease from this member runs from the beat it
            // sent: answer at once rather than with the next beat, so one
            // lost beat does not eat up the dead interval.
            let beat = self.beat(now);
            out.push(Action::Beat(beat));
        }
    }

    /// The Controller acked beat `ack.seq`.
    pub fn on_ack(&mut self, ack: HaAck) {
        if !ack.leader {
            return;
        }
        if let Some(sent) = self.sent_at(ack.seq) {
            self.lease_from = Some(self.lease_from.map_or(sent, |l| l.max(sent)));
        }
    }

    /// The Controller answered the takeover request.
    pub fn on_verdict(&mut self, now: Instant, verdict: Verdict, out: &mut Vec<Action>) {
        self.ask_after = None;
        match verdict {
            Verdict::Granted { epoch } if self.role != Role::Active => {
                self.epoch = self.epoch.max(epoch);
                self.claimed_epoch = epoch;
                self.role = Role::Active;
                // The leader granted after the request was sent: a lease
                // from then (not from now, which is later than its view).
                self.lease_from = self.lease_from.max(self.asked_at);
                out.push(Action::Claim {
                    epoch,
                    reason: match &self.peer {
                        Some((at, peer)) if now < *at + self.config.profile.dead() => {
                            format!("granted; {} said {:?}", peer.from, peer.role)
                        }
                        Some((at, peer)) => format!(
                            "granted; {} silent for {} ms",
                            peer.from,
                            now.duration_since(*at).as_millis()
                        ),
                        None => "granted; no peer heard since start".into(),
                    },
                });
                let beat = self.beat(now);
                out.push(Action::Beat(beat));
            }
            Verdict::Granted { .. } => {}
            Verdict::Refused { retry_after_ms, .. } => {
                // Ask again when the arbiter says it could say yes (but
                // within a heartbeat), else after a heartbeat; never at once.
                let heartbeat = self.config.profile.heartbeat;
                let wait = retry_after_ms
                    .map_or(heartbeat, |ms| Duration::from_millis(ms).min(heartbeat))
                    .max(Duration::from_millis(1));
                self.ask_after = Some(now + wait);
            }
        }
    }
}

mod driver;

pub(crate) use driver::AbortOnDrop;
pub use driver::{run, HaL2, PairOptions, REANNOUNCE};

/// Messages queued either way between the HA driver and the Controller
/// session; beyond it the oldest go (a beat is worth less than the next).
pub const LINK_QUEUE: usize = 32;

/// The HA driver's way to the Controller: whichever session the agent has
/// up carries the driver's messages and hands back the Controller's
/// answers. Bounded both ways; without a session nothing moves, which the
/// driver sees as a Controller it does not hear.
#[derive(Debug, Default)]
pub struct ControllerLink {
    out: Mutex<VecDeque<SeMessage>>,
    out_ready: Notify,
    inbox: Mutex<VecDeque<ControllerMessage>>,
    in_ready: Notify,
}

impl ControllerLink {
    /// A link with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    fn push<T>(queue: &Mutex<VecDeque<T>>, ready: &Notify, msg: T) {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == LINK_QUEUE {
            q.pop_front();
        }
        q.push_back(msg);
        drop(q);
        ready.notify_one();
    }

    fn take<T>(queue: &Mutex<VecDeque<T>>) -> Vec<T> {
        queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// Driver side: send `msg` to the Controller.
    pub fn send(&self, msg: SeMessage) {
        Self::push(&self.out, &self.out_ready, msg);
    }

    /// Driver side: wait for answers from the Controller.
    pub async fn answers(&self) -> Vec<ControllerMessage> {
        loop {
            let got = Self::take(&self.inbox);
            if !got.is_empty() {
                return got;
            }
            self.in_ready.notified().await;
        }
    }

    /// Session side: wait until the driver queued something.
    pub async fn outgoing(&self) {
        self.out_ready.notified().await
    }

    /// Session side: everything the driver queued, oldest first.
    pub fn take_outgoing(&self) -> Vec<SeMessage> {
        Self::take(&self.out)
    }

    /// Session side: an answer from the Controller for the driver.
    pub fn deliver(&self, msg: ControllerMessage) {
        Self::push(&self.inbox, &self.in_ready, msg);
    }
}

#[cfg(test)]
mod tests;
