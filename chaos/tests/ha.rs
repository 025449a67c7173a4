//! Legacy active/standby in the simulation: a pair (se-1 priority 150, se-2
//! priority 100; whichever is ready first becomes active) holding one VIP, the Controller arbitrating, a client that
//! finds the VIP's holder through its ARP cache and tags every answer with
//! the SE that sent it (BENCHMARKS.md invariant 1). Each test runs per seed:
//! - the active is killed at a time drawn from the seed, with the `fast`
//!   and the `default` profile: the standby serves within the profile's
//!   bound, and the old active, restarted, stays standby;
//! - the link between the pair is cut (both ways, or one way): nothing
//!   moves;
//! - the active is cut from the Controller only: nothing moves;
//! - the active is cut from the pair and the Controller (not from the
//!   client): it steps down before the standby takes over, so the client
//!   never has two SEs answering at once;
//! - the takeover's GARPs to the client are lost: the client's requests to
//!   the dead active fail, it asks the segment again, the new active
//!   answers;
//! - the link between the pair flaps for 10 s: nothing moves.
//!
//! Replay: `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test ha`
#![cfg(madsim)]

use std::time::Duration;

use fabric::rt;
use sim::world::{pair_config, World};

/// A request the client gives up on after this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Time between two requests of the client.
const PACE: Duration = Duration::from_millis(20);

/// The world once one SE serves the VIP, and the names of the active and
/// the standby. Usually se-1 (preferred) is active; se-2 is when it was
/// ready first while se-1 was still starting (and there is no preemption).
async fn pair() -> (World, &'static str, &'static str) {
    pair_with("fast").await
}

async fn pair_with(profile: &str) -> (World, &'static str, &'static str) {
    let world = World::builder()
        .config(&pair_config(profile))
        .ses(2)
        .build()
        .await
        .unwrap();
    let start = rt::now();
    let active = loop {
        if let Some(se) = ask(&world).await {
            break se;
        }
        assert!(
            rt::now() - start < Duration::from_secs(30),
            "no SE serves the VIP after 30 s"
        );
        rt::sleep(Duration::from_millis(50)).await;
    };
    match active.as_str() {
        "se-1" => (world, "se-1", "se-2"),
        _ => (world, "se-2", "se-1"),
    }
}

/// One request: the SE that answered, or None. A failed one makes the
/// client ask the segment who holds the VIP before the next.
async fn ask(world: &World) -> Option<String> {
    match world.http_get_within("/", REQUEST_TIMEOUT).await {
        Ok(reply) if reply.status == 200 => reply.se,
        _ => None,
    }
}

/// What the client saw over a stretch of requests.
#[derive(Debug, Default)]
struct Seen {
    /// (ms since the start of the stretch when the answer came, the SE that
    /// answered or None).
    answers: Vec<(u64, Option<String>)>,
}

impl Seen {
    /// Requests for `d`, every `PACE`.
    async fn watch(world: &World, d: Duration) -> Seen {
        Self::watch_killing(world, d, None).await
    }

    /// [`watch`](Self::watch), killing SE `kill.1` at `kill.0` ms.
    async fn watch_killing(world: &World, d: Duration, mut kill: Option<(u64, &str)>) -> Seen {
        let start = rt::now();
        let mut seen = Seen::default();
        while rt::now() - start < d {
            let at = (rt::now() - start).as_millis() as u64;
            if let Some((_, se)) = kill.filter(|(when, _)| at >= *when) {
                world.cloud.kill(se).unwrap();
                kill = None;
            }
            // When the answer came, not when the request left: a request
            // can wait in ARP resolution until the takeover's GARP arrives.
            let reply = ask(world).await;
            seen.answers
                .push(((rt::now() - start).as_millis() as u64, reply));
            rt::sleep(PACE).await;
        }
        seen
    }

    /// Invariant 1 as the client sees it: once an SE other than the first
    /// one answered, the first never answers again (no flip-flop between
    /// two holders).
    fn holders_in_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::new();
        for se in self.answers.iter().filter_map(|(_, s)| s.as_deref()) {
            if order.last() != Some(&se) {
                order.push(se);
            }
        }
        order
    }

    /// First answer after `from` ms by `se`, in ms.
    fn first_from(&self, se: &str, from: u64) -> Option<u64> {
        self.answers
            .iter()
            .find(|(at, s)| *at >= from && s.as_deref() == Some(se))
            .map(|(at, _)| *at)
    }

    fn failed(&self) -> usize {
        self.answers.iter().filter(|(_, s)| s.is_none()).count()
    }
}

/// Kill the active at a time drawn from the seed; the standby must serve
/// within `bound_ms` of the kill, the client must see one hand-over, and
/// the old active, restarted, must stay standby. Prints the figures the
/// failover report collects (`scripts/ha-sim.sh`).
async fn kill_the_active(profile: &str, bound_ms: u64, watch: Duration) {
    let (world, active, standby) = pair_with(profile).await;
    let kill_at = 500 + rt::random_u64() % 3_000;
    let seen = Seen::watch_killing(&world, watch, Some((kill_at, active))).await;
    let first = seen
        .first_from(standby, kill_at)
        .unwrap_or_else(|| panic!("{standby} never answered: {:?}", seen.answers));
    let last_ok = seen
        .answers
        .iter()
        .filter(|(at, s)| *at < kill_at && s.is_some())
        .map(|(at, _)| *at)
        .max()
        .unwrap_or(0);
    println!(
        "failover profile={profile} kill_to_serve_ms={} outage_ms={} failed_requests={}",
        first - kill_at,
        first - last_ok,
        seen.failed()
    );
    assert!(
        first - kill_at <= bound_ms,
        "{profile}: failover took {} ms",
        first - kill_at
    );
    assert_eq!(
        seen.holders_in_order(),
        [active, standby],
        "{:?}",
        seen.answers
    );

    // The old active comes back: it listens, hears the new one, stays standby.
    world.cloud.restart(active).unwrap();
    let seen = Seen::watch(&world, Duration::from_secs(5)).await;
    assert_eq!(seen.holders_in_order(), [standby], "{:?}", seen.answers);
    assert_eq!(seen.failed(), 0, "{:?}", seen.answers);
}

#[madsim::test]
async fn killing_the_active_moves_the_vip_within_the_fast_bound() {
    // Dead after 300 ms of silence, a grant, the first GARP, the timeout
    // of the request in flight when it happened.
    kill_the_active("fast", 1_000, Duration::from_secs(6)).await;
}

#[madsim::test]
async fn killing_the_active_moves_the_vip_in_about_nine_seconds_by_default() {
    // Dead after 9 s of silence (6-9 s after a kill, by where in the beat
    // cycle it falls), then as above.
    kill_the_active("default", 10_000, Duration::from_secs(14)).await;
}

#[madsim::test]
async fn a_cut_between_the_pair_or_to_the_controller_moves_nothing() {
    let (world, active, standby) = pair().await;
    let se1 = world.cloud.node_id(active).unwrap();
    let se2 = world.cloud.node_id(standby).unwrap();
    let ctl = world.controller_node(0);
    // Which cut, from the seed: both ways between the pair, one way either
    // way, or the active from the Controller (both ways).
    let links = match rt::random_u64() % 4 {
        0 => vec![(se1, se2), (se2, se1)],
        1 => vec![(se1, se2)],
        2 => vec![(se2, se1)],
        _ => vec![(se1, ctl), (ctl, se1)],
    };
    println!("cut: {links:?}");
    for &(a, b) in &links {
        world.clog_link(a, b, true);
    }
    let seen = Seen::watch(&world, Duration::from_secs(5)).await;
    assert_eq!(seen.holders_in_order(), [active], "{:?}", seen.answers);
    assert_eq!(seen.failed(), 0, "{:?}", seen.answers);
    for &(a, b) in &links {
        world.clog_link(a, b, false);
    }
    let seen = Seen::watch(&world, Duration::from_secs(3)).await;
    assert_eq!(seen.holders_in_order(), [active], "{:?}", seen.answers);
}

#[madsim::test]
async fn an_isolated_active_steps_down_before_the_standby_takes_over() {
    let (world, active, standby) = pair().await;
    let se1 = world.cloud.node_id(active).unwrap();
    let se2 = world.cloud.node_id(standby).unwrap();
    let ctl = world.controller_node(0);
    // The active loses the pair and the Controller, but the client still reaches
    // it: only its own step-down keeps two SEs from answering.
    for (a, b) in [(se1, se2), (se2, se1), (se1, ctl), (ctl, se1)] {
        world.clog_link(a, b, true);
    }
    let seen = Seen::watch(&world, Duration::from_secs(4)).await;
    let order = seen.holders_in_order();
    assert_eq!(order, [active, standby], "{:?}", seen.answers);
    let last_se1 = seen
        .answers
        .iter()
        .rev()
        .find(|(_, s)| s.as_deref() == Some(active))
        .map(|(at, _)| *at)
        .unwrap();
    let first_se2 = seen.first_from(standby, 0).unwrap();
    println!("isolated active: last answer {last_se1} ms, standby's first {first_se2} ms");
    assert!(last_se1 < first_se2);
    // Healed: the old active hears the new one's higher epoch, stays standby.
    for (a, b) in [(se1, se2), (se2, se1), (se1, ctl), (ctl, se1)] {
        world.clog_link(a, b, false);
    }
    let seen = Seen::watch(&world, Duration::from_secs(3)).await;
    assert_eq!(seen.holders_in_order(), [standby], "{:?}", seen.answers);
}

#[madsim::test]
async fn lost_garps_delay_the_client_but_never_split_it() {
    // Every frame from the standby to the client is lost from the kill until
    // 800 ms after it: the takeover's GARPs (3, 100 ms apart) do not arrive.
    // The client's requests to the dead active fail; it then asks the
    // segment, and the new active answers.
    let (world, active, standby) = pair().await;
    let to = world.cloud.node_id(standby).unwrap();
    let client = world.client_node();
    let kill_at = 500 + rt::random_u64() % 1500;
    let start = rt::now();
    let mut seen = Seen::default();
    let mut killed = false;
    let mut healed = false;
    while rt::now() - start < Duration::from_secs(5) {
        let at = (rt::now() - start).as_millis() as u64;
        if !killed && at >= kill_at {
            world.clog_link(to, client, true);
            world.cloud.kill(active).unwrap();
            killed = true;
        }
        if killed && !healed && at >= kill_at + 800 {
            world.clog_link(to, client, false);
            healed = true;
        }
        seen.answers.push((at, ask(&world).await));
        rt::sleep(PACE).await;
    }
    let first = seen
        .first_from(standby, kill_at)
        .unwrap_or_else(|| panic!("{standby} never answered: {:?}", seen.answers));
    println!(
        "GARPs lost: the standby answered {} ms after the kill",
        first - kill_at
    );
    assert!(first >= kill_at + 800, "answered through a cut link?");
    assert!(first - kill_at <= 1_500, "{} ms", first - kill_at);
    assert_eq!(
        seen.holders_in_order(),
        [active, standby],
        "{:?}",
        seen.answers
    );
}

#[madsim::test]
async fn a_flapping_pair_link_moves_nothing() {
    // The link between the pair goes down and up every 50-400 ms for 10 s
    // (either direction, or both), while both still reach the Controller.
    let (world, active, standby) = pair().await;
    let a = world.cloud.node_id(active).unwrap();
    let b = world.cloud.node_id(standby).unwrap();
    let start = rt::now();
    let mut seen = Seen::default();
    let mut next_flip = 0;
    let mut cut = [false; 2];
    while rt::now() - start < Duration::from_secs(10) {
        let at = (rt::now() - start).as_millis() as u64;
        if at >= next_flip {
            let which = (rt::random_u64() % 2) as usize;
            cut[which] = !cut[which];
            let (from, to) = if which == 0 { (a, b) } else { (b, a) };
            world.clog_link(from, to, cut[which]);
            next_flip = at + 50 + rt::random_u64() % 350;
        }
        seen.answers.push((at, ask(&world).await));
        rt::sleep(PACE).await;
    }
    world.clog_link(a, b, false);
    world.clog_link(b, a, false);
    assert_eq!(seen.holders_in_order(), [active], "{:?}", seen.answers);
    assert_eq!(seen.failed(), 0, "{:?}", seen.answers);
}
