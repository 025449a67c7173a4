//! The patience a leader owes the SEs for its own times out of touch.
//!
//! A leader that lost its quorum for a while (or was not running) may have
//! been the one cut off: SEs silent since may only have lost their session
//! with it. Each such episode gives the SEs placement named time to come
//! back ([`proto::se_rejoin_bound`](crate::proto::se_rejoin_bound)). But an
//! SE already silent past the detection time when an episode began was
//! silent while this node was in touch: the episode owes it nothing, or a
//! leader whose quorum blips every few seconds (latency near the election
//! timeout) would keep a crashed SE's virtual services where they are for
//! as long as the blips go on (chaos mixed-swarm seed 236: moved after
//! 11.3 s, three blips each restarting the patience).

use std::collections::BTreeMap;
use std::time::Instant;

/// Pure state: fed the failed quorum checks and stalls, asked per SE since
/// when its patience runs.
#[derive(Debug, Default)]
pub(crate) struct Touch {
    /// When the current episode began (`None` while in touch).
    began: Option<Instant>,
    /// Per SE heard lately when an episode began (or during it): the last
    /// moment of that episode.
    owed: BTreeMap<String, Instant>,
    /// The same for SEs this node never heard, judged by when it became
    /// leader: the last moment of an episode that began within the
    /// detection time of that.
    owed_unheard: Option<Instant>,
}

impl Touch {
    /// A check that found this node in touch: the episode, if any, is over.
    pub(crate) fn in_touch(&mut self) {
        self.began = None;
    }

    /// This node was out of touch from `began` (the first failed check, or
    /// the last run before a stall) until `now`. `heard` is when each SE was
    /// last heard, `leading_since` when this node became leader.
    pub(crate) fn out_of_touch(
        &mut self,
        began: Instant,
        now: Instant,
        heard: &BTreeMap<String, Instant>,
        leading_since: Instant,
        detect: std::time::Duration,
    ) {
        let began = *self.began.get_or_insert(began);
        for (name, t) in heard {
            if *t + detect > began {
                self.owed.insert(name.clone(), now);
            }
        }
        if leading_since + detect > began {
            self.owed_unheard = Some(now);
        }
    }

    /// Since when `se`'s patience runs: when this node became leader, or
    /// the end of the last episode owed to it, whichever is later.
    pub(crate) fn patience_from(&self, se: &str, heard: bool, leading_since: Instant) -> Instant {
        let owed = if heard {
            self.owed.get(se).copied()
        } else {
            self.owed_unheard
        };
        owed.map_or(leading_since, |t| t.max(leading_since))
    }

    /// An SE removed from the configuration.
    pub(crate) fn forget(&mut self, se: &str) {
        self.owed.remove(se);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DETECT: Duration = Duration::from_millis(1500);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_se_silent_before_an_episode_began_gets_no_patience_from_it() {
        let t0 = crate::rt::now();
        let mut touch = Touch::default();
        // se-1 crashed at 10 s, se-2 is alive; leader since 0.
        let mut heard = BTreeMap::new();
        heard.insert("se-1".to_string(), at(t0, 10_000));
        heard.insert("se-2".to_string(), at(t0, 11_300));
        // Blip 1 at 11.3 s: se-1 silent 1.3 s, under the detection time.
        touch.out_of_touch(at(t0, 11_300), at(t0, 11_400), &heard, t0, DETECT);
        touch.in_touch();
        assert_eq!(touch.patience_from("se-1", true, t0), at(t0, 11_400));
        // Blip 2 at 13 s: se-1 silent 3 s, its patience stays where it was;
        // se-2, heard just before, is owed the new episode.
        heard.insert("se-2".to_string(), at(t0, 12_900));
        touch.out_of_touch(at(t0, 13_000), at(t0, 13_200), &heard, t0, DETECT);
        assert_eq!(touch.patience_from("se-1", true, t0), at(t0, 11_400));
        assert_eq!(touch.patience_from("se-2", true, t0), at(t0, 13_200));
    }

    #[test]
    fn a_long_episode_is_owed_to_every_se_heard_when_it_began() {
        let t0 = crate::rt::now();
        let mut touch = Touch::default();
        let mut heard = BTreeMap::new();
        heard.insert("se-1".to_string(), at(t0, 5_000));
        // Cut off from 5.5 s to 20 s, checked every 100 ms: the episode
        // began while se-1 was heard lately, and it is owed all of it.
        let mut t = 5_500;
        while t <= 20_000 {
            touch.out_of_touch(at(t0, t), at(t0, t), &heard, t0, DETECT);
            t += 100;
        }
        touch.in_touch();
        assert_eq!(touch.patience_from("se-1", true, t0), at(t0, 20_000));
    }

    #[test]
    fn unheard_ses_are_judged_by_when_this_node_became_leader() {
        let t0 = crate::rt::now();
        let leading = at(t0, 1_000);
        let mut touch = Touch::default();
        let heard = BTreeMap::new();
        assert_eq!(touch.patience_from("se-9", false, leading), leading);
        // An episode just after becoming leader is owed to them...
        touch.out_of_touch(at(t0, 2_000), at(t0, 2_100), &heard, leading, DETECT);
        touch.in_touch();
        assert_eq!(touch.patience_from("se-9", false, leading), at(t0, 2_100));
        // ...a later one is not.
        touch.out_of_touch(at(t0, 9_000), at(t0, 9_100), &heard, leading, DETECT);
        assert_eq!(touch.patience_from("se-9", false, leading), at(t0, 2_100));
    }
}
