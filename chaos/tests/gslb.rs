//! GSLB sites failing and recovering, in the simulation: two sites, each
//! with one member (an origin), a topology name and a weighted name, the
//! DNS server probing members itself. Origins crash and come back at times
//! drawn from the seed while a client in each site asks every 100 ms.
//! Checked on every answer (BENCHMARKS.md invariant 3):
//! - no member is handed out once it has been down longer than the
//!   detection window `interval x fall + timeout + tick` (plus 100 ms for
//!   the query in flight);
//! - no empty answer or SERVFAIL while a member is up;
//! - a member that was taken out comes back only after `rise` probes.
//!
//! Replay: `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test gslb`
#![cfg(madsim)]

use std::net::IpAddr;
use std::time::Duration;

use fabric::rt;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use sim::world::World;

const CONFIG: &str = r#"
[controller]
listen = "10.0.0.1:7470"

[[health_monitors]]
name = "http"
type = "http"
interval_ms = 1000
timeout_ms = 500
rise = 2
fall = 2
http = { path = "/", expected_status = [200] }

[dns]
listen = "10.0.0.53:53"

[[dns.zones]]
name = "gslb.test"

[[gslb_sites]]
name = "east"
client_subnets = ["10.1.0.0/16"]
fallback = ["west"]

[[gslb_sites]]
name = "west"
client_subnets = ["10.2.0.0/16"]
fallback = ["east"]

[[gslb_services]]
fqdn = "topo.gslb.test"
policy = "topology"
members = [
  { address = "10.0.2.1", port = 80, site = "east" },
  { address = "10.0.2.2", port = 80, site = "west" },
]
health = { monitor = "http" }

[[gslb_services]]
fqdn = "wtd.gslb.test"
policy = "weighted"
members = [
  { address = "10.0.2.1", port = 80, weight = 3, site = "east" },
  { address = "10.0.2.2", port = 80, weight = 1, site = "west" },
]
health = { monitor = "http" }

[[demo_origins]]
name = "east"
listen = "10.0.2.1:80"

[[demo_origins]]
name = "west"
listen = "10.0.2.2:80"
"#;

const ORIGINS: [(&str, [u8; 4]); 2] = [("east", [10, 0, 2, 1]), ("west", [10, 0, 2, 2])];
const INTERVAL: Duration = Duration::from_millis(1000);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// interval x fall + timeout + the node's tick + the query in flight.
const DETECTION: Duration = Duration::from_millis(1000 * FALL as u64 + 500 + 1000 + 100);
/// rise x interval + the node's tick + the query in flight: a member back
/// this long is up in the DNS's view.
const RISE_WINDOW: Duration = Duration::from_millis(1000 * RISE as u64 + 1000 + 100);
const RUN: Duration = Duration::from_secs(120);

/// When each origin was down: (down at, up again at), in ms since start.
#[derive(Debug, Default, Clone)]
struct Truth {
    outages: Vec<Vec<(u64, Option<u64>)>>,
    /// Per origin, per outage: whether its own site's clients stopped
    /// getting it.
    detected: Vec<Vec<bool>>,
}

impl Truth {
    fn down_since(&self, origin: usize, at: u64) -> Option<u64> {
        self.outages[origin]
            .iter()
            .find(|(from, to)| *from <= at && to.is_none_or(|to| at < to))
            .map(|(from, _)| *from)
    }

    /// When `origin` last came back at or before `at`.
    fn back_since(&self, origin: usize, at: u64) -> Option<u64> {
        self.outages[origin]
            .iter()
            .filter_map(|(_, to)| *to)
            .filter(|to| *to <= at)
            .max()
    }
}

#[madsim::test]
async fn dns_follows_site_failures_within_the_detection_window() {
    let world = World::builder()
        .config(CONFIG)
        .ses(0)
        .build()
        .await
        .unwrap();
    let start = rt::now();
    let ms = || (rt::now() - start).as_millis() as u64;
    // The fault plan, from the seed: each origin crashes up to three times
    // for 2-15 s, never both at once for long (they are independent).
    let mut plan: Vec<(u64, usize, bool)> = Vec::new();
    for origin in 0..ORIGINS.len() {
        let mut t = 3_000 + rt::random_u64() % 10_000;
        for _ in 0..3 {
            let down_for = 2_000 + rt::random_u64() % 13_000;
            if t + down_for > RUN.as_millis() as u64 - 10_000 {
                break;
            }
            plan.push((t, origin, false));
            plan.push((t + down_for, origin, true));
            t += down_for + 3_000 + rt::random_u64() % 15_000;
        }
    }
    plan.sort();
    println!("fault plan (ms, origin, up): {plan:?}");

    let mut truth = Truth {
        outages: vec![Vec::new(); ORIGINS.len()],
        detected: vec![Vec::new(); ORIGINS.len()],
    };
    let clients: [(IpAddr, u8); 2] = [
        (IpAddr::from([10, 1, 0, 0]), 16),
        (IpAddr::from([10, 2, 0, 0]), 16),
    ];
    let handle = madsim::runtime::Handle::current();
    let mut next = 0;
    let mut answers = 0u32;
    // Whether each member was seen out of the answers during its outage.
    let mut taken_out = [false; 2];
    while ms() < RUN.as_millis() as u64 {
        while next < plan.len() && plan[next].0 <= ms() {
            let (_, origin, up) = plan[next];
            let name = ORIGINS[origin].0;
            if up {
                handle.restart(name);
                if let Some(last) = truth.outages[origin].last_mut() {
                    last.1 = Some(ms());
                }
            } else {
                handle.kill(name);
                truth.outages[origin].push((ms(), None));
                truth.detected[origin].push(false);
                taken_out[origin] = false;
            }
            next += 1;
        }
        for name in ["topo.gslb.test.", "wtd.gslb.test."] {
            for (site, ecs) in clients.iter().enumerate() {
                let asked = ms();
                let Ok(reply) = world.dns_for(name, RecordType::A, Some(*ecs)).await else {
                    panic!("no DNS answer at {asked} ms");
                };
                answers += 1;
                let now = ms();
                let any_up = (0..ORIGINS.len()).any(|o| truth.down_since(o, asked).is_none());
                if any_up {
                    assert_eq!(reply.rcode, ResponseCode::NoError, "{name} at {asked} ms");
                    assert!(
                        !reply.addrs.is_empty(),
                        "empty answer for {name} at {asked} ms while a member is up"
                    );
                }
                for (o, (origin, ip)) in ORIGINS.iter().enumerate() {
                    let given = reply.addrs.contains(&IpAddr::from(*ip));
                    let down = truth.down_since(o, asked);
                    if let Some(since) = down {
                        if !given && name.starts_with("topo") && site == o {
                            taken_out[o] = true;
                            if let Some(d) = truth.detected[o].last_mut() {
                                *d = true;
                            }
                        }
                        // Handed out while every member is down is the
                        // all-down answer (last known good), allowed.
                        // ... and so is an answer while every other member
                        // is down or came back too recently for `rise`.
                        let others_up = (0..ORIGINS.len()).any(|p| {
                            p != o
                                && truth.down_since(p, asked).is_none()
                                && truth.back_since(p, asked).is_none_or(|back| {
                                    asked - back >= RISE_WINDOW.as_millis() as u64
                                })
                        });
                        assert!(
                            !(given && others_up && now.saturating_sub(since) > DETECTION.as_millis() as u64),
                            "{name}: {origin} handed out at {now} ms, down since {since} ms (window {DETECTION:?})"
                        );
                    } else if given && name.starts_with("topo") && site == o {
                        // Back in the answers: not before `rise` probes after it came back.
                        if let Some(back) = truth.back_since(o, asked) {
                            let earliest = back + (RISE as u64 - 1) * INTERVAL.as_millis() as u64;
                            if taken_out[o] {
                                assert!(
                                    now + 1 >= earliest,
                                    "{origin} back in answers at {now} ms, up at {back} ms: rise {RISE} not respected"
                                );
                            }
                        }
                    }
                }
            }
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers > 2_000, "only {answers} answers checked");
    // Liveness: every outage longer than the window, while the other site
    // was up, took the member out of its own site's answers.
    let end = RUN.as_millis() as u64;
    let mut detected = 0;
    for (o, (origin, _)) in ORIGINS.iter().enumerate() {
        for (i, (from, to)) in truth.outages[o].iter().enumerate() {
            let to = to.unwrap_or(end);
            // The other site up (and settled) from before the outage until
            // the member should have been taken out.
            let by = from + DETECTION.as_millis() as u64 + 1_000;
            let other_up = (0..ORIGINS.len()).filter(|p| *p != o).all(|p| {
                truth.outages[p].iter().all(|(f, t)| {
                    t.unwrap_or(end) + (RISE_WINDOW.as_millis() as u64) < *from || *f > by
                })
            });
            if other_up && to - from > DETECTION.as_millis() as u64 + 1_000 {
                assert!(
                    truth.detected[o][i],
                    "{origin} down {from}-{to} ms was never taken out"
                );
                detected += 1;
            }
        }
    }
    println!("outages detected and checked: {detected}");
    println!(
        "scenario gslb: simulated {:.3} s, {answers} answers checked",
        (rt::now() - start).as_secs_f64()
    );
}
