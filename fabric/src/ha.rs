//! Legacy active/standby (seed 002): what the two SEs of a pair and the
//! Controller say to each other, and the Controller's side of it, the
//! [`Arbiter`] that decides who may take the pair's VIPs.
//!
//! Each SE of a pair sends a [`Beat`] every heartbeat to its peer (UDP) and
//! to the Controller (its session). The Controller answers each beat with an
//! [`HaAck`]; an ack from the Raft leader renews the sender's *lease*, from
//! the moment the beat was sent. A peer's beat says which of the active's
//! beats it heard last ([`Beat::heard`]), which renews the active's hold in
//! the same way, since a standby asks for nothing while it hears the active.
//! An active SE keeps its VIPs while one of the two holds; with neither for
//! the dead interval, it steps down (`se::ha`). A standby that stops hearing an active peer asks
//! the Controller for the VIPs ([`Arbiter::takeover`]), and the leader
//! grants them only when the current owner cannot still be holding them:
//! it released them (its last beat says so), or its lease, which only this
//! leader renews, has run out. So a grant never overlaps an owner that is
//! still active by its own rules, whichever link broke. A new leader grants
//! nothing until one dead interval after it won, since it does not know the
//! leases its predecessor gave.
//!
//! Pure: time comes in as arguments (docs/ha.md, "Who may hold a VIP").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Heartbeat timing of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Time between two beats.
    pub heartbeat: Duration,
    /// Beats missed in a row before the peer is dead.
    pub misses: u32,
}

impl Profile {
    /// Legacy HA's default (seed 002: "default failover time is 9 seconds"):
    /// a beat every 3 s, dead after 3 missed.
    pub const DEFAULT: Profile = Profile {
        heartbeat: Duration::from_secs(3),
        misses: 3,
    };
    /// Failover in under a second: a beat every 100 ms, dead after 3 missed.
    pub const FAST: Profile = Profile {
        heartbeat: Duration::from_millis(100),
        misses: 3,
    };

    /// How long a silent peer (or Controller) is still counted alive.
    pub fn dead(&self) -> Duration {
        self.heartbeat * self.misses
    }
}

/// How an SE reaches its pair peer (given to the SE when it is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPeer {
    /// The peer's heartbeat address; this SE listens on the same port.
    pub peer: std::net::SocketAddr,
    /// This SE's priority (the higher one is preferred).
    pub priority: u8,
}

/// A legacy active/standby group's settings, as the Controller sends them
/// to its SEs (so both sides of a lease use the same timing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairSettings {
    /// Heartbeat timing.
    pub profile: crate::model::HaProfile,
    /// Whether a higher-priority standby takes the VIPs back.
    pub preempt: bool,
}

/// Default UDP port of the heartbeats between the two SEs of a pair.
pub const DEFAULT_PAIR_PORT: u16 = 7475;

/// Most pairs the arbiter tracks; beats for more are refused.
pub const MAX_PAIRS: usize = 4096;

/// Where an SE stands in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Just started (or restarted): listening for an active peer before
    /// anything else, so an old active that comes back never answers first.
    Starting,
    /// Holds no VIP; takes over when the active is gone and the Controller
    /// grants it.
    Standby,
    /// Holds the pair's VIPs.
    Active,
}

/// One heartbeat of a pair member, to its peer and to the Controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// The pair (the SE group's name).
    pub pair: String,
    /// The sending SE.
    pub from: String,
    /// Its role now.
    pub role: Role,
    /// The highest ownership epoch it knows of (its own, when active).
    pub epoch: u64,
    /// Its priority: the higher one is preferred when both are standby,
    /// and takes over from a lower one when preemption is on.
    pub priority: u8,
    /// Counts the sender's beats, to match acks.
    pub seq: u64,
    /// The `seq` of the newest beat the sender received from its peer (0:
    /// none). It tells the peer "I hear you": a standby that heard beat `s`
    /// asks for nothing until a dead interval after it, so the active may
    /// hold its VIPs until a dead interval after it sent `s`.
    #[serde(default)]
    pub heard: u64,
}

impl Beat {
    /// Whether `self` wins against `other` when both claim the same pair:
    /// the higher epoch, then the higher priority, then the smaller name.
    pub fn outranks(&self, other: &Beat) -> bool {
        self.rank() > other.rank()
    }

    /// What [`outranks`](Self::outranks) compares.
    pub fn rank(&self) -> (u64, u8, std::cmp::Reverse<&str>) {
        rank(self.epoch, self.priority, &self.from)
    }
}

/// The rank of a member holding `epoch` with `priority` and `name`: higher
/// wins (the higher epoch, then priority, then the smaller name).
pub fn rank(epoch: u64, priority: u8, name: &str) -> (u64, u8, std::cmp::Reverse<&str>) {
    (epoch, priority, std::cmp::Reverse(name))
}

/// The Controller's answer to a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaAck {
    /// The beat's sequence number.
    pub seq: u64,
    /// Whether the node answering is the Raft leader (only its acks renew
    /// a lease).
    pub leader: bool,
}

/// The Controller's answer to a takeover request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Take the VIPs, with this epoch.
    Granted {
        /// The new ownership epoch, above every one before.
        epoch: u64,
    },
    /// Do not.
    Refused {
        /// Why, for logs and events.
        reason: String,
        /// When asking again could succeed, if the arbiter knows (the
        /// holder's lease running out, a new leader's wait ending).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// What the arbiter knows of one pair member.
#[derive(Debug, Clone)]
struct Seen {
    /// When this leader last acked one of its beats.
    acked: Instant,
    role: Role,
    /// The epoch this leader last granted it (0: none), and when.
    granted: u64,
    granted_at: Instant,
}

#[derive(Debug, Clone, Default)]
struct PairState {
    owner: Option<String>,
    epoch: u64,
    members: BTreeMap<String, Seen>,
}

/// The Controller's record of every pair: who holds its VIPs, and when it
/// last heard each member. Kept by every Controller node; only the leader's
/// acks and grants count.
#[derive(Debug, Clone, Default)]
pub struct Arbiter {
    leader_since: Option<Instant>,
    pairs: BTreeMap<String, PairState>,
}

impl Arbiter {
    /// An arbiter that is not the leader yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// This node became the leader at `now` (`true`) or stopped being it.
    /// Leaving leadership forgets everything: a later term starts afresh.
    pub fn set_leader(&mut self, now: Instant, leader: bool) {
        match (leader, self.leader_since) {
            (true, None) => self.leader_since = Some(now),
            (false, Some(_)) => {
                self.leader_since = None;
                self.pairs.clear();
            }
            _ => {}
        }
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader_since.is_some()
    }

    /// Record `beat`, received at `now` from a pair whose dead interval is
    /// `dead`; the ack to send back.
    pub fn beat(&mut self, now: Instant, beat: &Beat, dead: Duration) -> HaAck {
        let known = self.pairs.contains_key(&beat.pair);
        let mut recorded = false;
        if self.is_leader() && (known || self.pairs.len() < MAX_PAIRS) {
            let pair = self.pairs.entry(beat.pair.clone()).or_default();
            // Two members at most: a third SE claiming the pair is a
            // misconfiguration and gets no lease.
            if pair.members.len() < 2 || pair.members.contains_key(&beat.from) {
                if beat.role == Role::Active && (pair.owner.is_none() || beat.epoch > pair.epoch) {
                    // An owner this leader did not grant (a predecessor
                    // did): it is the owner until it says otherwise.
                    pair.owner = Some(beat.from.clone());
                }
                pair.epoch = pair.epoch.max(beat.epoch);
                let seen = pair.members.entry(beat.from.clone()).or_insert(Seen {
                    acked: now,
                    role: beat.role,
                    granted: 0,
                    granted_at: now,
                });
                seen.acked = now;
                // A beat sent before its sender learned of its grant still
                // says standby: within a dead interval of a grant, only a
                // beat that knows the grant's epoch says the VIPs were
                // released (or one from a restart, which holds nothing).
                let stale = beat.role == Role::Standby
                    && beat.epoch < seen.granted
                    && now.duration_since(seen.granted_at) < dead;
                if !stale {
                    seen.role = beat.role;
                }
                recorded = true;
            }
        }
        HaAck {
            seq: beat.seq,
            leader: recorded,
        }
    }

    /// Whether `from` may take `pair`'s VIPs at `now`. `seen_epoch` is the
    /// highest epoch it knows; `dead` the pair's dead interval (heartbeat x
    /// misses). A grant records `from` as the owner with a new epoch.
    pub fn takeover(
        &mut self,
        now: Instant,
        pair_name: &str,
        from: &str,
        seen_epoch: u64,
        dead: Duration,
    ) -> Verdict {
        let refuse = |reason: String| Verdict::Refused {
            reason,
            retry_after_ms: None,
        };
        let refuse_until = |reason: String, left: Duration| Verdict::Refused {
            reason,
            // A millisecond past the moment, so the retry finds it passed.
            retry_after_ms: Some(left.as_millis() as u64 + 1),
        };
        let Some(since) = self.leader_since else {
            return refuse("this Controller node is not the leader".into());
        };
        if now.duration_since(since) < dead {
            return refuse_until(
                format!(
                    "the leader is new: it grants nothing until {} ms after it won, \
                     as it does not know the leases its predecessor gave",
                    dead.as_millis()
                ),
                dead - now.duration_since(since),
            );
        }
        if !self.pairs.contains_key(pair_name) && self.pairs.len() >= MAX_PAIRS {
            return refuse(format!("more than {MAX_PAIRS} pairs"));
        }
        let pair = self.pairs.entry(pair_name.to_string()).or_default();
        if pair.members.len() >= 2 && !pair.members.contains_key(from) {
            return refuse(format!("{from} is not one of the pair's two SEs"));
        }
        pair.epoch = pair.epoch.max(seen_epoch);
        // Any other member heard active within the dead interval may still
        // hold the VIPs by its own rules: whoever this leader thinks the
        // owner is (a grant whose answer was lost moves nothing).
        for (name, seen) in &pair.members {
            let age = now.duration_since(seen.acked);
            if name != from && seen.role == Role::Active && age < dead {
                return refuse_until(
                    format!(
                        "{name} holds the VIPs and was heard {} ms ago (dead after {} ms)",
                        age.as_millis(),
                        dead.as_millis()
                    ),
                    dead - age,
                );
            }
        }
        // A member never heard by this leader, for a whole dead interval
        // since it won, holds no lease any more.
        pair.epoch += 1;
        pair.owner = Some(from.to_string());
        let epoch = pair.epoch;
        if pair.members.len() < 2 || pair.members.contains_key(from) {
            let seen = pair.members.entry(from.to_string()).or_insert(Seen {
                acked: now,
                role: Role::Active,
                granted: epoch,
                granted_at: now,
            });
            seen.acked = now;
            seen.role = Role::Active;
            seen.granted = epoch;
            seen.granted_at = now;
        }
        Verdict::Granted { epoch }
    }

    /// Who holds `pair`'s VIPs as far as this node knows, and the epoch.
    pub fn owner(&self, pair: &str) -> Option<(&str, u64)> {
        let p = self.pairs.get(pair)?;
        Some((p.owner.as_deref()?, p.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_millis(300);

    fn beat(from: &str, role: Role, epoch: u64) -> Beat {
        Beat {
            pair: "g".into(),
            from: from.into(),
            role,
            epoch,
            priority: 100,
            seq: 1,
            heard: 0,
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn leader(t0: Instant) -> Arbiter {
        let mut a = Arbiter::new();
        a.set_leader(t0, true);
        a
    }

    #[test]
    fn a_follower_acks_without_a_lease_and_grants_nothing() {
        let t0 = crate::rt::now();
        let mut a = Arbiter::new();
        assert_eq!(
            a.beat(t0, &beat("a", Role::Active, 1), DEAD),
            HaAck {
                seq: 1,
                leader: false
            }
        );
        assert!(matches!(
            a.takeover(ms(t0, 1000), "g", "b", 1, DEAD),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn a_new_leader_waits_one_dead_interval() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        assert!(matches!(
            a.takeover(ms(t0, 100), "g", "b", 0, DEAD),
            Verdict::Refused { .. }
        ));
        assert_eq!(
            a.takeover(ms(t0, 300), "g", "b", 0, DEAD),
            Verdict::Granted { epoch: 1 }
        );
        assert_eq!(a.owner("g"), Some(("b", 1)));
    }

    #[test]
    fn an_owner_heard_within_the_dead_interval_keeps_the_vips() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        a.beat(ms(t0, 400), &beat("a", Role::Active, 3), DEAD);
        assert_eq!(a.owner("g"), Some(("a", 3)));
        // The pair link broke: b hears nothing from a, but the leader does.
        let v = a.takeover(ms(t0, 650), "g", "b", 3, DEAD);
        assert!(
            matches!(v, Verdict::Refused { ref reason, retry_after_ms: Some(51) } if reason.contains("a holds"))
        );
        // a goes silent: once its lease is over, b gets a higher epoch.
        assert_eq!(
            a.takeover(ms(t0, 700), "g", "b", 3, DEAD),
            Verdict::Granted { epoch: 4 }
        );
        // Now a is the one refused while b is heard.
        a.beat(ms(t0, 750), &beat("b", Role::Active, 4), DEAD);
        assert!(matches!(
            a.takeover(ms(t0, 800), "g", "a", 4, DEAD),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn an_owner_that_released_can_be_followed_at_once() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        a.beat(ms(t0, 400), &beat("a", Role::Active, 1), DEAD);
        a.beat(ms(t0, 500), &beat("a", Role::Standby, 1), DEAD);
        assert_eq!(
            a.takeover(ms(t0, 510), "g", "b", 1, DEAD),
            Verdict::Granted { epoch: 2 }
        );
    }

    #[test]
    fn epochs_only_grow_and_leadership_loss_forgets() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        // A requester that saw epoch 9 (from an earlier leader) gets 10.
        assert_eq!(
            a.takeover(ms(t0, 300), "g", "b", 9, DEAD),
            Verdict::Granted { epoch: 10 }
        );
        // The owner asking again is granted again, with a higher epoch.
        assert_eq!(
            a.takeover(ms(t0, 301), "g", "b", 10, DEAD),
            Verdict::Granted { epoch: 11 }
        );
        a.set_leader(ms(t0, 400), false);
        assert_eq!(a.owner("g"), None);
        a.set_leader(ms(t0, 500), true);
        assert!(matches!(
            a.takeover(ms(t0, 600), "g", "a", 0, DEAD),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn a_lost_grant_does_not_let_anyone_past_the_member_still_active() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        a.beat(ms(t0, 400), &beat("a", Role::Active, 1), DEAD);
        a.beat(ms(t0, 400), &beat("b", Role::Standby, 1), DEAD);
        // a went quiet to the leader for a while: b is granted, but the
        // answer is lost; b stays standby and says so. a is heard again.
        assert_eq!(
            a.takeover(ms(t0, 800), "g", "b", 1, DEAD),
            Verdict::Granted { epoch: 2 }
        );
        a.beat(ms(t0, 1200), &beat("b", Role::Standby, 1), DEAD);
        a.beat(ms(t0, 1210), &beat("a", Role::Active, 1), DEAD);
        // The recorded owner is b, but a is the one active: nobody else
        // is granted while a is heard, b included.
        assert!(matches!(
            a.takeover(ms(t0, 1250), "g", "b", 2, DEAD),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn a_standby_beat_sent_before_the_grant_arrived_is_not_a_release() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        a.beat(ms(t0, 300), &beat("b", Role::Standby, 4), DEAD);
        assert_eq!(
            a.takeover(ms(t0, 400), "g", "a", 4, DEAD),
            Verdict::Granted { epoch: 5 }
        );
        // a's beat from before it heard the grant: still a holder.
        a.beat(ms(t0, 401), &beat("a", Role::Standby, 4), DEAD);
        assert!(matches!(
            a.takeover(ms(t0, 450), "g", "b", 5, DEAD),
            Verdict::Refused { .. }
        ));
        // One knowing the grant's epoch is a release.
        a.beat(ms(t0, 460), &beat("a", Role::Standby, 5), DEAD);
        assert_eq!(
            a.takeover(ms(t0, 470), "g", "b", 5, DEAD),
            Verdict::Granted { epoch: 6 }
        );
        // A restarted member (epoch forgotten, a dead interval later) is
        // taken at its word.
        a.beat(ms(t0, 1000), &beat("b", Role::Starting, 0), DEAD);
        a.beat(ms(t0, 1300), &beat("b", Role::Standby, 0), DEAD);
        assert_eq!(
            a.takeover(ms(t0, 1310), "g", "a", 6, DEAD),
            Verdict::Granted { epoch: 7 }
        );
    }

    #[test]
    fn a_third_member_gets_no_lease() {
        let t0 = crate::rt::now();
        let mut a = leader(t0);
        assert!(a.beat(t0, &beat("a", Role::Active, 1), DEAD).leader);
        assert!(a.beat(t0, &beat("b", Role::Standby, 1), DEAD).leader);
        assert!(!a.beat(t0, &beat("c", Role::Standby, 1), DEAD).leader);
    }

    #[test]
    fn ranks_go_by_epoch_then_priority_then_name() {
        let mut a = beat("a", Role::Active, 2);
        let b = beat("b", Role::Active, 1);
        assert!(a.outranks(&b) && !b.outranks(&a));
        a.epoch = 1;
        assert!(a.outranks(&b), "same epoch and priority: the smaller name");
        a.priority = 50;
        assert!(b.outranks(&a));
    }
}
