//! Counters of a DNS node: queries, response codes, answers per member and
//! decisions by rule. Lock-free (relaxed atomics) on the query path; shared
//! by every engine of a node, carried over by name when the config changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::policy::{Rule, Service};

/// Response codes counted by name; others count as `other`.
const RCODES: [&str; 6] = [
    "noerror", "formerr", "servfail", "nxdomain", "notimp", "refused",
];

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    udp: AtomicU64,
    tcp: AtomicU64,
    rcodes: [AtomicU64; RCODES.len() + 1],
    truncated: AtomicU64,
    services: Vec<ServiceMetrics>,
}

#[derive(Debug, Default)]
struct ServiceMetrics {
    fqdn: String,
    members: Vec<(String, AtomicU64)>,
    fallback: AtomicU64,
    rules: [AtomicU64; Rule::KINDS.len()],
}

impl Metrics {
    /// Counters for `services` (the engine's), starting from `previous`'s
    /// counts for the same names.
    pub fn for_services(services: &[Option<Service>], previous: Option<&Metrics>) -> Metrics {
        let old = previous.map(Metrics::snapshot);
        let carried = |fqdn: &str| old.as_ref().and_then(|o| o.services.get(fqdn));
        let m = Metrics {
            services: services
                .iter()
                .map(|s| {
                    let Some(s) = s else {
                        return ServiceMetrics::default();
                    };
                    let before = carried(&s.fqdn);
                    let sm = ServiceMetrics {
                        fqdn: s.fqdn.clone(),
                        members: s
                            .members
                            .iter()
                            .map(|m| {
                                let n = before
                                    .and_then(|b| b.answers.get(&m.label))
                                    .copied()
                                    .unwrap_or(0);
                                (m.label.clone(), AtomicU64::new(n))
                            })
                            .collect(),
                        fallback: AtomicU64::new(before.map_or(0, |b| b.fallback_answers)),
                        rules: Default::default(),
                    };
                    if let Some(b) = before {
                        for (i, kind) in Rule::KINDS.iter().enumerate() {
                            sm.rules[i].store(
                                b.decisions.get(*kind).copied().unwrap_or(0),
                                Ordering::Relaxed,
                            );
                        }
                    }
                    sm
                })
                .collect(),
            ..Metrics::default()
        };
        if let Some(o) = old {
            m.udp.store(o.queries_udp, Ordering::Relaxed);
            m.tcp.store(o.queries_tcp, Ordering::Relaxed);
            m.truncated.store(o.truncated, Ordering::Relaxed);
            for (i, name) in RCODES.iter().chain(["other"].iter()).enumerate() {
                m.rcodes[i].store(o.rcodes.get(*name).copied().unwrap_or(0), Ordering::Relaxed);
            }
        }
        m
    }

    /// One response sent.
    pub fn response(&self, tcp: bool, rcode: u8, truncated: bool) {
        let q = if tcp { &self.tcp } else { &self.udp };
        q.fetch_add(1, Ordering::Relaxed);
        let i = (rcode as usize).min(RCODES.len());
        self.rcodes[i].fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One GSLB decision of service `service`.
    pub fn decision(&self, service: usize, rule: &Rule) {
        if let Some(s) = self.services.get(service) {
            s.rules[rule.kind()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Member `member` of service `service` was in an answer.
    pub fn answered(&self, service: usize, member: usize) {
        if let Some((_, n)) = self
            .services
            .get(service)
            .and_then(|s| s.members.get(member))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A fallback address of service `service` was in an answer.
    pub fn fallback(&self, service: usize) {
        if let Some(s) = self.services.get(service) {
            s.fallback.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            queries_udp: get(&self.udp),
            queries_tcp: get(&self.tcp),
            rcodes: RCODES
                .iter()
                .chain(["other"].iter())
                .zip(self.rcodes.iter())
                .map(|(n, a)| (n.to_string(), get(a)))
                .collect(),
            truncated: get(&self.truncated),
            services: self
                .services
                .iter()
                .filter(|s| !s.fqdn.is_empty())
                .map(|s| {
                    (
                        s.fqdn.clone(),
                        ServiceSnapshot {
                            answers: s.members.iter().map(|(l, n)| (l.clone(), get(n))).collect(),
                            fallback_answers: get(&s.fallback),
                            decisions: Rule::KINDS
                                .iter()
                                .zip(s.rules.iter())
                                .filter(|(_, n)| get(n) > 0)
                                .map(|(k, n)| (k.to_string(), get(n)))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The counters at one moment, as the API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Responses sent over UDP.
    pub queries_udp: u64,
    /// Responses sent over TCP.
    pub queries_tcp: u64,
    /// Responses by response code.
    pub rcodes: BTreeMap<String, u64>,
    /// UDP responses truncated (TC).
    pub truncated: u64,
    /// Per GSLB service.
    pub services: BTreeMap<String, ServiceSnapshot>,
}

/// One GSLB service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceSnapshot {
    /// Answers that carried each member.
    pub answers: BTreeMap<String, u64>,
    /// Answers that carried the fallback addresses.
    pub fallback_answers: u64,
    /// Decisions by rule.
    pub decisions: BTreeMap<String, u64>,
}
