//! Golden traces: for a few fixed seeds, what each scenario did and saw
//! (faults injected and healed, leader and holder changes, outages, the
//! verdict) is an insta snapshot under `snapshots/` at the repository root,
//! so a change of behaviour shows in review as a diff of these files.
//!
//! A changed trace fails this test and leaves a `.snap.new` beside the
//! snapshot; accept it once it is understood with
//! `INSTA_UPDATE=always RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test golden`
//! (or `cargo insta review`). The seeds ignore `MADSIM_TEST_SEED`.
#![cfg(madsim)]

use std::time::Duration;

use chaos::scenario::{Params, Scenario};

/// The trace of `scenario` on `seed`, as `chaos replay` prints it, with the
/// seed's verdict and what it measured last.
fn golden(scenario: Scenario, seed: u64) -> String {
    // Each test runs on its own thread, outside any simulation: the runtime
    // below is the seed's whole world (as `chaos run` gives each seed).
    let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.set_time_limit(Duration::from_secs(600));
    let (result, trace) = rt.block_on(scenario.run(Params::default()));
    let mut lines = trace.lines();
    match result {
        Ok(o) => lines.push(format!(
            "passed: faults {:?}, requests {} ok / {} failed, outages {:?} ms, longest dual hold {} ms",
            o.faults, o.requests_ok, o.requests_failed, o.outages_ms, o.dual_hold_ms
        )),
        Err(e) => lines.push(format!("FAILED: {e:#}")),
    }
    lines.join("\n")
}

fn check(scenario: Scenario, seed: u64) {
    let trace = golden(scenario, seed);
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("./scripts/chaos.sh replay {seed} --scenario {}", scenario.name()),
    }, {
        insta::assert_snapshot!(format!("{}_seed_{seed}", scenario.name()), trace);
    });
}

#[test]
fn slice_seed_3() {
    check(Scenario::Slice, 3);
}

#[test]
fn pair_seed_4() {
    check(Scenario::Pair, 4);
}

#[test]
fn fabric_seed_44() {
    check(Scenario::Fabric, 44);
}

#[test]
fn fabric_seed_30() {
    // The first bug the full shape found (a deposed leader's placement).
    check(Scenario::Fabric, 30);
}
