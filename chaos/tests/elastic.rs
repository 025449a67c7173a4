//! Elastic HA in the simulation (docs/placement.md): the leader places the
//! virtual services of an elastic group on its SEs, and moves them when an
//! SE fails. A client asks every VIP through its ARP cache and tags each
//! answer with the SE that sent it. Each test runs per seed:
//! - N+M (3 SEs, 2 virtual services, M = 1): each virtual service on its
//!   own SE, the third free; the SE of one is killed at a time drawn from
//!   the seed: the buffer SE serves it within the detection bound, the other
//!   virtual service never moves, and no VIP ever has two holders;
//! - active/active (3 SEs, 1 virtual service on 2): the primary is killed:
//!   the secondary serves within the bound, and the third SE becomes the
//!   new secondary;
//! - limits: one SE that takes one virtual service, two virtual services:
//!   the API says which one is short and why.
//!
//! Replay: `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test elastic`
#![cfg(madsim)]

use std::time::Duration;

use fabric::rt;
use sim::world::{elastic_config, World};

/// A request the client gives up on after this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Time between two rounds of requests.
const PACE: Duration = Duration::from_millis(50);
/// Kill to first answer from the new SE: the leader marks the SE down 3
/// heartbeats (1.5 s) after it last heard it, places within a tick
/// (0.5 s), and the new SE claims the VIP and sends GARPs.
const MOVE_BOUND: Duration = Duration::from_millis(3_000);

/// The SE answering virtual service `vs` now, if one does.
async fn ask(world: &World, vs: &str) -> Option<String> {
    match world.http_get_vs_within(vs, "/", REQUEST_TIMEOUT).await {
        Ok(reply) if reply.status == 200 => reply.se,
        _ => None,
    }
}

async fn build(group: &str, ses: usize, vss: usize) -> World {
    World::builder()
        .config(&elastic_config(group, vss))
        .ses(ses)
        .build()
        .await
        .unwrap()
}

/// Wait until every virtual service answers; their SEs.
async fn serving(world: &World, vss: &[&str]) -> Vec<String> {
    let start = rt::now();
    loop {
        let mut found = Vec::new();
        for vs in vss {
            match ask(world, vs).await {
                Some(se) => found.push(se),
                None => break,
            }
        }
        if found.len() == vss.len() {
            return found;
        }
        assert!(
            rt::now() - start < Duration::from_secs(30),
            "not every virtual service serves after 30 s"
        );
        rt::sleep(PACE).await;
    }
}

/// Invariant 1 on the segment: never two holders of one VIP.
fn one_holder(world: &World, vss: &[&str]) {
    for vs in vss {
        let vip = world.vip_of(vs).unwrap().ip();
        let holders = world.cloud.holders(vip);
        assert!(holders.len() <= 1, "{vs}: {holders:?} hold {vip}");
    }
}

/// The SEs the applied placement names for `vs` on the leader.
fn placed(world: &World, vs: &str) -> Vec<String> {
    world
        .controller()
        .map(|c| c.desired().placement.of(vs).to_vec())
        .unwrap_or_default()
}

#[madsim::test]
async fn n_plus_m_moves_only_the_failed_se_s_virtual_service() {
    let world = build("", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    assert_ne!(before[0], before[1], "distributed: one SE each");
    let victim = before[0].clone();
    let buffer = ["se-1", "se-2", "se-3"]
        .into_iter()
        .find(|s| !before.contains(&s.to_string()))
        .unwrap();
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    world.cloud.kill(&victim).unwrap();
    let killed = rt::now();
    let mut moved = None;
    while rt::now() - killed < MOVE_BOUND * 2 {
        one_holder(&world, &vss);
        assert_eq!(
            ask(&world, "vs-2").await.as_deref(),
            Some(before[1].as_str()),
            "vs-2 moved"
        );
        match ask(&world, "vs-1").await {
            Some(se) if se == victim => panic!("{victim} answered after it was killed"),
            Some(se) => {
                assert_eq!(se, buffer, "vs-1 went to a busy SE, not the buffer");
                moved.get_or_insert(rt::now() - killed);
            }
            None => {}
        }
        rt::sleep(PACE).await;
    }
    let moved = moved.unwrap_or_else(|| panic!("vs-1 never served again after {victim} died"));
    println!("n+m move: {} ms", moved.as_millis());
    assert!(moved <= MOVE_BOUND, "vs-1 served again after {moved:?}");
    assert_eq!(placed(&world, "vs-1"), [buffer.to_string()]);
    let group = world.controller().unwrap().desired().placement.groups["elastic"].clone();
    assert_eq!(group.ses_free, 0, "{group:?}");
    assert!(
        group.note.is_some(),
        "the spent buffer is reported: {group:?}"
    );

    // The dead SE returns: it comes back empty, nothing moves back.
    world.cloud.restart(&victim).unwrap();
    rt::sleep(Duration::from_secs(5)).await;
    one_holder(&world, &vss);
    assert_eq!(ask(&world, "vs-1").await.as_deref(), Some(buffer));
    assert_eq!(
        ask(&world, "vs-2").await.as_deref(),
        Some(before[1].as_str())
    );
    let group = world.controller().unwrap().desired().placement.groups["elastic"].clone();
    assert_eq!(group.ses_free, 1, "{group:?}");
}

#[madsim::test]
async fn active_active_promotes_the_secondary() {
    let world = build("ha_mode = \"elastic_active_active\"", 3, 1).await;
    let vss = ["vs-1"];
    let primary = serving(&world, &vss).await.remove(0);
    let start = rt::now();
    while placed(&world, "vs-1").len() < 2 {
        assert!(rt::now() - start < Duration::from_secs(10), "no secondary");
        rt::sleep(PACE).await;
    }
    let list = placed(&world, "vs-1");
    assert_eq!(list[0], primary, "the first SE holds the VIP");
    let secondary = list[1].clone();
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    world.cloud.kill(&primary).unwrap();
    let killed = rt::now();
    let mut moved = None;
    while rt::now() - killed < MOVE_BOUND * 2 {
        one_holder(&world, &vss);
        match ask(&world, "vs-1").await {
            Some(se) if se == primary => panic!("{primary} answered after it was killed"),
            Some(se) => {
                assert_eq!(se, secondary, "not the secondary");
                moved.get_or_insert(rt::now() - killed);
            }
            None => {}
        }
        rt::sleep(PACE).await;
    }
    let moved = moved.unwrap_or_else(|| panic!("the secondary never answered"));
    println!("active/active promote: {} ms", moved.as_millis());
    assert!(moved <= MOVE_BOUND, "served again after {moved:?}");
    let list = placed(&world, "vs-1");
    assert_eq!(list.len(), 2, "a new secondary: {list:?}");
    assert_eq!(list[0], secondary);
    assert!(!list.contains(&primary));
}

#[madsim::test]
async fn a_virtual_service_that_does_not_fit_is_explained() {
    let world = build("max_vs_per_se = 1\nbuffer_ses = 0", 1, 2).await;
    serving(&world, &["vs-1"]).await;
    let token = world.admin_token(0).await.unwrap();
    let reply = world
        .api(0, "GET", "/api/v1/placement", &token, None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = &reply.body;
    assert_eq!(
        body["virtual_services"]["vs-1"],
        serde_json::json!(["se-1"]),
        "{body}"
    );
    let why = body["problems"]["vs-2"].as_str().unwrap_or_default();
    assert!(why.contains("se-1: full (1 of max_vs_per_se 1)"), "{body}");
    assert!(
        ask(&world, "vs-2").await.is_none(),
        "vs-2 is not placed, nobody serves it"
    );
}
