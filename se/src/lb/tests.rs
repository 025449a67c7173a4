use std::collections::BTreeMap;

use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 80))
}

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n).map(addr).collect()
}

fn server(i: usize, weight: u32, admin: AdminState) -> Server {
    Server {
        addr: addr(i),
        weight,
        admin_state: admin,
    }
}

/// A set over `servers` with fresh states; also returns the states.
fn set_of(
    algorithm: Algorithm,
    servers: &[Server],
) -> (ServerSet, BTreeMap<SocketAddr, Arc<ServerState>>) {
    let states: BTreeMap<_, _> = servers
        .iter()
        .map(|s| (s.addr, Arc::new(ServerState::new("web", s.addr, None))))
        .collect();
    let set = ServerSet::new(
        algorithm,
        None,
        servers.iter().map(|s| (*s, states[&s.addr].clone())),
    );
    (set, states)
}

fn mark_down(state: &ServerState) {
    state.monitor(1, 1);
    state.on_check(Err("test"));
    assert!(!state.is_up());
}

fn client(i: u32) -> PickContext<'static> {
    PickContext::client(IpAddr::from(i.to_be_bytes()))
}

fn any() -> PickContext<'static> {
    client(1)
}

/// Picks counted per server; guards dropped at once unless `hold`.
fn count(set: &ServerSet, picks: usize, hold: bool) -> BTreeMap<SocketAddr, usize> {
    let mut counts = BTreeMap::new();
    let mut held = Vec::new();
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..picks {
        let ctx = PickContext {
            random: rng.gen(),
            ..any()
        };
        let p = set.pick(&ctx, &[]).expect("an eligible server");
        *counts.entry(p.addr()).or_insert(0) += 1;
        if hold {
            held.push(p);
        }
    }
    counts
}

/// Each server's share of `counts` is within `tolerance` (relative) of its
/// share of the weights.
fn assert_shares(counts: &BTreeMap<SocketAddr, usize>, servers: &[Server], tolerance: f64) {
    let total: usize = counts.values().sum();
    let weights: u32 = servers.iter().map(|s| s.weight).sum();
    for s in servers {
        let want = f64::from(s.weight) / f64::from(weights);
        let got = counts.get(&s.addr).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (got - want).abs() <= want * tolerance,
            "{}: share {got:.3}, weight share {want:.3}; counts {counts:?}",
            s.addr
        );
    }
}

fn weighted(weights: &[u32]) -> Vec<Server> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| server(i, w, AdminState::Enabled))
        .collect()
}

#[test]
fn round_robin_visits_each_server_in_turn() {
    let set = ServerSet::standalone(Algorithm::RoundRobin, &addrs(2));
    let picks: Vec<_> = (0..5)
        .map(|_| set.pick(&any(), &[]).unwrap().addr())
        .collect();
    assert_eq!(picks, [addr(0), addr(1), addr(0), addr(1), addr(0)]);
}

#[test]
fn round_robin_ignores_weights_and_skips_ineligible_servers_evenly() {
    let mut servers = weighted(&[5, 1, 1, 1]);
    servers[3].admin_state = AdminState::Draining;
    let (set, states) = set_of(Algorithm::RoundRobin, &servers);
    assert_shares(&count(&set, 3000, false), &weighted(&[1, 1, 1]), 0.01);
    mark_down(&states[&addr(1)]);
    let counts = count(&set, 3000, false);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(
        counts[&addr(0)],
        1500,
        "a down server's turns are not inherited"
    );
}

#[test]
fn smooth_weighted_round_robin_interleaves_like_nginx() {
    let set = ServerSet::new(
        Algorithm::WeightedRoundRobin,
        None,
        weighted(&[5, 1, 1])
            .into_iter()
            .map(|s| (s, Arc::new(ServerState::new("web", s.addr, None)))),
    );
    let name = |a: SocketAddr| ["a", "b", "c"][addrs(3).iter().position(|x| *x == a).unwrap()];
    let seq: Vec<_> = (0..14)
        .map(|_| name(set.pick(&any(), &[]).unwrap().addr()))
        .collect();
    assert_eq!(seq.join(" "), "a a b a c a a a a b a c a a");
    // Weights with a common divisor give the same order.
    assert_eq!(smooth_schedule(&[10, 2, 2]), smooth_schedule(&[5, 1, 1]));
}

#[test]
fn weighted_round_robin_shares_match_weights_and_survive_a_down_server() {
    let servers = weighted(&[1, 2, 3, 4]);
    let (set, states) = set_of(Algorithm::WeightedRoundRobin, &servers);
    assert_shares(&count(&set, 10_000, false), &servers, 0.01);
    mark_down(&states[&addr(3)]);
    assert_shares(&count(&set, 6_000, false), &servers[..3], 0.01);
}

#[test]
fn oversized_schedules_are_scaled_not_refused() {
    let weights = vec![MAX_SERVER_WEIGHT; MAX_POOL_SERVERS];
    assert_eq!(smooth_schedule(&weights).len(), MAX_POOL_SERVERS);
    let mut uneven = weights.clone();
    uneven[0] = 1;
    let schedule = smooth_schedule(&uneven);
    assert!(schedule.len() * MAX_POOL_SERVERS <= MAX_SCHEDULE_WORK + MAX_POOL_SERVERS);
    assert!(schedule.contains(&0), "every server keeps a turn");
}

#[test]
fn least_connections_prefers_the_idle_server() {
    let (set, _) = set_of(Algorithm::LeastConnections, &weighted(&[1, 1, 1]));
    let busy = set.pick(&any(), &[]).unwrap();
    let also_busy = set.pick(&any(), &[]).unwrap();
    assert_ne!(busy.addr(), also_busy.addr());
    for _ in 0..5 {
        let p = set.pick(&any(), &[]).unwrap();
        assert_eq!(p.addr(), addr(2), "the idle one");
    }
    drop(busy);
    let p = set.pick(&any(), &[]).unwrap();
    assert_ne!(p.addr(), also_busy.addr());
}

#[test]
fn least_connections_and_two_choices_hold_load_in_proportion_to_weight() {
    let servers = weighted(&[1, 2, 3]);
    for algorithm in [Algorithm::LeastConnections, Algorithm::PowerOfTwoChoices] {
        let (set, states) = set_of(algorithm, &servers);
        let tolerance = if algorithm == Algorithm::LeastConnections {
            0.01
        } else {
            0.10
        };
        assert_shares(&count(&set, 6000, true), &servers, tolerance);
        assert!(
            states.values().all(|s| s.in_flight() == 0),
            "guards give back what they took"
        );
    }
}

#[test]
fn two_choices_never_picks_a_down_or_excluded_server() {
    let servers = weighted(&[1; 10]);
    let (set, states) = set_of(Algorithm::PowerOfTwoChoices, &servers);
    for i in [0, 2, 3, 5, 7, 9] {
        mark_down(&states[&addr(i)]);
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let mut seen = BTreeMap::new();
    let mut held = Vec::new();
    for _ in 0..10_000 {
        let ctx = PickContext {
            random: rng.gen(),
            ..any()
        };
        let p = set.pick(&ctx, &[addr(8)]).unwrap();
        assert!(states[&p.addr()].is_up() && p.addr() != addr(8));
        *seen.entry(p.addr()).or_insert(0) += 1;
        if rng.gen_bool(0.5) {
            held.push(p);
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        [addr(1), addr(4), addr(6)]
    );
    for i in [1, 4, 6] {
        mark_down(&states[&addr(i)]);
    }
    assert!(set.pick(&any(), &[addr(8)]).is_none());
    assert_eq!(set.pick(&any(), &[]).unwrap().addr(), addr(8));
}

#[test]
fn no_eligible_server_means_no_pick() {
    let mut servers = weighted(&[1, 1, 1]);
    servers[0].admin_state = AdminState::Disabled;
    servers[1].admin_state = AdminState::Draining;
    for algorithm in ALGORITHMS {
        let (set, states) = set_of(algorithm, &servers);
        assert_eq!(
            set.pick(&any(), &[]).unwrap().addr(),
            addr(2),
            "{algorithm:?}"
        );
        assert!(set.pick(&any(), &[addr(2)]).is_none(), "{algorithm:?}");
        mark_down(&states[&addr(2)]);
        assert!(set.pick(&any(), &[]).is_none(), "{algorithm:?}");
        assert_eq!(set.eligible(), 0);
    }
    let empty = ServerSet::standalone(Algorithm::RoundRobin, &[]);
    assert!(empty.pick(&any(), &[]).is_none() && empty.is_empty());
}

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::LeastConnections,
    Algorithm::PowerOfTwoChoices,
    Algorithm::ConsistentHash,
];

#[test]
fn draining_takes_no_new_requests_but_in_flight_ones_finish() {
    let servers = weighted(&[1, 1]);
    let (set, states) = set_of(Algorithm::LeastConnections, &servers);
    let in_flight = [
        set.pick(&any(), &[]).unwrap(),
        set.pick(&any(), &[]).unwrap(),
    ];
    // The next config version drains server 0; its state (and count) carries over.
    let mut next = servers.clone();
    next[0].admin_state = AdminState::Draining;
    let drained = ServerSet::new(
        Algorithm::LeastConnections,
        None,
        next.iter().map(|s| (*s, states[&s.addr].clone())),
    );
    assert_eq!(drained.state(addr(0)).unwrap().in_flight(), 1);
    for _ in 0..10 {
        assert_eq!(drained.pick(&any(), &[]).unwrap().addr(), addr(1));
    }
    drop(in_flight);
    assert_eq!(drained.state(addr(0)).unwrap().in_flight(), 0, "drained");
}

#[test]
fn health_survives_a_new_server_set() {
    let (set, states) = set_of(Algorithm::RoundRobin, &weighted(&[1, 1]));
    mark_down(&states[&addr(0)]);
    let rebuilt = ServerSet::new(
        Algorithm::WeightedRoundRobin,
        None,
        weighted(&[1, 1, 1]).into_iter().map(|s| {
            let state = states
                .get(&s.addr)
                .cloned()
                .unwrap_or_else(|| Arc::new(ServerState::new("web", s.addr, None)));
            (s, state)
        }),
    );
    drop(set);
    for _ in 0..6 {
        assert_ne!(rebuilt.pick(&any(), &[]).unwrap().addr(), addr(0));
    }
}

fn ring_set(servers: &[Server], header: Option<&str>) -> ServerSet {
    ServerSet::new(
        Algorithm::ConsistentHash,
        header,
        servers
            .iter()
            .map(|s| (*s, Arc::new(ServerState::new("web", s.addr, None)))),
    )
}

fn owner(set: &ServerSet, key: u32) -> SocketAddr {
    set.pick(&client(key), &[]).unwrap().addr()
}

#[test]
fn consistent_hash_moves_only_the_removed_servers_keys() {
    const KEYS: u32 = 10_000;
    for n in [5, 10, 20] {
        let all = weighted(&vec![1; n]);
        let before = ring_set(&all, None);
        let removed = addr(n / 2);
        let rest: Vec<Server> = all.iter().filter(|s| s.addr != removed).copied().collect();
        let after = ring_set(&rest, None);
        let mut moved = 0;
        for key in 0..KEYS {
            let (was, is) = (owner(&before, key), owner(&after, key));
            if was != is {
                assert_eq!(was, removed, "key {key} moved off a server that stayed");
                moved += 1;
            }
        }
        let fraction = f64::from(moved) / f64::from(KEYS);
        println!(
            "consistent hash: removing 1 of {n} servers moved {moved} of {KEYS} keys ({:.2}%, ideal {:.2}%)",
            fraction * 100.0,
            100.0 / n as f64
        );
        assert!(
            fraction <= 1.3 / n as f64 && fraction >= 0.7 / n as f64,
            "moved {fraction}"
        );
    }
}

#[test]
fn consistent_hash_maps_a_key_to_the_same_server_across_rebuilds() {
    let servers = weighted(&[1, 1, 1, 1]);
    let one = ring_set(&servers, None);
    let mut reversed = servers.clone();
    reversed.reverse();
    let other = ring_set(&reversed, None);
    for key in 0..2000 {
        assert_eq!(owner(&one, key), owner(&other, key), "key {key}");
        assert_eq!(owner(&one, key), owner(&one, key));
    }
}

#[test]
fn consistent_hash_spreads_keys_by_weight_and_a_down_server_moves_only_its_own() {
    let servers = weighted(&[1, 2, 3, 4]);
    let set = ring_set(&servers, None);
    let mut counts = BTreeMap::new();
    let before: Vec<_> = (0..20_000).map(|k| owner(&set, k)).collect();
    for a in &before {
        *counts.entry(*a).or_insert(0) += 1;
    }
    assert_shares(&counts, &servers, 0.15);

    let down = set.state(addr(3)).unwrap();
    down.monitor(1, 1);
    down.on_check(Err("test"));
    for (k, was) in before.iter().enumerate() {
        let is = owner(&set, k as u32);
        if *was == addr(3) {
            assert_ne!(is, addr(3));
        } else {
            assert_eq!(is, *was, "key {k} moved though its server is up");
        }
    }
    // A retry skips the tried server and lands on the next one on the ring.
    let first = owner(&set, 42);
    let retry = set.pick(&client(42), &[first]).unwrap().addr();
    assert_ne!(retry, first);
}

#[test]
fn consistent_hash_on_a_header_falls_back_to_the_client_ip() {
    let set = ring_set(&weighted(&[1; 8]), Some("x-user"));
    let owner_of = |user: &str, ip: u32| {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_str(user).unwrap());
        let ctx = PickContext {
            headers: Some(&headers),
            ..client(ip)
        };
        set.pick(&ctx, &[]).unwrap().addr()
    };
    // One user from many addresses: one server.
    let home = owner_of("alice", 1);
    assert!((2..200).all(|ip| owner_of("alice", ip) == home));
    assert_eq!(
        owner_of(" alice , proxy", 7),
        home,
        "first list item, trimmed"
    );
    // Users spread over the servers.
    let spread: std::collections::BTreeSet<_> = (0..200)
        .map(|u| owner_of(&format!("user-{u}"), 1))
        .collect();
    assert_eq!(spread.len(), 8);
    // No header (or an empty one): the client IP decides.
    let empty = HeaderMap::new();
    for ip in 0..50 {
        let ctx = PickContext {
            headers: Some(&empty),
            ..client(ip)
        };
        assert_eq!(set.pick(&ctx, &[]).unwrap().addr(), owner(&set, ip));
        assert_eq!(owner_of(" ,x", ip), owner(&set, ip));
    }
}

#[test]
fn hash_input_takes_the_first_list_item_trimmed() {
    assert_eq!(hash_input(b"  a b ,c"), Some(&b"a b"[..]));
    assert_eq!(hash_input(b"abc"), Some(&b"abc"[..]));
    assert_eq!(hash_input(b"\t \t"), None);
    assert_eq!(hash_input(b""), None);
    assert_eq!(hash_input(b",abc"), None);
}

/// Property: any bytes give a trimmed, comma-free slice of the input, or None.
#[test]
fn hash_input_of_random_bytes_never_panics() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.gen_range(0..64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.gen_bool(0.3) {
                    [b' ', b'\t', b','][rng.gen_range(0..3)]
                } else {
                    rng.gen()
                }
            })
            .collect();
        if let Some(out) = hash_input(&bytes) {
            assert!(!out.is_empty() && !out.contains(&b','));
            assert!(out[0] != b' ' && out[0] != b'\t');
            let start = out.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(&bytes[start..start + out.len()], out);
        }
    }
}

/// Property: random server lists (any weights, duplicates, admin states,
/// health) and random requests never panic, and every pick is eligible.
#[test]
fn random_sets_and_requests_never_panic_and_pick_only_eligible_servers() {
    let mut rng = SmallRng::seed_from_u64(0xfab);
    let admin = [
        AdminState::Enabled,
        AdminState::Disabled,
        AdminState::Draining,
    ];
    let weights = [0, 1, 2, 3, 7, 100, 101, u32::MAX];
    for round in 0..300 {
        let n = rng.gen_range(0..12);
        let servers: Vec<Server> = (0..n)
            .map(|_| {
                let weight = weights[rng.gen_range(0..weights.len())];
                server(rng.gen_range(0..8), weight, admin[rng.gen_range(0..3)])
            })
            .collect();
        let header = ["x-user", "bad header", "", "\u{0}"][rng.gen_range(0..4)];
        let states: Vec<Arc<ServerState>> = servers
            .iter()
            .map(|s| Arc::new(ServerState::new("web", s.addr, None)))
            .collect();
        for s in &states {
            if rng.gen_bool(0.3) {
                mark_down(s);
            }
        }
        let algorithm = ALGORITHMS[round % ALGORITHMS.len()];
        let set = ServerSet::new(
            algorithm,
            Some(header),
            servers.iter().copied().zip(states.iter().cloned()),
        );
        for _ in 0..50 {
            let mut headers = HeaderMap::new();
            let raw: Vec<u8> = (0..rng.gen_range(0..20)).map(|_| rng.gen()).collect();
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                headers.insert("x-user", v);
            }
            let ctx = PickContext {
                client: IpAddr::from(rng.gen::<[u8; 16]>()),
                headers: Some(&headers),
                header_value: None,
                random: rng.gen(),
            };
            let exclude: Vec<SocketAddr> = (0..rng.gen_range(0..3))
                .map(|_| addr(rng.gen_range(0..8)))
                .collect();
            if let Some(p) = set.pick(&ctx, &exclude) {
                assert!(!exclude.contains(&p.addr()), "{algorithm:?}");
                let ok = servers.iter().zip(&states).any(|(s, st)| {
                    s.addr == p.addr() && s.admin_state == AdminState::Enabled && st.is_up()
                });
                assert!(ok, "{algorithm:?} picked an ineligible {}", p.addr());
            }
        }
    }
}

#[test]
fn passive_failures_count_toward_fall_and_successes_reset_them() {
    let events = Arc::new(HealthEvents::new(16));
    let state = ServerState::new("web", addr(0), Some(events.clone()));
    state.on_request_failed("refused");
    assert!(state.is_up(), "unmonitored servers ignore passive failures");
    state.monitor(2, 3);
    state.on_request_failed("refused");
    state.on_request_failed("refused");
    state.on_request_succeeded();
    state.on_request_failed("reset");
    state.on_request_failed("reset");
    assert!(state.is_up(), "the success reset the count");
    state.on_request_failed("timed out");
    assert!(!state.is_up());
    state.on_request_succeeded();
    assert!(!state.is_up(), "only active checks bring a server back");
    state.on_check(Ok(()));
    state.on_check(Ok(()));
    assert!(state.is_up());
    let changes: Vec<_> = events
        .drain()
        .into_iter()
        .map(|c| (c.up, c.reason))
        .collect();
    assert_eq!(
        changes,
        [
            (false, "request failed: timed out".to_string()),
            (true, "check passed".to_string())
        ]
    );
    mark_down(&state);
    state.unmonitor("health monitor removed");
    assert!(state.is_up() && !state.is_monitored());
    assert_eq!(events.drain().last().map(|c| c.up), Some(true));
}

#[test]
fn outlier_detection_ejects_from_picks_within_the_pool_share_and_reports() {
    let events = Arc::new(HealthEvents::new(16));
    let settings = fabric::model::OutlierDetection {
        consecutive_errors: 3,
        consecutive_5xx: 0,
        ejection_ms: 60_000,
        max_ejection_ms: 60_000,
        max_ejected_percent: 50,
    };
    let outliers = Arc::new(crate::outlier::PoolOutliers::new(settings, 2));
    let states: Vec<Arc<ServerState>> = (0..2)
        .map(|i| Arc::new(ServerState::new("web", addr(i), Some(events.clone()))))
        .collect();
    for s in &states {
        s.set_outliers(Some(outliers.clone()));
    }
    let set = ServerSet::new(
        Algorithm::RoundRobin,
        None,
        states.iter().map(|s| (Server::from(s.addr()), s.clone())),
    );
    // Unmonitored servers are ejected all the same: outlier detection is
    // independent of the health monitor.
    states[0].on_response_status(503);
    states[0].on_request_failed("reset");
    states[0].on_response_status(200);
    states[0].on_response_status(502);
    states[0].on_response_status(504);
    assert!(!states[0].is_ejected(), "the 200 reset the count");
    states[0].on_request_failed("connect: refused");
    assert!(states[0].is_ejected());
    assert!(states[0].is_up(), "ejected is not down");
    assert!(states[0].stats().ejected);
    assert_eq!(set.eligible(), 1);
    let picks = count(&set, 10, false);
    assert_eq!(picks.get(&addr(0)), None, "{picks:?}");

    // The other server fails too, but 50% of 2 is already ejected.
    for _ in 0..6 {
        states[1].on_response_status(503);
    }
    assert!(!states[1].is_ejected());
    assert_eq!(set.eligible(), 1);

    // Turning outlier detection off returns the ejected server at once.
    states[0].set_outliers(None);
    assert!(!states[0].is_ejected());
    assert_eq!(set.eligible(), 2);
    let changes: Vec<_> = events
        .drain()
        .into_iter()
        .map(|c| (c.server, c.up, c.outlier, c.reason))
        .collect();
    assert_eq!(
        changes,
        [
            (
                addr(0),
                false,
                true,
                "ejected for 60000 ms: 3 gateway failures in a row (last: connect: refused)"
                    .to_string()
            ),
            (
                addr(0),
                true,
                true,
                "outlier detection turned off".to_string()
            ),
        ]
    );
}

#[test]
fn an_ejection_ends_when_its_time_has_passed() {
    let events = Arc::new(HealthEvents::new(16));
    let settings = fabric::model::OutlierDetection {
        consecutive_errors: 1,
        ejection_ms: 30,
        max_ejection_ms: 30,
        max_ejected_percent: 100,
        ..Default::default()
    };
    let state = ServerState::new("web", addr(0), Some(events.clone()));
    state.set_outliers(Some(Arc::new(crate::outlier::PoolOutliers::new(
        settings, 1,
    ))));
    state.on_response_status(503);
    assert!(state.is_ejected());
    state.on_response_status(503);
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert!(!state.is_ejected());
    assert!(state.is_available());
    let changes: Vec<_> = events.drain().into_iter().map(|c| c.up).collect();
    assert_eq!(changes, [false, true], "one ejection, one return");
}
