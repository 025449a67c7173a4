//! A Controller leader that stops being scheduled (a stopped VM, a long GC
//! pause) while no other node can be elected wakes up still leading, with
//! a quorum, and finds every SE silent because it did not run. It must not
//! move anything (docs/placement.md, "Stalls"; found by ten-minute seeds 19,
//! 44 and 60 of `fabric_under_faults`, where it moved a virtual service off
//! a healthy SE at the moment it woke). Replay a failure with
//! `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test stall`
#![cfg(madsim)]

use std::time::Duration;

use chaos::scenario::FABRIC_CONFIG;
use fabric::rt;
use sim::world::World;

#[madsim::test]
async fn a_leader_paused_while_none_could_replace_it_moves_nothing_on_waking() {
    let world = World::builder()
        .config(FABRIC_CONFIG)
        .controllers(3)
        .ses(4)
        .build()
        .await
        .unwrap();
    let vss = ["vs-1", "vs-2"];
    for vs in vss {
        world
            .wait_until(
                "every virtual service serves",
                Duration::from_secs(30),
                || async {
                    matches!(world.http_get_vs_within(vs, "/", Duration::from_millis(500)).await,
                    Ok(r) if r.status == 200)
                },
            )
            .await
            .unwrap();
    }
    // Long enough into its leadership that a new leader's patience with
    // the SEs is over.
    rt::sleep(Duration::from_secs(8)).await;
    let leader = world.leader_index().unwrap();
    // What each Controller up has applied (a leader change on waking is
    // allowed: the other node may have started an election meanwhile).
    let placed = |world: &World| {
        (0..world.controller_count())
            .filter_map(|i| world.controller_at(i))
            .map(|c| {
                let p = c.desired().placement.clone();
                vss.map(|vs| p.of(vs).to_vec())
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let before = placed(&world);
    assert_eq!(before.len(), 1, "{before:?}");
    // One follower down: the other cannot be elected alone.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    world.kill_controller_at(follower, |_, _| 0);
    let handle = madsim::runtime::Handle::current();
    handle.pause(world.controller_node(leader));
    // Past every SE's session liveness and the detection time.
    rt::sleep(Duration::from_secs(4)).await;
    handle.resume(world.controller_node(leader));
    let vips: Vec<_> = vss.map(|vs| world.vip_of(vs).unwrap().ip()).to_vec();
    let until = rt::now() + Duration::from_secs(12);
    while rt::now() < until {
        assert!(
            placed(&world).is_subset(&before),
            "the woken leader moved a virtual service"
        );
        for vip in &vips {
            assert!(world.cloud.holders(*vip).len() <= 1, "two holders of {vip}");
        }
        rt::sleep(Duration::from_millis(50)).await;
    }
    let c = world.controller().unwrap();
    assert!(c.node().is_leader());
    assert!(
        c.ses().iter().filter(|s| s.connected).count() == 4,
        "every SE found it again: {:?}",
        c.ses()
    );
}
