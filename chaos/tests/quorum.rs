//! The Controller quorum in the simulation: three nodes, leader loss by
//! crash (with torn unsynced writes) and by isolation, clocks running fast
//! and slow, all nodes restarting, live growth from one node to three, the
//! REST API on every node; SEs keep serving throughout.
//! Replay a failure with its seed:
//! `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test quorum`
//! Election times over many seeds: `./scripts/election-sim.sh 200`.
#![cfg(madsim)]

use std::time::Duration;

use fabric::cluster::net::MembershipChange;
use fabric::cluster::{ClusterError, Command};
use fabric::rt;
use sim::world::World;

const SETTLE: Duration = Duration::from_secs(15);

/// A pool no virtual service uses: a harmless object to write.
fn put_pool(n: u64) -> Command {
    Command::Put {
        kind: "pools".into(),
        name: format!("k{n}"),
        tenant: "admin".into(),
        body: serde_json::json!({"name": format!("k{n}"), "servers": [format!("10.0.3.{}:80", n % 250 + 1)]}),
        if_version: None,
    }
}

async fn three_node_world() -> World {
    let world = World::builder().controllers(3).build().await.unwrap();
    world
        .wait_until("the VIP serves", SETTLE, || async {
            matches!(world.http_get("/").await, Ok(r) if r.status == 200)
        })
        .await
        .unwrap();
    world
}

/// Write through node `i`; the version, or why not.
async fn write_at(world: &World, i: usize, cmd: Command) -> Result<u64, String> {
    match world
        .on_controller(i, |c| async move { c.node().write(cmd).await })
        .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Keep writing through the nodes in `via` until one write succeeds;
/// the simulated time it took.
async fn time_to_write(world: &World, via: &[usize], n: u64) -> Duration {
    let start = rt::now();
    loop {
        for &i in via {
            if write_at(world, i, put_pool(n)).await.is_ok() {
                return rt::now() - start;
            }
        }
        assert!(
            rt::now() - start < Duration::from_secs(30),
            "no write for 30 s"
        );
        rt::sleep(Duration::from_millis(20)).await;
    }
}

fn others(world: &World, not: usize) -> Vec<usize> {
    (0..world.controller_count())
        .filter(|&i| i != not)
        .collect()
}

#[madsim::test]
async fn a_new_leader_accepts_writes_within_3s_of_the_old_one_crashing() {
    let world = three_node_world().await;
    let leader = world.leader_index().expect("a leader");
    write_at(&world, leader, put_pool(1)).await.unwrap();
    // Crash with a random part of any unsynced write surviving (torn).
    let mut rng = rt::seeded_rng();
    world.kill_controller_at(leader, |_, tail| {
        use rand::Rng;
        rng.gen_range(0..=tail)
    });
    let took = time_to_write(&world, &others(&world, leader), 2).await;
    println!("ELECTION_MS crash {}", took.as_millis());
    assert!(took < Duration::from_secs(3), "new leader after {took:?}");
    // The SE served all along from its last config.
    assert_eq!(world.http_get("/").await.unwrap().status, 200);
    // The old leader comes back as a follower and catches up.
    world.restart_controller_at(leader);
    world
        .wait_until(
            "the restarted node applies the new write",
            SETTLE,
            || async {
                world
                    .controller_at(leader)
                    .is_some_and(|c| c.node().read_local().objects.get("pools", "k2").is_some())
            },
        )
        .await
        .unwrap();
}

#[madsim::test]
async fn an_isolated_leader_is_replaced_and_its_writes_fail_fast() {
    let world = three_node_world().await;
    let leader = world.leader_index().expect("a leader");
    world.isolate_controller_at(leader, true);
    let took = time_to_write(&world, &others(&world, leader), 1).await;
    println!("ELECTION_MS isolate {}", took.as_millis());
    assert!(took < Duration::from_secs(3), "new leader after {took:?}");
    // The isolated node cannot commit: its writes fail, quickly, and say so.
    let start = rt::now();
    let e = write_at(&world, leader, put_pool(2)).await.unwrap_err();
    let waited = rt::now() - start;
    assert!(waited <= Duration::from_secs(4), "{waited:?}: {e}");
    assert!(
        e.contains("no quorum")
            || e.contains("no leader")
            || e.contains("unknown")
            || e.contains("unreachable"),
        "{e}"
    );
    // Healed, it follows the new leader and sees the write made without it.
    world.isolate_controller_at(leader, false);
    world
        .wait_until(
            "the healed node applies the write made without it",
            SETTLE,
            || async {
                world.controller_at(leader).is_some_and(|c| {
                    !c.node().is_leader()
                        && c.node().read_local().objects.get("pools", "k1").is_some()
                })
            },
        )
        .await
        .unwrap();
    assert_eq!(world.http_get("/").await.unwrap().status, 200);
}

#[madsim::test]
async fn all_nodes_crash_and_restart_without_losing_acknowledged_writes() {
    let world = three_node_world().await;
    let mut acked = Vec::new();
    for n in 1..=20 {
        let via = (n as usize) % 3;
        if let Ok(v) = write_at(&world, via, put_pool(n)).await {
            acked.push((n, v));
        }
    }
    assert!(acked.len() >= 15, "{acked:?}");
    let mut rng = rt::seeded_rng();
    for i in 0..3 {
        world.kill_controller_at(i, |_, tail| {
            use rand::Rng;
            rng.gen_range(0..=tail)
        });
    }
    rt::sleep(Duration::from_secs(2)).await;
    // Headless: the SE keeps serving.
    assert_eq!(world.http_get("/").await.unwrap().status, 200);
    for i in 0..3 {
        world.restart_controller_at(i);
    }
    let view = loop {
        let r = world
            .on_controller(0, |c| async move { c.node().read().await })
            .await;
        if let Ok(Ok(v)) = r {
            break v;
        }
        rt::sleep(Duration::from_millis(100)).await;
    };
    for (n, v) in acked {
        let got = view
            .objects
            .get("pools", &format!("k{n}"))
            .map(|s| s.version);
        assert_eq!(got, Some(v), "acknowledged write k{n} at version {v}");
    }
}

#[madsim::test]
async fn one_node_grows_to_three_live_without_losing_config() {
    let world = World::builder()
        .controllers(3)
        .grow_from_one()
        .build()
        .await
        .unwrap();
    world
        .wait_until("the VIP serves", SETTLE, || async {
            matches!(world.http_get("/").await, Ok(r) if r.status == 200)
        })
        .await
        .unwrap();
    let v = write_at(&world, 0, put_pool(1)).await.unwrap();
    for i in [1usize, 2] {
        let addr = world.controller_at(i).unwrap().node().addr().clone();
        let id = i as u64 + 1;
        let voters = world
            .on_controller(0, move |c| async move {
                c.node()
                    .change_membership(MembershipChange::Add { id, addr })
                    .await
            })
            .await
            .unwrap()
            .unwrap();
        assert!(voters.contains(&id), "{voters:?}");
    }
    // The new nodes hold the whole config, and the cluster now survives losing node 1.
    world.kill_controller_at(0, |_, _| 0);
    let took = time_to_write(&world, &[1, 2], 2).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    let got = world
        .on_controller(1, |c| async move { c.node().read().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.objects.get("pools", "k1").map(|s| s.version), Some(v));
    assert!(got.objects.get("virtual_services", "app").is_some());
    // Removing a node works the same way (node 1 is down: remove it).
    let voters = world
        .on_controller(1, |c| async move {
            c.node()
                .change_membership(MembershipChange::Remove { id: 1 })
                .await
        })
        .await
        .unwrap();
    match voters {
        Ok(v) => assert_eq!(v.len(), 2, "{v:?}"),
        Err(ClusterError::Unknown(e)) => panic!("removal not committed: {e}"),
        Err(e) => panic!("{e}"),
    }
}

/// Four clients write, conditionally write, delete and read three keys
/// through random nodes while nodes crash (torn tails), restart and get
/// isolated; the acknowledged history must be linearizable, and the SE's
/// served version never goes backwards.
#[madsim::test]
async fn concurrent_operations_under_faults_are_linearizable() {
    use rand::Rng;
    use sim::lincheck::{check, CheckResult, History, ObjectStore, StoreInput, StoreOutput};
    use std::sync::Mutex;

    let world = three_node_world().await;
    let base = rt::now();
    let ns = || (rt::now() - base).as_nanos() as u64;
    let history: Mutex<History<ObjectStore, String>> = Mutex::new(History::new(20_000));
    let counter = Mutex::new(0u64);
    let keys = ["a", "b", "c", "d", "e", "f"];
    let run_for = Duration::from_secs(20);

    let client = |id: u64| {
        let (world, history, counter, keys) = (&world, &history, &counter, &keys);
        async move {
            let mut rng = rt::seeded_rng();
            while rt::now() - base < run_for {
                let key = keys[rng.gen_range(0..keys.len())].to_string();
                let node = rng.gen_range(0..world.controller_count());
                let last_version = world.controller_at(node).and_then(|c| {
                    c.node()
                        .read_local()
                        .objects
                        .get("pools", &key)
                        .map(|s| s.version)
                });
                let (input, cmd) = match rng.gen_range(0..10) {
                    0..=3 => (StoreInput::Get, None),
                    4..=7 => {
                        let value = {
                            let mut c = counter.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        let if_version =
                            (rng.gen_range(0..10) == 7).then(|| last_version.unwrap_or(0));
                        let body = serde_json::json!({"name": key, "servers": [format!("10.0.3.1:{}", 1000 + value)]});
                        let cmd = Command::Put {
                            kind: "pools".into(),
                            name: key.clone(),
                            tenant: "admin".into(),
                            body,
                            if_version,
                        };
                        (StoreInput::Put { value, if_version }, Some(cmd))
                    }
                    _ => {
                        let if_version = rng.gen_bool(0.5).then(|| last_version.unwrap_or(0));
                        let cmd = Command::Delete {
                            kind: "pools".into(),
                            name: key.clone(),
                            if_version,
                            tenant: None,
                        };
                        (StoreInput::Delete { if_version }, Some(cmd))
                    }
                };
                let is_delete = matches!(input, StoreInput::Delete { .. });
                let op = history
                    .lock()
                    .unwrap()
                    .call(id, key.clone(), input, ns())
                    .unwrap();
                let output = match cmd {
                    None => {
                        let k = key.clone();
                        match world
                            .on_controller(node, |c| async move { c.node().read().await })
                            .await
                        {
                            Ok(Ok(view)) => {
                                Some(StoreOutput::Got(view.objects.get("pools", &k).map(|s| {
                                    let server = s.body["servers"][0].as_str().unwrap_or_default();
                                    let port: u64 =
                                        server.rsplit(':').next().unwrap().parse().unwrap();
                                    (port - 1000, s.version)
                                })))
                            }
                            _ => None, // a failed read has no effect
                        }
                    }
                    Some(cmd) => match world
                        .on_controller(node, |c| async move { c.node().write(cmd).await })
                        .await
                    {
                        Ok(Ok(_)) if is_delete => Some(StoreOutput::Deleted),
                        Ok(Ok(version)) => Some(StoreOutput::Put { version }),
                        Ok(Err(ClusterError::Refused(fabric::cluster::Refusal::Conflict {
                            ..
                        }))) => Some(StoreOutput::Conflict),
                        Ok(Err(ClusterError::Refused(fabric::cluster::Refusal::NotFound))) => {
                            Some(StoreOutput::NotFound)
                        }
                        Ok(Err(e)) if !e.may_have_applied() => None,
                        _ => Some(StoreOutput::Unknown),
                    },
                };
                {
                    let mut h = history.lock().unwrap();
                    match output {
                        Some(out) => h.ret(op, out, ns()).unwrap(),
                        None => h.discard(op).unwrap(),
                    }
                }
                rt::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
            }
        }
    };

    let faults = async {
        let mut rng = rt::seeded_rng();
        while rt::now() - base < run_for {
            rt::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
            let i = rng.gen_range(0..world.controller_count());
            let down = Duration::from_millis(rng.gen_range(200..3000));
            match rng.gen_range(0..3) {
                0 => {
                    world.kill_controller_at(i, |_, tail| rt::random_u64() as usize % (tail + 1));
                    rt::sleep(down).await;
                    world.restart_controller_at(i);
                }
                1 => {
                    world.isolate_controller_at(i, true);
                    rt::sleep(down).await;
                    world.isolate_controller_at(i, false);
                }
                _ => {
                    // Its clock runs between half and twice true speed for a while.
                    world.skew_controller_at(i, rng.gen_range(0.5..2.0));
                    rt::sleep(down * 2).await;
                    world.skew_controller_at(i, 1.0);
                }
            }
        }
    };
    tokio::join!(client(1), client(2), client(3), client(4), faults);

    let history = history.into_inner().unwrap();
    println!("LINCHECK ops {}", history.len());
    assert!(
        history.len() > 100,
        "only {} operations completed",
        history.len()
    );
    match check(&history, 5_000_000) {
        CheckResult::Ok => println!("LINCHECK ok"),
        CheckResult::Timeout { key, steps } => {
            println!("LINCHECK inconclusive on {key} after {steps} steps")
        }
        CheckResult::Illegal { key, explanation } => {
            panic!("not linearizable on key {key}:\n{explanation}")
        }
    }
    let regressions = world.cloud.applied_regressions();
    assert!(regressions.is_empty(), "{regressions:?}");
}

#[madsim::test]
async fn a_new_leader_is_elected_in_time_while_clocks_run_fast_and_slow() {
    let world = three_node_world().await;
    let mut rng = rt::seeded_rng();
    for i in 0..world.controller_count() {
        use rand::Rng;
        let rate = rng.gen_range(0.5..2.0);
        world.skew_controller_at(i, rate);
        // The node's clock (what its Raft timers read) runs at that rate.
        let seen = world
            .on_controller(i, |_| async {
                let (t0, n0) = (rt::now(), rt::skew::now());
                rt::sleep(Duration::from_secs(1)).await;
                (rt::skew::now() - n0).as_secs_f64() / (rt::now() - t0).as_secs_f64()
            })
            .await
            .unwrap();
        assert!(
            (seen - rate).abs() < 0.01,
            "node {i}: rate {seen}, set {rate}"
        );
    }
    rt::sleep(Duration::from_secs(5)).await;
    let leader = world
        .leader_index()
        .expect("a leader while clocks are skewed");
    write_at(&world, leader, put_pool(1)).await.unwrap();
    world.kill_controller_at(leader, |_, tail| tail);
    let took = time_to_write(&world, &others(&world, leader), 2).await;
    println!("ELECTION_MS skew {}", took.as_millis());
    // A clock at half speed doubles the election timeout, and a node whose
    // log is behind (it missed the last write) with a fast clock keeps
    // starting elections it cannot win, each costing the others a round
    // (Raft without PreVote; seed 246: four rounds, 3.76 s).
    assert!(took < Duration::from_secs(5), "new leader after {took:?}");
    assert_eq!(world.http_get("/").await.unwrap().status, 200);
}

#[madsim::test]
async fn the_api_answers_on_any_node_and_fails_fast_without_a_quorum() {
    use serde_json::json;
    let world = three_node_world().await;
    let token = world.admin_token(0).await.unwrap();
    // A token works on a node once it has applied it.
    world
        .wait_until("every node knows the token", SETTLE, || async {
            for i in 0..3 {
                match world.api(i, "GET", "/api/v1/cluster", &token, None).await {
                    Ok(r) if r.status == 200 => {}
                    _ => return false,
                }
            }
            true
        })
        .await
        .unwrap();
    let leader = world.leader_index().expect("a leader");
    let follower = others(&world, leader)[0];

    // A write through a follower is forwarded to the leader; every node reads it.
    let pool = json!({"name": "api-pool", "servers": ["10.0.3.9:80"]});
    let r = world
        .api(follower, "POST", "/api/v1/pools", &token, Some(pool))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let version = r.body["version"].as_u64().unwrap();
    for i in 0..3 {
        let r = world
            .api(i, "GET", "/api/v1/pools/api-pool", &token, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "node {i}: {:?}", r.body);
        assert_eq!(r.body["version"].as_u64(), Some(version));
        assert_eq!(r.headers["x-fabric-read"], "linearizable");
    }

    // The other two nodes die: no quorum. Writes and linearizable reads
    // fail fast with 503; a local read answers and says how stale it is.
    for i in others(&world, follower) {
        world.kill_controller_at(i, |_, tail| tail);
    }
    rt::sleep(Duration::from_secs(2)).await;
    let start = rt::now();
    let pool = json!({"name": "api-pool-2", "servers": ["10.0.3.10:80"]});
    let r = world
        .api(
            follower,
            "POST",
            "/api/v1/pools",
            &token,
            Some(pool.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("nothing was written"));
    assert!(rt::now() - start <= Duration::from_secs(4));
    let r = world
        .api(follower, "GET", "/api/v1/pools/api-pool", &token, None)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    let r = world
        .api(
            follower,
            "GET",
            "/api/v1/pools/api-pool?consistency=local",
            &token,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-fabric-read"], "local");
    let stale: u64 = r.headers["x-fabric-stale-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(stale >= 2000, "stale {stale} ms after 2 s without a leader");
    // The SE serves all along.
    assert_eq!(world.http_get("/").await.unwrap().status, 200);

    // Back up: the write goes through again.
    for i in others(&world, follower) {
        world.restart_controller_at(i);
    }
    world
        .wait_until("a write through the API succeeds again", SETTLE, || async {
            matches!(
                world.api(follower, "PUT", "/api/v1/pools/api-pool-2", &token, Some(pool.clone())).await,
                Ok(r) if r.status == 201 || r.status == 200
            )
        })
        .await
        .unwrap();
}
