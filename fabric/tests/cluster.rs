//! A Controller cluster on real loopback sockets and tokio: grow 1 -> 3
//! live, lose the leader, keep writing; refusals and fail-fast errors.

use std::sync::Arc;
use std::time::Duration;

use fabric::cluster::net::MembershipChange;
use fabric::cluster::{ClusterError, ClusterNode, Command, NodeAddr, NodeOptions, Refusal};
use fabric::model::Config;
use fabric::platform::{MemStorage, Storage};
use fabric::rt;

async fn node(id: u64, disk: &MemStorage) -> ClusterNode {
    let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = NodeAddr {
        raft: listener.local_addr().unwrap().to_string(),
        api: String::new(),
    };
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    ClusterNode::start(NodeOptions::new(id, addr, storage), listener)
        .await
        .unwrap()
}

fn put_origin(name: &str, port: u16, if_version: Option<u64>) -> Command {
    Command::Put {
        kind: "demo_origins".into(),
        name: name.into(),
        tenant: "admin".into(),
        body: serde_json::json!({"name": name, "listen": format!("127.0.0.1:{port}")}),
        if_version,
    }
}

async fn wait_leader(nodes: &[&ClusterNode], not: Option<u64>) -> u64 {
    let start = rt::now();
    loop {
        let leaders: Vec<u64> = nodes.iter().filter_map(|n| n.leader()).collect();
        if let Some(l) = leaders.first() {
            if Some(*l) != not && leaders.iter().all(|x| x == l) && leaders.len() == nodes.len() {
                return *l;
            }
        }
        assert!((rt::now() - start) < Duration::from_secs(10), "no leader");
        rt::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_three_lose_the_leader_and_keep_writing() {
    let disks: Vec<MemStorage> = (0..3).map(|_| MemStorage::new()).collect();
    let n1 = node(1, &disks[0]).await;
    n1.bootstrap(Config::example()).await.unwrap();
    let v1 = n1.desired().borrow().version;
    assert!(v1 > 0);

    // Live growth: two empty nodes join; nothing is lost.
    let n2 = node(2, &disks[1]).await;
    let n3 = node(3, &disks[2]).await;
    for n in [&n2, &n3] {
        let change = MembershipChange::Add {
            id: n.id(),
            addr: n.addr().clone(),
        };
        n1.change_membership(change).await.unwrap();
    }
    assert_eq!(n1.membership().0.len(), 3);
    let v2 = n2.write(put_origin("o9", 9009, Some(0))).await.unwrap();
    assert!(v2 > v1);
    let read = n3.read().await.unwrap();
    assert_eq!(read.objects.get("demo_origins", "o9").unwrap().version, v2);
    assert!(
        n3.desired().borrow().config.as_ref().unwrap().pools.len() == Config::example().pools.len()
    );

    // Conditional write on a stale version: refused, nothing changes.
    let e = n3
        .write(put_origin("o9", 9010, Some(v1)))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ClusterError::Refused(Refusal::Conflict { current: Some(v2) })
    );
    assert!(!e.may_have_applied());

    // Kill the leader; a new one accepts writes within 3 s.
    let nodes = [&n1, &n2, &n3];
    let leader = wait_leader(&nodes, None).await;
    let old = nodes.iter().find(|n| n.id() == leader).unwrap();
    old.shutdown().await;
    let killed = rt::now();
    let rest: Vec<&ClusterNode> = nodes.iter().copied().filter(|n| n.id() != leader).collect();
    let v3 = loop {
        match rest[0].write(put_origin("o9", 9011, None)).await {
            Ok(v) => break v,
            Err(e) => {
                assert!(!e.may_have_applied() || matches!(e, ClusterError::Unknown(_)));
                assert!((rt::now() - killed) < Duration::from_secs(10), "{e}");
            }
        }
    };
    let took = rt::now() - killed;
    eprintln!("write accepted {took:?} after the leader was stopped");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(v3 > v2);

    // Both survivors apply v3 (a follower learns that it is committed
    // only from the leader's next message, so it may lag a moment).
    let deadline = rt::now() + Duration::from_secs(5);
    while rest.iter().any(|n| n.desired().borrow().version < v3) {
        assert!(rt::now() < deadline, "a survivor never applied v{v3}");
        rt::sleep(Duration::from_millis(10)).await;
    }

    // One of two survivors down too: no quorum, writes fail fast and say so.
    let l2 = wait_leader(&rest, Some(leader)).await;
    let (gone, last): (Vec<&ClusterNode>, Vec<&ClusterNode>) =
        rest.iter().partition(|n| n.id() == l2);
    gone[0].shutdown().await;
    let t = rt::now();
    let e = last[0]
        .write(put_origin("o9", 9012, None))
        .await
        .unwrap_err();
    assert!(
        (rt::now() - t) < Duration::from_secs(5),
        "{:?}",
        (rt::now() - t)
    );
    assert!(
        matches!(
            e,
            ClusterError::NoLeader
                | ClusterError::NoQuorum(_)
                | ClusterError::Unknown(_)
                | ClusterError::Unreachable(_)
        ),
        "{e}"
    );
    // A local read still answers and says how stale it may be.
    let view = last[0].read_local();
    assert!(!view.linearizable);
    assert_eq!(view.objects.get("demo_origins", "o9").unwrap().version, v3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_state_and_a_bad_change_is_refused_whole() {
    let disk = MemStorage::new();
    let n1 = node(1, &disk).await;
    n1.bootstrap(Config::example()).await.unwrap();
    let v = n1.write(put_origin("o9", 9009, None)).await.unwrap();
    // Deleting a pool that virtual services use: refused with the reason.
    let pool = Config::example().pools[0].name.clone();
    let e = n1
        .write(Command::Delete {
            kind: "pools".into(),
            name: pool,
            if_version: None,
            tenant: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClusterError::Refused(Refusal::Invalid { .. })),
        "{e}"
    );
    n1.shutdown().await;

    // Power loss: only synced data survives, and everything acknowledged was synced.
    disk.crash(|_, _| 0);
    let n1 = node(1, &disk).await;
    n1.bootstrap(Config::example()).await.unwrap();
    wait_leader(&[&n1], None).await;
    let view = n1.read().await.unwrap();
    assert_eq!(view.objects.get("demo_origins", "o9").unwrap().version, v);
    assert!(n1.desired().borrow().version >= v);
}
