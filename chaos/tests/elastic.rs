//! Elastic HA in the simulation (docs/placement.md): the leader places the
//! virtual services of an elastic group on its SEs, and moves them when an
//! SE fails. A client asks every VIP through its ARP cache and tags each
//! answer with the SE that sent it. Each test runs per seed:
//! - N+M (3 SEs, 2 virtual services, M = 1): each virtual service on its
//!   own SE, the third free; the SE of one is killed at a time drawn from
//!   the seed: the buffer SE serves it within the detection bound, the other
//!   virtual service never moves, and no VIP ever has two holders;
//! - active/active (3 SEs, 1 virtual service on 2): the primary is killed:
//!   the secondary holds the VIP and the virtual service answers within
//!   the bound, and the third SE becomes the new secondary;
//! - N+M, the SE of vs-1 cut from the Controller (not from the client or
//!   the other SEs), with GARPs delivered or lost: its peers hear its
//!   data-path beats, so it is partitioned, not down: nothing moves, it
//!   alone holds the VIP and every request is answered; the cut heals and
//!   nothing moves;
//! - N+M, the SE of vs-1 cut from the Controller and every other SE (not
//!   from the client), every GARP lost: its lease runs out and it lets the
//!   VIP go before the leader moves vs-1 to the buffer SE: never two
//!   holders, and once the buffer answered the old SE never does;
//! - N+M, the SE of vs-1 killed while every GARP is lost: the client's
//!   requests to the dead SE fail, it asks the segment again and the buffer
//!   SE answers;
//! - N+M, the link between the SE of vs-1 and the Controller flaps for
//!   10 s (cuts of 200-900 ms, some longer than the detection time once
//!   TCP backs off): vs-1 may move, but never back, no VIP has two
//!   holders for more than a sample, vs-2 never moves, and once the link
//!   heals each VIP is held by the SE the placement names;
//! - active/active, the primary cut from the Controller (not from the
//!   client or the other SEs), GARPs delivered or lost: partitioned,
//!   nothing moves, no request fails; cut from every SE too with GARPs
//!   lost: it fences itself, the secondary becomes primary, never two
//!   holders;
//! - auto-healing, one virtual service per SE and no buffer: the killed SE's
//!   virtual service waits on it until the Controller has created a new SE
//!   through the cloud connector (a new simulated node), which then serves
//!   it; the dead SE is deleted;
//! - auto-healing with a buffer: the buffer SE takes over at once, and a
//!   new SE restores the buffer;
//! - scale-out (active/active, one virtual service on all 3 SEs): the
//!   primary holds the VIP alone and hands new connections to the
//!   secondaries, each SE serving about a third;
//! - scale-out, a secondary killed under 30 open keep-alive connections:
//!   exactly the connections it served break (its share, about a third),
//!   every other one keeps its SE, and new connections never fail (the
//!   primary serves what it cannot hand off until placement drops the
//!   dead secondary);
//! - scale-in (the same, the config cut to 2 SEs per virtual service) under
//!   30 open keep-alive connections: the dropped secondary's connections
//!   keep working until they close (drained, not broken), and new ones
//!   never go to it;
//! - draining (active/active, one virtual service on 2 of 3 SEs, 20 open
//!   keep-alive connections): the operator drains the secondary through
//!   the API; the free SE takes its place at once, the drained one stays
//!   (last, handed nothing new) while its connections are open and they
//!   keep answering; once they close it leaves the list;
//! - autoscale (N+M, 3 SEs, one virtual service, 5 s cooldown): its SE
//!   reports 95% CPU: the virtual service goes to 2 SEs, then 3 (the
//!   most); every SE reports 10%: back to 2, then 1; every request answered
//!   and one holder of the VIP throughout;
//! - predictive autoscale (a 20 s "day" with a 4 s peak at 140% of an SE):
//!   the first peak is met when the CPU report shows it, every later one
//!   before it starts (an SE added up to 4.5 s ahead, from what the first
//!   taught), and the quiet between peaks scales back in;
//! - limits: one SE that takes one virtual service, two virtual services:
//!   the API says which one is short and why.
//!
//! Replay: `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test elastic`
#![cfg(madsim)]

use std::net::{IpAddr, SocketAddr};
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

/// Kill `victim` now and ask vs-1 every `PACE` for twice the move bound:
/// one holder per VIP of `vss` at every sample, `victim` never answers, and
/// `check` sees every other answer; the time to the first one.
async fn kill_and_watch(
    world: &World,
    vss: &[&str],
    victim: &str,
    mut check: impl AsyncFnMut(&str),
) -> Duration {
    world.cloud.kill(victim).unwrap();
    let killed = rt::now();
    let mut moved = None;
    while rt::now() - killed < MOVE_BOUND * 2 {
        one_holder(world, vss);
        match ask(world, "vs-1").await {
            Some(se) if se == victim => panic!("{victim} answered after it was killed"),
            Some(se) => {
                check(&se).await;
                moved.get_or_insert(rt::now() - killed);
            }
            None => {}
        }
        rt::sleep(PACE).await;
    }
    let moved = moved.unwrap_or_else(|| panic!("vs-1 never served again after {victim} died"));
    assert!(moved <= MOVE_BOUND, "vs-1 served again after {moved:?}");
    moved
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
    let other = before[1].clone();
    let moved = kill_and_watch(&world, &vss, &victim, async |se| {
        assert_eq!(se, buffer, "vs-1 went to a busy SE, not the buffer");
        assert_eq!(ask(&world, "vs-2").await, Some(other.clone()), "vs-2 moved");
    })
    .await;
    println!("failover mode=n_plus_m_kill ms={}", moved.as_millis());
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
    serving(&world, &vss).await;
    let start = rt::now();
    while placed(&world, "vs-1").len() < 2 {
        assert!(rt::now() - start < Duration::from_secs(10), "no secondary");
        rt::sleep(PACE).await;
    }
    let list = placed(&world, "vs-1");
    let vip = world.vip_of("vs-1").unwrap().ip();
    // The first SE of the list holds the VIP; either may answer (the
    // primary hands the secondary its share of connections).
    assert_eq!(world.cloud.holders(vip), [list[0].clone()]);
    let (primary, secondary) = (list[0].clone(), list[1].clone());
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    // Served again: the old secondary holds the VIP now.
    let moved = kill_and_watch(&world, &vss, &primary, async |_| {
        assert_eq!(world.cloud.holders(vip), std::slice::from_ref(&secondary));
    })
    .await;
    println!("failover mode=active_active_kill ms={}", moved.as_millis());
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

/// Cut (or heal) both directions between SE `se` and the Controller.
fn cut_from_controller(world: &World, se: &str, cut: bool) {
    let (a, b) = (world.cloud.node_id(se).unwrap(), world.controller_node(0));
    world.clog_link(a, b, cut);
    world.clog_link(b, a, cut);
}

/// The buffer SE of a 3-SE N+M group serving `before`.
fn buffer_of(before: &[String]) -> &'static str {
    ["se-1", "se-2", "se-3"]
        .into_iter()
        .find(|s| !before.iter().any(|b| b == s))
        .unwrap()
}

/// Cut (or heal) both directions between SE `se` and every other SE.
fn cut_from_peers(world: &World, se: &str, cut: bool) {
    let a = world.cloud.node_id(se).unwrap();
    let names: Vec<String> = world.cloud.names();
    for other in names.iter().filter(|o| o.as_str() != se) {
        let b = world.cloud.node_id(other).unwrap();
        world.clog_link(a, b, cut);
        world.clog_link(b, a, cut);
    }
}

/// N+M, the SE of vs-1 cut from the Controller only, with GARPs delivered
/// or lost: its peers still hear its data-path beats, so it is partitioned,
/// not down: vs-1 stays and it alone answers, with one holder throughout.
async fn n_plus_m_se_cut_from_the_controller(garp_loss: bool) {
    let world = build("", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let victim = before[0].clone();
    let vip = world.vip_of("vs-1").unwrap().ip();
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    world.cloud.set_garp_loss(garp_loss);
    cut_from_controller(&world, &victim, true);
    let cut = rt::now();
    let mut failed = 0;
    while rt::now() - cut < MOVE_BOUND * 2 {
        assert_eq!(
            world.cloud.holders(vip),
            std::slice::from_ref(&victim),
            "vs-1 holders"
        );
        match ask(&world, "vs-1").await {
            Some(se) => assert_eq!(se, victim, "vs-1 answered by another SE"),
            None => failed += 1,
        }
        assert_eq!(
            ask(&world, "vs-2").await.as_deref(),
            Some(before[1].as_str()),
            "vs-2 moved"
        );
        rt::sleep(PACE).await;
    }
    println!("failover mode=n_plus_m_cut garp_loss={garp_loss} failed={failed}");
    assert_eq!(failed, 0, "requests to the partitioned SE failed");
    assert_eq!(placed(&world, "vs-1"), std::slice::from_ref(&victim));
    let status = world
        .controller()
        .and_then(|c| c.ses().into_iter().find(|s| s.name == victim))
        .expect("the SE is known");
    assert!(
        !status.connected && status.peers_heard_ms_ago.is_some(),
        "{status:?}"
    );
    // Healed: it reconnects, and nothing moves.
    world.cloud.set_garp_loss(false);
    cut_from_controller(&world, &victim, false);
    rt::sleep(Duration::from_secs(5)).await;
    assert_eq!(world.cloud.holders(vip), std::slice::from_ref(&victim));
    assert_eq!(ask(&world, "vs-1").await.as_ref(), Some(&victim));
    assert_eq!(placed(&world, "vs-1"), [victim]);
}

#[madsim::test]
async fn n_plus_m_se_cut_from_the_controller_keeps_its_virtual_services() {
    n_plus_m_se_cut_from_the_controller(false).await;
}

#[madsim::test]
async fn n_plus_m_se_cut_from_the_controller_while_garps_are_lost_keeps_them() {
    n_plus_m_se_cut_from_the_controller(true).await;
}

/// N+M, the SE of vs-1 cut from the Controller and from the other SEs (not
/// from the client), every GARP lost: nobody can tell it from a dead SE, so
/// the leader moves vs-1 to the buffer SE; the cut SE's lease runs out
/// first and it lets the VIP go: never two holders, and once the buffer
/// answered the old SE never does.
#[madsim::test]
async fn n_plus_m_se_cut_from_everything_but_its_clients_fences_itself() {
    let world = build("", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let (victim, buffer) = (before[0].clone(), buffer_of(&before));
    let vip = world.vip_of("vs-1").unwrap().ip();
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    world.cloud.set_garp_loss(true);
    cut_from_controller(&world, &victim, true);
    cut_from_peers(&world, &victim, true);
    let cut = rt::now();
    let (mut fenced, mut moved, mut dual_samples, mut new_answered) = (None, None, 0, false);
    while rt::now() - cut < MOVE_BOUND * 2 {
        let holders = world.cloud.holders(vip);
        if holders.len() > 1 {
            dual_samples += 1;
        }
        if holders.is_empty() {
            fenced.get_or_insert(rt::now() - cut);
        }
        match ask(&world, "vs-1").await {
            Some(se) if se == victim => {
                assert!(!new_answered, "{victim} answered after {buffer} took over")
            }
            Some(se) => {
                assert_eq!(se, buffer);
                new_answered = true;
                moved.get_or_insert(rt::now() - cut);
            }
            None => {}
        }
        rt::sleep(PACE).await;
    }
    let moved = moved.unwrap_or_else(|| panic!("vs-1 never moved off the cut {victim}"));
    let fenced = fenced.unwrap_or_else(|| panic!("{victim} never let the VIP go"));
    println!(
        "failover mode=n_plus_m_isolated fenced_ms={} moved_ms={} dual_samples={dual_samples}",
        fenced.as_millis(),
        moved.as_millis()
    );
    assert_eq!(dual_samples, 0, "two holders of {vip}");
    assert!(fenced < moved, "fenced after the move");
    // Lost GARPs: the client finds the buffer by asking after a failure.
    assert!(
        moved <= MOVE_BOUND + REQUEST_TIMEOUT * 2,
        "moved after {moved:?}"
    );
    assert_eq!(world.cloud.holders(vip), [buffer.to_string()]);
    // Healed: the old SE reconnects, is told vs-1 is elsewhere, takes
    // nothing back.
    world.cloud.set_garp_loss(false);
    cut_from_controller(&world, &victim, false);
    cut_from_peers(&world, &victim, false);
    rt::sleep(Duration::from_secs(5)).await;
    assert_eq!(world.cloud.holders(vip), [buffer.to_string()]);
    assert_eq!(ask(&world, "vs-1").await.as_deref(), Some(buffer));
    assert_eq!(placed(&world, "vs-1"), [buffer.to_string()]);
}

#[madsim::test]
async fn n_plus_m_survives_lost_garps() {
    let world = build("", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let (victim, buffer) = (before[0].clone(), buffer_of(&before));
    world.cloud.set_garp_loss(true);
    world.cloud.kill(&victim).unwrap();
    let killed = rt::now();
    let mut moved = None;
    while rt::now() - killed < MOVE_BOUND * 2 && moved.is_none() {
        one_holder(&world, &vss);
        match ask(&world, "vs-1").await {
            Some(se) => {
                assert_eq!(se, buffer);
                moved = Some(rt::now() - killed);
            }
            None => rt::sleep(PACE).await,
        }
    }
    let moved = moved.unwrap_or_else(|| panic!("vs-1 never served again without GARPs"));
    println!("failover mode=n_plus_m_garp_loss ms={}", moved.as_millis());
    // Without GARPs the client finds the new SE by asking (who-has) after a
    // failed request: detection + placement + one failed request.
    assert!(moved <= MOVE_BOUND + REQUEST_TIMEOUT * 2, "after {moved:?}");
}

#[madsim::test]
async fn n_plus_m_under_a_flapping_controller_link_never_answers_twice() {
    let world = build("", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let victim = before[0].clone();
    // Per VS, the SEs that answered, in order, without repeats.
    let mut order: Vec<Vec<String>> = vec![vec![], vec![]];
    let mut dual_samples = 0;
    let start = rt::now();
    let mut next_flip = start;
    let mut cut = false;
    while rt::now() - start < Duration::from_secs(10) {
        if rt::now() >= next_flip {
            cut = !cut;
            cut_from_controller(&world, &victim, cut);
            // Cuts of 200-900 ms, 300-1000 ms apart: some outlast the
            // detection time once TCP's retransmission backoff is added.
            let (min, spread) = if cut { (200, 700) } else { (300, 700) };
            next_flip = rt::now() + Duration::from_millis(min + rt::random_u64() % spread);
        }
        for (k, vs) in vss.iter().enumerate() {
            let vip = world.vip_of(vs).unwrap().ip();
            if world.cloud.holders(vip).len() > 1 {
                dual_samples += 1;
            }
            if let Some(se) = ask(&world, vs).await {
                if order[k].last() != Some(&se) {
                    order[k].push(se);
                }
            }
        }
        rt::sleep(PACE).await;
    }
    cut_from_controller(&world, &victim, false);
    rt::sleep(Duration::from_secs(5)).await;
    println!("failover mode=n_plus_m_flapping dual_samples={dual_samples} answered_by={order:?}");
    for (k, vs) in vss.iter().enumerate() {
        let mut seen = order[k].clone();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            order[k].len(),
            "{vs} went back and forth: {:?}",
            order[k]
        );
        let now = placed(&world, vs);
        assert_eq!(
            ask(&world, vs).await.as_ref(),
            now.first(),
            "{vs} not served by its SE"
        );
        assert_eq!(
            world.cloud.holders(world.vip_of(vs).unwrap().ip()),
            now,
            "{vs}"
        );
    }
    assert_eq!(order[1], [before[1].clone()], "vs-2 moved");
    assert!(dual_samples <= 1, "two holders for {dual_samples} samples");
}

/// Every SE host the simulated cloud has, by name.
async fn hosts(world: &World) -> Vec<String> {
    use fabric::platform::CloudConnector;
    world
        .cloud
        .list_ses()
        .await
        .into_iter()
        .map(|h| h.name)
        .collect()
}

#[madsim::test]
async fn auto_healing_replaces_a_failed_se() {
    let world = build("max_vs_per_se = 1\nbuffer_ses = 0\nauto_heal = true", 2, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let victim = before[0].clone();
    rt::sleep(Duration::from_millis(rt::random_u64() % 2_000)).await;
    world.cloud.kill(&victim).unwrap();
    let killed = rt::now();
    let healed = loop {
        one_holder(&world, &vss);
        assert_eq!(
            ask(&world, "vs-2").await.as_deref(),
            Some(before[1].as_str()),
            "vs-2 moved"
        );
        match ask(&world, "vs-1").await {
            Some(se) if se != victim => break se,
            _ => {}
        }
        assert!(
            rt::now() - killed < Duration::from_secs(15),
            "vs-1 never served again"
        );
        rt::sleep(PACE).await;
    };
    let took = rt::now() - killed;
    println!(
        "failover mode=auto_heal ms={} by={healed}",
        took.as_millis()
    );
    assert!(healed.starts_with("elastic-auto-"), "{healed}");
    // Detection, the new node's registration and first session, the quiet
    // period, placement.
    assert!(took < Duration::from_secs(5), "healed after {took:?}");
    // The dead SE is deleted (4 detection times after it was last heard).
    let start = rt::now();
    while hosts(&world).await.contains(&victim) {
        assert!(
            rt::now() - start < Duration::from_secs(15),
            "{victim} never deleted"
        );
        rt::sleep(Duration::from_millis(200)).await;
    }
    let events = world.controller().unwrap().events();
    for kind in ["se_created", "se_deleted"] {
        assert!(
            events.iter().any(|e| e.kind == kind),
            "no {kind} event: {events:?}"
        );
    }
    assert_eq!(placed(&world, "vs-1"), [healed]);
    rt::sleep(Duration::from_secs(3)).await;
    let all = hosts(&world).await;
    assert_eq!(all.len(), 2, "one SE created, no more: {all:?}");
}

#[madsim::test]
async fn auto_healing_restores_the_buffer() {
    let world = build("auto_heal = true", 3, 2).await;
    let vss = ["vs-1", "vs-2"];
    let before = serving(&world, &vss).await;
    let group =
        |world: &World| world.controller().unwrap().desired().placement.groups["elastic"].clone();
    assert_eq!(group(&world).ses_free, 1, "{:?}", group(&world));
    world.cloud.kill(&before[0]).unwrap();
    let start = rt::now();
    loop {
        one_holder(&world, &vss);
        let g = group(&world);
        if g.ses_free == 1 && g.ses_up == 3 && ask(&world, "vs-1").await.is_some() {
            break;
        }
        assert!(
            rt::now() - start < Duration::from_secs(15),
            "buffer not restored: {g:?}"
        );
        rt::sleep(PACE).await;
    }
    println!(
        "failover mode=auto_heal_buffer ms={}",
        (rt::now() - start).as_millis()
    );
    assert_eq!(
        ask(&world, "vs-1").await.as_deref(),
        Some(buffer_of(&before))
    );
    let created: Vec<String> = hosts(&world)
        .await
        .into_iter()
        .filter(|h| h.starts_with("elastic-auto-"))
        .collect();
    assert_eq!(created, ["elastic-auto-1"], "one SE created, no more");
}

const SCALE_OUT: &str = "ha_mode = \"elastic_active_active\"\nmin_scaleout_per_vs = 3";

/// Wait until vs-1 is placed on 3 SEs and the primary knows all of them.
async fn scaled_out(world: &World) -> Vec<String> {
    serving(world, &["vs-1"]).await;
    let start = rt::now();
    loop {
        let list = placed(world, "vs-1");
        if list.len() == 3 {
            // The primary's config follows the placement within a push.
            rt::sleep(Duration::from_millis(500)).await;
            return list;
        }
        assert!(
            rt::now() - start < Duration::from_secs(10),
            "not on 3 SEs: {list:?}"
        );
        rt::sleep(PACE).await;
    }
}

#[madsim::test]
async fn scale_out_spreads_new_connections_over_the_ses() {
    let world = build(SCALE_OUT, 3, 1).await;
    let list = scaled_out(&world).await;
    let vip = world.vip_of("vs-1").unwrap();
    // 90 connections held open, so each has a port of its own (the
    // simulator reuses a closed connection's port, and flows hash on it).
    let served = world
        .on_client(move |port| async move {
            let owner = port.resolve(vip.ip()).await.expect("the VIP resolves");
            let mut conns = Vec::new();
            let mut served = Vec::new();
            for _ in 0..90 {
                let mut s = rt::connect(std::net::SocketAddr::new(owner, vip.port())).await?;
                served.push(keep_alive_get(&mut s).await);
                conns.push(s);
            }
            Ok(served)
        })
        .await
        .unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for se in served {
        *counts
            .entry(se.expect("every request answered"))
            .or_default() += 1;
    }
    println!("scale-out spread over {list:?}: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (se, n) in &counts {
        assert!((12..=50).contains(n), "{se} served {n} of 90: {counts:?}");
    }
    assert_eq!(
        world.cloud.holders(vip.ip()),
        [list[0].clone()],
        "only the primary holds the VIP"
    );
}

/// One request on an open keep-alive connection: the SE that answered.
async fn keep_alive_get(stream: &mut rt::TcpStream) -> Option<String> {
    request_on(stream, false).await
}

/// One request on an open connection, the last one on it when `last` (the
/// server closes it after the answer: the simulated TCP has no half-close,
/// so a client that just goes away leaves a spliced connection open until
/// its idle timeout).
async fn request_on(stream: &mut rt::TcpStream, last: bool) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head: &[u8] = if last {
        b"GET / HTTP/1.1\r\nHost: vs-1\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: vs-1\r\n\r\n"
    };
    stream.write_all(head).await.ok()?;
    stream.flush().await.ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = rt::timeout(REQUEST_TIMEOUT * 5, stream.read(&mut byte))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")?.parse().ok()?;
    let mut body = vec![0u8; len];
    rt::timeout(REQUEST_TIMEOUT * 5, stream.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    header(se::SE_HEADER)
}

/// What a client saw on vs-1 around an action (each entry: the SE that
/// answered, or None).
struct Rounds {
    /// The first request on each of the open connections.
    before: Vec<Option<String>>,
    /// One more on each, after the action.
    after: Vec<Option<String>>,
    /// One on each of the new connections opened after that.
    fresh: Vec<Option<String>>,
}

impl Rounds {
    /// The open connections stayed where they were (none broke or moved),
    /// every new one was answered and none by `left`, the SE that is
    /// leaving; how many of the open ones `left` served.
    fn kept_while_leaving(&self, left: &str) -> usize {
        let on_it = self
            .before
            .iter()
            .filter(|s| s.as_deref() == Some(left))
            .count();
        assert!(on_it > 0, "no connection on {left}: {:?}", self.before);
        assert_eq!(
            self.after, self.before,
            "an open connection broke or moved while {left} left"
        );
        assert!(
            self.fresh.iter().all(|s| s.is_some()),
            "a new connection failed: {:?}",
            self.fresh
        );
        assert!(
            !self.fresh.iter().any(|s| s.as_deref() == Some(left)),
            "a new connection went to {left}: {:?}",
            self.fresh
        );
        on_it
    }
}

/// Open `open` keep-alive connections to vs-1, one request on each; then
/// run `action` (it starts only then); then one more request on each (the
/// last on it when `last`); then `fresh` new connections, one request each.
async fn around(
    world: &World,
    open: usize,
    fresh: usize,
    last: bool,
    action: impl std::future::Future<Output = ()>,
) -> Rounds {
    let vip = world.vip_of("vs-1").unwrap();
    let (open_tx, open_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let client = world.on_client(move |port| async move {
        let owner = port.resolve(vip.ip()).await.expect("the VIP resolves");
        let to = std::net::SocketAddr::new(owner, vip.port());
        let mut conns = Vec::new();
        for _ in 0..open {
            let mut s = rt::connect(to).await?;
            let se = keep_alive_get(&mut s).await;
            conns.push((s, se));
        }
        let _ = open_tx.send(());
        let _ = go_rx.await;
        let mut after = Vec::new();
        for (s, _) in &mut conns {
            after.push(request_on(s, last).await);
        }
        let mut new = Vec::new();
        for _ in 0..fresh {
            let mut s = rt::connect(to).await?;
            new.push(keep_alive_get(&mut s).await);
        }
        let before = conns.into_iter().map(|(_, se)| se).collect();
        Ok(Rounds {
            before,
            after,
            fresh: new,
        })
    });
    let act = async {
        open_rx.await.unwrap();
        action.await;
        let _ = go_tx.send(());
    };
    let (rounds, ()) = tokio::join!(client, act);
    rounds.unwrap()
}

#[madsim::test]
async fn killing_a_secondary_breaks_only_its_share_of_connections() {
    let world = build(SCALE_OUT, 3, 1).await;
    let list = scaled_out(&world).await;
    let victim = list[1 + (rt::random_u64() % 2) as usize].clone();
    let kill = async {
        world.cloud.kill(&victim).unwrap();
        rt::sleep(Duration::from_millis(100)).await;
    };
    // The new connections come while the primary still lists the dead one.
    let Rounds {
        before,
        after,
        fresh,
    } = around(&world, 30, 20, false, kill).await;
    let fresh_failed = fresh.iter().filter(|s| s.is_none()).count();
    let on_victim = before
        .iter()
        .filter(|s| s.as_deref() == Some(victim.as_str()))
        .count();
    let mut broken = 0;
    for (b, a) in before.iter().zip(&after) {
        assert!(b.is_some(), "a first request failed: {before:?}");
        if b.as_deref() == Some(victim.as_str()) {
            assert!(
                a.is_none(),
                "a connection on the killed {victim} still answered"
            );
            broken += 1;
        } else {
            assert_eq!(a, b, "a connection moved or broke: {before:?} -> {after:?}");
        }
    }
    println!("scale-out kill {victim}: {broken} of 30 connections broken (its share: {on_victim}), {fresh_failed} of 20 new ones failed");
    assert_eq!(broken, on_victim);
    assert!(
        (3..=18).contains(&broken),
        "its share should be about a third: {broken}"
    );
    assert_eq!(
        fresh_failed, 0,
        "a new connection failed while a secondary was down"
    );
}

#[madsim::test]
async fn autoscale_follows_cpu_out_and_back_in() {
    let group =
        "buffer_ses = 0\nautoscale = true\nautoscale_cooldown_ms = 5000\nmax_scaleout_per_vs = 3";
    let world = build(group, 3, 1).await;
    let first = serving(&world, &["vs-1"]).await.remove(0);
    assert_eq!(placed(&world, "vs-1"), std::slice::from_ref(&first));
    let start = rt::now();
    // (when, SEs carrying vs-1) each time it changes.
    let mut steps: Vec<(u64, usize)> = Vec::new();
    let mut failed = 0;
    let mut cooled = false;
    world.cloud.set_cpu(&first, 95);
    while rt::now() - start < Duration::from_secs(60) {
        let n = placed(&world, "vs-1").len();
        if steps.last().map(|s| s.1) != Some(n) {
            steps.push(((rt::now() - start).as_millis() as u64, n));
        }
        if n == 3 && !cooled {
            for se in ["se-1", "se-2", "se-3"] {
                world.cloud.set_cpu(se, 10);
            }
            cooled = true;
        }
        if cooled && n == 1 {
            break;
        }
        one_holder(&world, &["vs-1"]);
        if ask(&world, "vs-1").await.is_none() {
            failed += 1;
        }
        rt::sleep(Duration::from_millis(200)).await;
    }
    println!("autoscale steps (ms, SEs): {steps:?}, {failed} failed requests");
    let counts: Vec<usize> = steps.iter().map(|s| s.1).collect();
    assert_eq!(counts, [1, 2, 3, 2, 1], "{steps:?}");
    // Out within a stats report and a tick of the CPU going up; each later
    // step a cooldown apart.
    assert!(steps[1].0 <= 3_000, "{steps:?}");
    for w in steps.windows(2).skip(1) {
        assert!(
            w[1].0 - w[0].0 >= 5_000 - 300,
            "steps closer than the cooldown: {steps:?}"
        );
    }
    assert_eq!(failed, 0, "requests failed while scaling");
    let events = world.controller().unwrap().events();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e.kind.starts_with("scale_"))
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["scale_out", "scale_out", "scale_in", "scale_in"]);
}

/// Predictive autoscale's day in the simulation: a 20 s period.
const PERIOD_MS: u64 = 20_000;
/// The daily peak: from 10 s to 14 s into each period.
const PEAK_MS: std::ops::Range<u64> = 10_000..14_000;
/// How far ahead predictive autoscale looks.
const LEAD_MS: u64 = 4_000;

#[madsim::test]
async fn predictive_autoscale_adds_an_se_before_the_learned_peak() {
    let group = format!(
        "buffer_ses = 0\nautoscale = true\nautoscale_mode = \"predictive\"\nautoscale_period_ms = {PERIOD_MS}\nautoscale_lead_ms = {LEAD_MS}\nautoscale_cooldown_ms = 1000\nmax_scaleout_per_vs = 2"
    );
    let world = build(&group, 3, 1).await;
    serving(&world, &["vs-1"]).await;
    let start_ms = rt::unix_ms();
    // The load: 140% of one SE's CPU in the peak, 20% outside it, shared
    // by the SEs carrying vs-1 (each reports its share, at most 100%).
    let mut failed = 0;
    // (ms since the Unix epoch, SEs carrying vs-1) at each change.
    let mut steps: Vec<(u64, usize)> = Vec::new();
    while rt::unix_ms() - start_ms < 3 * PERIOD_MS {
        let now = rt::unix_ms();
        let ses = placed(&world, "vs-1");
        if steps.last().map(|s| s.1) != Some(ses.len()) {
            steps.push((now, ses.len()));
        }
        let load = if PEAK_MS.contains(&(now % PERIOD_MS)) {
            140
        } else {
            20
        };
        for se in ["se-1", "se-2", "se-3"] {
            let share = if ses.contains(&se.to_string()) {
                (load / ses.len().max(1) as u32).min(100)
            } else {
                0
            };
            world.cloud.set_cpu(se, share);
        }
        one_holder(&world, &["vs-1"]);
        if ask(&world, "vs-1").await.is_none() {
            println!(
                "failed at {} ms into the period, on {ses:?}",
                now % PERIOD_MS
            );
            failed += 1;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    let phase = |ms: u64| ms % PERIOD_MS;
    println!(
        "predictive autoscale steps (ms into the period, SEs): {:?}, {failed} failed requests",
        steps
            .iter()
            .map(|(t, n)| (phase(*t), *n))
            .collect::<Vec<_>>()
    );
    let outs: Vec<(u64, String)> = world
        .controller()
        .unwrap()
        .events()
        .into_iter()
        .filter(|e| e.kind == "scale_out")
        .map(|e| (e.unix_ms, e.reason))
        .collect();
    // The first peak is met as it comes, from the CPU reported.
    let first = &outs[0];
    assert!(first.1.contains("CPU, above"), "{outs:?}");
    assert!(PEAK_MS.contains(&phase(first.0)), "{outs:?}");
    // A later one is met before it comes, from what the first taught.
    let early: Vec<&(u64, String)> = outs
        .iter()
        .filter(|(_, why)| why.contains(" SEs: forecast: "))
        .collect();
    assert!(!early.is_empty(), "no scale-out ahead of a peak: {outs:?}");
    for (t, why) in &early {
        let at = phase(*t);
        assert!(
            (PEAK_MS.start - LEAD_MS - 500..PEAK_MS.start).contains(&at),
            "forecast scale-out {at} ms into the period: {why}"
        );
    }
    // Each peak after the first finds vs-1 on 2 SEs as it starts, and the
    // quiet between peaks brings it back to 1.
    let peaks_after = (1..3)
        .map(|k| start_ms - phase(start_ms) + k * PERIOD_MS + PEAK_MS.start)
        .filter(|&p| p > first.0 + PERIOD_MS / 2 && p < start_ms + 3 * PERIOD_MS);
    for peak in peaks_after {
        let carrying = steps
            .iter()
            .take_while(|(t, _)| *t <= peak)
            .last()
            .map_or(0, |s| s.1);
        assert_eq!(carrying, 2, "at the peak of {peak} ms: {steps:?}");
    }
    assert!(
        steps.iter().filter(|(_, n)| *n == 1).count() >= 2,
        "never scaled back in: {steps:?}"
    );
    assert_eq!(failed, 0, "requests failed while scaling");
}

#[madsim::test]
async fn scale_in_drains_the_dropped_secondary_s_connections() {
    let world = build(SCALE_OUT, 3, 1).await;
    let list = scaled_out(&world).await;
    let dropped = list[2].clone();
    let scale_in = async {
        let controller = world.controller().unwrap();
        let mut config = world.config.clone();
        config.se_groups[0].min_scaleout_per_vs = Some(2);
        controller.apply(config).await.unwrap();
        let start = rt::now();
        while placed(&world, "vs-1").len() != 2 {
            assert!(rt::now() - start < Duration::from_secs(5), "not scaled in");
            rt::sleep(PACE).await;
        }
        // Every SE has applied the change.
        rt::sleep(Duration::from_millis(500)).await;
    };
    let rounds = around(&world, 30, 30, false, scale_in).await;
    assert_eq!(placed(&world, "vs-1"), list[..2]);
    let on_dropped = rounds.kept_while_leaving(&dropped);
    println!("scale-in drops {dropped}: {on_dropped} of 30 open connections were on it");
}

#[madsim::test]
async fn draining_an_se_moves_its_work_once_its_connections_end() {
    let world = build("ha_mode = \"elastic_active_active\"", 3, 1).await;
    serving(&world, &["vs-1"]).await;
    let start = rt::now();
    while placed(&world, "vs-1").len() < 2 {
        assert!(rt::now() - start < Duration::from_secs(10), "no secondary");
        rt::sleep(PACE).await;
    }
    rt::sleep(Duration::from_millis(500)).await;
    let list = placed(&world, "vs-1");
    let (primary, drained) = (list[0].clone(), list[1].clone());
    let free = ["se-1", "se-2", "se-3"]
        .into_iter()
        .find(|s| !list.iter().any(|l| l == s))
        .unwrap()
        .to_string();
    let operator = async {
        let token = world.admin_token(0).await.unwrap();
        let path = format!("/api/v1/ses/{drained}/drain");
        let body = serde_json::json!({ "draining": true });
        let reply = world
            .api(0, "POST", &path, &token, Some(body))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        let bad = world
            .api(
                0,
                "POST",
                "/api/v1/ses/nope/drain",
                &token,
                Some(serde_json::json!({ "draining": true })),
            )
            .await
            .unwrap();
        assert_eq!(bad.status, 404, "{bad:?}");
        let start = rt::now();
        while placed(&world, "vs-1") != [primary.clone(), free.clone(), drained.clone()] {
            assert!(
                rt::now() - start < Duration::from_secs(5),
                "no replacement beside the busy drained SE: {:?}",
                placed(&world, "vs-1")
            );
            rt::sleep(PACE).await;
        }
        rt::sleep(Duration::from_millis(500)).await;
    };
    // The second request on each open connection is its last: the server
    // closes it after answering.
    let rounds = around(&world, 20, 20, true, operator).await;
    let on_drained = rounds.kept_while_leaving(&drained);
    println!("drain {drained}: {on_drained} of 20 open connections on it kept answering");
    // Connections closed: the drained SE leaves the list at its next report.
    // (The simulated TCP has no half-close: a connection its client closed
    // while the primary spliced it (an earlier request through `ask`) stays
    // open on the secondary until the SE's keep-alive idle timeout, 60 s; on
    // a real host the primary's FIN ends it at once.)
    let start = rt::now();
    while placed(&world, "vs-1").contains(&drained) {
        assert!(
            rt::now() - start < Duration::from_secs(70),
            "{drained} still placed after its connections closed: {:?}",
            world
                .controller()
                .unwrap()
                .ses()
                .into_iter()
                .find(|s| s.name == drained)
                .map(|s| (
                    s.stats_unix_ms,
                    s.stats.map(|st| st
                        .virtual_services
                        .iter()
                        .map(|v| (v.name.clone(), v.open_connections))
                        .collect::<Vec<_>>())
                ))
        );
        rt::sleep(PACE).await;
    }
    assert_eq!(placed(&world, "vs-1"), [primary, free]);
}

/// Active/active: cut the primary of vs-1 from the Controller (and, with
/// `isolated`, from the other SEs), with GARPs delivered or lost. Cut from
/// the Controller only, its peers vouch for it: nothing moves and it keeps
/// answering. Cut from its peers too, its lease runs out before the leader
/// makes the secondary primary. Either way, never two holders.
async fn active_active_primary_cut(garp_loss: bool, isolated: bool) {
    let world = build("ha_mode = \"elastic_active_active\"", 3, 1).await;
    serving(&world, &["vs-1"]).await;
    let start = rt::now();
    while placed(&world, "vs-1").len() < 2 {
        assert!(rt::now() - start < Duration::from_secs(10), "no secondary");
        rt::sleep(PACE).await;
    }
    rt::sleep(Duration::from_millis(500)).await;
    let list = placed(&world, "vs-1");
    let (primary, secondary) = (list[0].clone(), list[1].clone());
    let vip = world.vip_of("vs-1").unwrap().ip();
    world.cloud.set_garp_loss(garp_loss);
    cut_from_controller(&world, &primary, true);
    if isolated {
        cut_from_peers(&world, &primary, true);
    }
    let cut = rt::now();
    let (mut dual_samples, mut moved, mut failed) = (0, None, 0);
    while rt::now() - cut < MOVE_BOUND * 2 {
        if world.cloud.holders(vip).len() > 1 {
            dual_samples += 1;
        }
        if placed(&world, "vs-1").first() == Some(&secondary) {
            moved.get_or_insert(rt::now() - cut);
        }
        let answer = ask(&world, "vs-1").await;
        failed += usize::from(answer.is_none());
        if moved.is_some_and(|m| rt::now() - cut > m + MOVE_BOUND) {
            // Well after the move the cut primary never answers.
            assert_ne!(
                answer.as_deref(),
                Some(primary.as_str()),
                "the cut {primary} still answers"
            );
        }
        rt::sleep(PACE).await;
    }
    println!(
        "failover mode=active_active_cut garp_loss={garp_loss} isolated={isolated} moved_ms={:?} failed={failed} dual_samples={dual_samples}",
        moved.map(|m| m.as_millis())
    );
    assert_eq!(dual_samples, 0, "two holders of {vip}");
    if isolated {
        let moved = moved.unwrap_or_else(|| panic!("{secondary} never became primary"));
        assert!(moved <= MOVE_BOUND, "moved after {moved:?}");
    } else {
        assert!(moved.is_none(), "the partitioned primary lost vs-1");
        assert_eq!(placed(&world, "vs-1"), [primary.clone(), secondary.clone()]);
        // Only the Controller link is cut: hand-offs to the secondary work.
        assert_eq!(
            failed, 0,
            "requests failed while the primary was partitioned"
        );
    }
    world.cloud.set_garp_loss(false);
    cut_from_controller(&world, &primary, false);
    if isolated {
        cut_from_peers(&world, &primary, false);
    }
    rt::sleep(Duration::from_secs(5)).await;
    let holder = if isolated { &secondary } else { &primary };
    assert_eq!(world.cloud.holders(vip), std::slice::from_ref(holder));
    // With GARPs lost the client may still have the old primary's address
    // cached: the first request after it let the VIP go fails, the client
    // asks the segment again (a kernel marking the neighbour failed) and
    // the next one reaches the holder. Without the loss none fails.
    let failed = usize::from(ask(&world, "vs-1").await.is_none());
    assert!(
        failed <= usize::from(garp_loss && isolated),
        "a request failed after the heal"
    );
    assert!(ask(&world, "vs-1").await.is_some());
}

#[madsim::test]
async fn active_active_primary_cut_from_the_controller() {
    active_active_primary_cut(false, false).await;
}

#[madsim::test]
async fn active_active_primary_cut_while_garps_are_lost() {
    active_active_primary_cut(true, false).await;
}

#[madsim::test]
async fn active_active_primary_cut_from_everything_but_its_clients_while_garps_are_lost() {
    active_active_primary_cut(true, true).await;
}

/// A UDP virtual service beside vs-1, on the same group.
const UDP_VS: &str = "\n[[virtual_services]]\nname = \"vs-udp\"\nvip = \"10.0.100.9\"\nport = 99\npool = \"web\"\nse_group = \"elastic\"\nprotocol = \"udp\"\n";

/// One datagram from each of `ports` (a flow each) to `vip`, all at once;
/// per flow, the address the origin saw it come from (the SE that took
/// it), or `None` without an answer within 1 s.
async fn udp_round(world: &World, vip: SocketAddr, ports: Vec<u16>) -> Vec<Option<IpAddr>> {
    world
        .on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow::anyhow!("the VIP does not resolve"))?;
            let tasks: Vec<_> = ports
                .into_iter()
                .map(|p| {
                    rt::spawn(async move {
                        let me = SocketAddr::new(IpAddr::from(sim::world::CLIENT_IP), p);
                        let socket = rt::UdpSocket::bind(me).await.ok()?;
                        socket
                            .send_to(b"datagram", SocketAddr::new(owner, vip.port()))
                            .await
                            .ok()?;
                        let mut buf = vec![0u8; 512];
                        let (n, _) =
                            rt::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
                                .await
                                .ok()?
                                .ok()?;
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (_, from) = text.rsplit_once(" <- ")?;
                        from.parse::<SocketAddr>().ok().map(|a| a.ip())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.ok().flatten());
            }
            Ok(out)
        })
        .await
        .unwrap()
}

#[madsim::test]
async fn udp_scale_out_spreads_flows_and_a_killed_secondary_breaks_only_its_share() {
    let config = elastic_config(SCALE_OUT, 1) + UDP_VS;
    let world = World::builder()
        .config(&config)
        .ses(3)
        .build()
        .await
        .unwrap();
    serving(&world, &["vs-1"]).await;
    let start = rt::now();
    while placed(&world, "vs-udp").len() < 3 {
        assert!(
            rt::now() - start < Duration::from_secs(15),
            "vs-udp not on 3 SEs"
        );
        rt::sleep(PACE).await;
    }
    // The primary's config follows the placement within a push.
    rt::sleep(Duration::from_millis(500)).await;
    let list = placed(&world, "vs-udp");
    let vip = world.vip_of("vs-udp").unwrap();
    let name_of = |ip: Option<IpAddr>| {
        list.iter()
            .find(|se| ip.is_some() && world.cloud.ip_of(se) == ip)
            .cloned()
    };
    let round = |ports: Vec<u16>| async {
        let seen = udp_round(&world, vip, ports).await;
        seen.into_iter().map(name_of).collect::<Vec<_>>()
    };
    let ports: Vec<u16> = (41_000..41_060).collect();
    let first = round(ports.clone()).await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for se in &first {
        *counts
            .entry(se.clone().expect("every flow answered"))
            .or_default() += 1;
    }
    println!("UDP scale-out spread over {list:?}: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (se, n) in &counts {
        assert!(
            (8..=35).contains(n),
            "{se} took {n} of 60 flows: {counts:?}"
        );
    }
    // The same flows again: each on the SE it was on.
    assert_eq!(round(ports.clone()).await, first, "a flow moved");
    assert_eq!(
        world.cloud.holders(vip.ip()),
        [list[0].clone()],
        "only the primary holds the VIP"
    );

    // A secondary dies: its flows go unanswered, the others do not move.
    let victim = list[1 + (rt::random_u64() % 2) as usize].clone();
    world.cloud.kill(&victim).unwrap();
    let after = round(ports.clone()).await;
    let share = counts[&victim];
    let mut broken = 0;
    for (b, a) in first.iter().zip(&after) {
        if b.as_deref() == Some(victim.as_str()) {
            assert_eq!(a, &None, "a flow on the killed {victim} was answered");
            broken += 1;
        } else {
            assert_eq!(a, b, "a flow moved or broke: {first:?} -> {after:?}");
        }
    }
    assert_eq!(broken, share);

    // Placement finds it down (no other SE can take its place, so it keeps
    // it, listed as down) and the primary's next config leaves it out: its
    // flows start over on the others, the rest stay.
    let killed = rt::now();
    let down = format!("stays on {victim} (down)");
    while !world.controller().is_some_and(|c| {
        c.desired()
            .placement
            .problems
            .get("vs-udp")
            .is_some_and(|p| p.contains(&down))
    }) {
        assert!(
            rt::now() - killed < MOVE_BOUND * 3,
            "{victim} not found down"
        );
        rt::sleep(PACE).await;
    }
    rt::sleep(Duration::from_millis(500)).await;
    let healed = round(ports).await;
    for (b, h) in first.iter().zip(&healed) {
        let h = h
            .as_deref()
            .expect("every flow answered once the victim is dropped");
        if b.as_deref() == Some(victim.as_str()) {
            assert_ne!(h, victim);
        } else {
            assert_eq!(Some(h), b.as_deref(), "a flow on a live SE moved");
        }
    }
    println!("UDP scale-out kill {victim}: {broken} of 60 flows broken (its share: {share}), all answered again once placement found it down");
}
