//! Scale-out on this host, end to end: `fabric up` with an active/active,
//! auto-healing SE group. `up` starts one SE; the virtual service wants two,
//! so the Controller creates a second SE process through the local cloud
//! connector and makes it the secondary. The primary holds the VIP (a
//! loopback address) and hands a share of new connections to the
//! secondary's relay listener with a PROXY line; both SEs answer, and a
//! TLS-free HTTP client sees the second one's name in the SE header.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{serving_se, start_up, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_hands_connections_to_a_secondary_process() {
    let base = common::base_port();
    let dir = std::env::temp_dir().join(format!("fabric-scaleout-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fabric.toml");
    let group = "ha_mode = \"elastic_active_active\"\nauto_heal = true\n";
    std::fs::write(&path, common::config(base, group)).unwrap();
    let (child, _) = start_up(&path);
    let vip = common::vip(base);

    // Until the second SE is up and placed, the first serves everything;
    // then new connections (each from a port of its own) spread over both.
    let start = Instant::now();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    while counts.len() < 2 || counts.values().sum::<usize>() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no second SE answered within 30 s: {counts:?}"
        );
        match serving_se(vip).await {
            Some(se) => *counts.entry(se).or_default() += 1,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Now count a clean round.
    let mut round: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let se = serving_se(vip).await.expect("every request answered");
        *round.entry(se).or_default() += 1;
    }
    println!("scale-out on this host: {round:?}");
    assert_eq!(
        round.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default-auto-1", "se-1"],
        "{round:?}"
    );
    for (se, n) in &round {
        assert!(*n >= 10, "{se} answered only {n} of 60: {round:?}");
    }

    stop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}
