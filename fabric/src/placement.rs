//! Placement of virtual services on the SEs of elastic groups (seed 002):
//! which SEs carry each virtual service, and why one could not be placed.
//!
//! A pure function of the desired config, what the Controller knows of the
//! SEs (up or not, draining, CPU) and the previous placement: the leader
//! runs it whenever one of them changes and writes the result through Raft
//! (so a new leader starts from it). Rules, in order (docs/placement.md):
//!
//! 1. Stickiness: a virtual service stays where it is while its SE is up,
//!    not draining, and within the group's limits. Moving one breaks its
//!    connections, so nothing moves for balance alone.
//! 2. A virtual service wants [`SeGroup::scaleout`] SEs (1; active/active:
//!    2). The first SE of its list holds the VIP (the primary); when the
//!    primary goes, the next one in the list becomes primary.
//! 3. New places: among the up SEs that do not carry it yet and have room
//!    (`max_vs_per_se`, `se_memory_mb` / `vs_memory_mb`, `max_cpu_percent`),
//!    distributed: the one carrying fewest; compact: the fullest one that
//!    still fits. In N+M, `buffer_ses` empty SEs are kept free for failures:
//!    a new virtual service opens an empty SE only while more than M are
//!    empty, or when no other SE has room (then the report says the buffer
//!    is used); one whose SE failed may take a buffer SE.
//! 4. A virtual service whose SE is down and that no other SE can take stays
//!    on the down SE (it serves again when the SE returns) and says why.
//!
//! Legacy active/standby groups are not placed here: both SEs of the pair
//! carry every virtual service of the group (docs/ha.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{Config, HaMode, SeGroup};

/// What the Controller knows of one SE, for placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeView {
    /// SE name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Whether it is up (has a session with the leader, or lost it less
    /// than the failure-detection time ago).
    pub up: bool,
    /// Up only because SEs of its group hear its data-path beats: it has no
    /// session with the Controller (cut from it, not from the segment), so
    /// it keeps what it carries and takes nothing new (docs/placement.md,
    /// "Partitioned SEs").
    pub partitioned: bool,
    /// Being emptied (an operator drains it): takes nothing new, and keeps
    /// a place only while that virtual service has connections open on it
    /// (`busy`), beside the replacement placement adds.
    pub draining: bool,
    /// Virtual services with connections open on this SE (its last report).
    pub busy: std::collections::BTreeSet<String>,
    /// CPU use it reported last, percent (None: not known).
    pub cpu_percent: Option<u32>,
}

/// Where every virtual service of the elastic groups runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Virtual service -> the SEs carrying it, primary first.
    #[serde(default)]
    pub virtual_services: BTreeMap<String, Vec<String>>,
    /// Virtual services placed on fewer SEs than they want (or on none, or
    /// stranded on a down SE), and why.
    #[serde(default)]
    pub problems: BTreeMap<String, String>,
    /// Per elastic group: how its SEs are used.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupUse>,
    /// Virtual services autoscale put on more (or fewer) SEs than their
    /// group's `min_scaleout_per_vs`: how many SEs each wants.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scaleout: BTreeMap<String, u32>,
}

/// How one group's SEs are used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUse {
    /// SEs up.
    pub ses_up: u32,
    /// SEs up that carry at least one virtual service.
    pub ses_used: u32,
    /// SEs up and empty (N+M: the buffer).
    pub ses_free: u32,
    /// SEs the group should have: used + `buffer_ses` (N+M), so auto-healing
    /// and autoscale know how many to ask the cloud for.
    pub ses_wanted: u32,
    /// Why the group is short, if it is (buffer used, VSs unplaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Placement {
    /// The SEs carrying virtual service `vs`, primary first.
    pub fn of(&self, vs: &str) -> &[String] {
        self.virtual_services.get(vs).map_or(&[], |v| v.as_slice())
    }
}

/// Place every virtual service of the elastic groups of `config` on `ses`,
/// starting from `previous`.
pub fn place(config: &Config, ses: &[SeView], previous: &Placement) -> Placement {
    let mut out = Placement::default();
    for group in &config.se_groups {
        if group.ha_mode == HaMode::LegacyActiveStandby {
            continue;
        }
        let mut members: Vec<&SeView> = ses.iter().filter(|s| s.group == group.name).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let vss: Vec<&str> = config
            .virtual_services
            .iter()
            .filter(|v| v.se_group == group.name)
            .map(|v| v.name.as_str())
            .collect();
        place_group(group, &members, &vss, previous, &mut out);
    }
    out
}

/// Load of one SE while placing.
struct Slot<'a> {
    se: &'a SeView,
    carries: u32,
}

impl Slot<'_> {
    fn memory_mb(&self, g: &SeGroup) -> u64 {
        u64::from(self.carries) * u64::from(g.vs_memory_mb)
    }

    /// Why this SE cannot take one more virtual service (None: it can).
    /// `new` asks about a new place (CPU and draining limit only those).
    fn refusal(&self, g: &SeGroup, new: bool) -> Option<String> {
        if !self.se.up {
            return Some(format!("{}: down", self.se.name));
        }
        if new && self.se.draining {
            return Some(format!("{}: draining", self.se.name));
        }
        if new && self.se.partitioned {
            return Some(format!(
                "{}: partitioned (no session with the Controller; its peers hear it)",
                self.se.name
            ));
        }
        if self.carries >= g.max_vs_per_se {
            return Some(format!(
                "{}: full ({} of max_vs_per_se {})",
                self.se.name, self.carries, g.max_vs_per_se
            ));
        }
        let used = self.memory_mb(g);
        if used + u64::from(g.vs_memory_mb) > u64::from(g.se_memory_mb) {
            return Some(format!(
                "{}: memory ({used} of se_memory_mb {} used, one more needs {})",
                self.se.name, g.se_memory_mb, g.vs_memory_mb
            ));
        }
        match self.se.cpu_percent {
            Some(cpu) if new && cpu > g.max_cpu_percent => Some(format!(
                "{}: CPU {cpu}% above max_cpu_percent {}",
                self.se.name, g.max_cpu_percent
            )),
            _ => None,
        }
    }
}

fn place_group(
    g: &SeGroup,
    members: &[&SeView],
    vss: &[&str],
    previous: &Placement,
    out: &mut Placement,
) {
    let want_of = |vs: &str| {
        previous
            .scaleout
            .get(vs)
            .copied()
            .unwrap_or(g.scaleout())
            .clamp(g.scaleout(), g.max_scaleout_per_vs.max(g.scaleout())) as usize
    };
    let buffer = match g.ha_mode {
        HaMode::ElasticNPlusM => g.buffer_ses,
        _ => 0,
    };
    let mut slots: Vec<Slot> = members.iter().map(|&se| Slot { se, carries: 0 }).collect();
    let index = |slots: &[Slot], name: &str| slots.iter().position(|s| s.se.name == name);

    // 1. Keep what may stay, in config order (so shrunk limits cut the last ones).
    let mut lists: Vec<Vec<usize>> = Vec::with_capacity(vss.len());
    let mut stranded: Vec<Vec<usize>> = Vec::with_capacity(vss.len());
    let mut draining_kept: Vec<Vec<usize>> = vec![Vec::new(); vss.len()];
    let mut drain_fallback: Vec<Vec<usize>> = vec![Vec::new(); vss.len()];
    for vs in vss {
        let want = want_of(vs);
        if want != g.scaleout() as usize {
            out.scaleout.insert(vs.to_string(), want as u32);
        }
        let (mut keep, mut lost) = (Vec::new(), Vec::new());
        for name in previous.of(vs) {
            let Some(i) = index(&slots, name) else {
                continue; // No longer known (removed from the group).
            };
            if slots[i].se.draining {
                // Not counted in `want`: a replacement is placed beside it,
                // and it goes once its connections have ended (or, idle,
                // once a replacement exists: see step 3).
                if slots[i].se.up && slots[i].se.busy.contains(*vs) {
                    slots[i].carries += 1;
                    draining_kept[lists.len()].push(i);
                } else if slots[i].se.up {
                    drain_fallback[lists.len()].push(i);
                }
                continue;
            }
            if keep.len() < want && slots[i].refusal(g, false).is_none() {
                slots[i].carries += 1;
                keep.push(i);
            } else if !slots[i].se.up {
                lost.push(i);
            }
        }
        lists.push(keep);
        stranded.push(lost);
    }

    // 2. Fill up what is short.
    let mut buffer_used = false;
    for (k, vs) in vss.iter().enumerate() {
        let want = want_of(vs);
        while lists[k].len() < want {
            let fits: Vec<usize> = (0..slots.len())
                .filter(|&i| {
                    !lists[k].contains(&i)
                        && !draining_kept[k].contains(&i)
                        && slots[i].refusal(g, true).is_none()
                })
                .collect();
            let free = slots
                .iter()
                .filter(|s| s.se.up && !s.se.draining && s.carries == 0)
                .count() as u32;
            let busy: Vec<usize> = fits
                .iter()
                .copied()
                .filter(|&i| slots[i].carries > 0)
                .collect();
            // A new virtual service opens an empty SE only while more than
            // the buffer are empty, or when no busy SE has room; one that
            // lost its SE may take the buffer (that is what it is for).
            let displaced = !previous.of(vs).is_empty();
            let pool = if displaced || free > buffer || busy.is_empty() {
                fits
            } else {
                busy
            };
            let pick = if g.compact {
                pool.iter()
                    .copied()
                    .max_by(|&a, &b| slots[a].carries.cmp(&slots[b].carries).then(b.cmp(&a)))
            } else {
                pool.iter()
                    .copied()
                    .min_by(|&a, &b| slots[a].carries.cmp(&slots[b].carries).then(a.cmp(&b)))
            };
            let Some(i) = pick else {
                let mut why = format!("placed on {} of the {want} SEs it wants; ", lists[k].len());
                let others: Vec<String> = (0..slots.len())
                    .filter(|i| !lists[k].contains(i))
                    .filter_map(|i| slots[i].refusal(g, true))
                    .collect();
                if slots.is_empty() {
                    let _ = write!(why, "SE group `{}` has no SEs", g.name);
                } else if others.is_empty() {
                    let _ = write!(why, "every SE of group `{}` carries it already", g.name);
                } else {
                    let _ = write!(why, "no SE can take it: {}", others.join("; "));
                }
                out.problems.insert(vs.to_string(), why);
                break;
            };
            if slots[i].carries == 0 && free <= buffer && !displaced {
                buffer_used = true;
            }
            slots[i].carries += 1;
            lists[k].push(i);
        }
    }

    // 3. What found no new home stays on its down SE.
    for (k, vs) in vss.iter().enumerate() {
        let want = want_of(vs);
        let mut names: Vec<String> = lists[k].iter().map(|&i| slots[i].se.name.clone()).collect();
        if names.len() < want && !stranded[k].is_empty() {
            let left: Vec<String> = stranded[k]
                .iter()
                .take(want - names.len())
                .map(|&i| slots[i].se.name.clone())
                .collect();
            let why = out.problems.entry(vs.to_string()).or_default();
            let lead = format!("stays on {} (down) until it returns; ", left.join(", "));
            why.insert_str(0, &lead);
            names.extend(left);
        }
        // A draining SE that no other SE can relieve keeps serving: better
        // a drain that waits than a virtual service that stops.
        if names.is_empty() && draining_kept[k].is_empty() && !drain_fallback[k].is_empty() {
            let left = drain_fallback[k][0];
            draining_kept[k].push(left);
            let why = out.problems.entry(vs.to_string()).or_default();
            let lead = format!(
                "stays on {} (draining) until another SE can take it; ",
                slots[left].se.name
            );
            why.insert_str(0, &lead);
        }
        // Draining places last: the primary hands them no new connections.
        names.extend(draining_kept[k].iter().map(|&i| slots[i].se.name.clone()));
        if !names.is_empty() {
            out.virtual_services.insert(vs.to_string(), names);
        }
    }

    let up = slots.iter().filter(|s| s.se.up).count() as u32;
    let used = slots.iter().filter(|s| s.se.up && s.carries > 0).count() as u32;
    let free = slots
        .iter()
        .filter(|s| s.se.up && !s.se.draining && s.carries == 0)
        .count() as u32;
    let short = vss
        .iter()
        .filter(|vs| out.problems.contains_key(**vs))
        .count();
    let note = if short > 0 {
        Some(format!(
            "{short} virtual service(s) short of SEs: see problems"
        ))
    } else if buffer_used || free < buffer {
        Some(format!(
            "{free} free SE(s) for a buffer of {buffer}: spare capacity is short"
        ))
    } else {
        None
    };
    out.groups.insert(
        g.name.clone(),
        GroupUse {
            ses_up: up,
            ses_used: used,
            ses_free: free,
            ses_wanted: used + buffer + u32::from(short > 0),
            note,
        },
    );
}

#[cfg(test)]
mod tests;
