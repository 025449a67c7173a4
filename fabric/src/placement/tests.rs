use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

/// A config with one group (extra TOML keys in `group`) and `n` virtual
/// services `vs-1`.. in it.
fn config(group: &str, n: usize) -> Config {
    let mut text = format!(
        "[controller]\nlisten = \"127.0.0.1:7000\"\n[[se_groups]]\nname = \"g\"\n{group}\n\
         [[pools]]\nname = \"p\"\nservers = [{{ addr = \"127.0.0.1:80\" }}]\n"
    );
    for i in 1..=n {
        text += &format!(
            "[[virtual_services]]\nname = \"vs-{i}\"\nse_group = \"g\"\nvip = \"10.0.0.{i}\"\nport = 80\npool = \"p\"\n"
        );
    }
    Config::parse(&text).unwrap()
}

fn ses(up: &[bool]) -> Vec<SeView> {
    up.iter()
        .enumerate()
        .map(|(i, &up)| SeView {
            name: format!("se-{}", i + 1),
            group: "g".into(),
            up,
            partitioned: false,
            draining: false,
            busy: Default::default(),
            cpu_percent: None,
        })
        .collect()
}

fn load(p: &Placement, se: &str) -> usize {
    p.virtual_services
        .values()
        .filter(|l| l.iter().any(|s| s == se))
        .count()
}

#[test]
fn n_plus_m_spreads_over_n_and_keeps_the_buffer_free() {
    let c = config("", 4);
    let p = place(&c, &ses(&[true, true, true]), &Placement::default());
    // 3 SEs, M = 1: two carry two each, the third stays free.
    assert_eq!(load(&p, "se-1"), 2);
    assert_eq!(load(&p, "se-2"), 2);
    assert_eq!(load(&p, "se-3"), 0);
    let g = &p.groups["g"];
    assert_eq!(
        (g.ses_up, g.ses_used, g.ses_free, g.ses_wanted),
        (3, 2, 1, 3)
    );
    assert_eq!(g.note, None);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
}

#[test]
fn compact_fills_one_se_at_a_time() {
    let c = config("compact = true\nmax_vs_per_se = 3\nbuffer_ses = 0", 4);
    let p = place(&c, &ses(&[true, true, true]), &Placement::default());
    assert_eq!(load(&p, "se-1"), 3);
    assert_eq!(load(&p, "se-2"), 1);
    assert_eq!(load(&p, "se-3"), 0);
}

#[test]
fn distributed_without_buffer_uses_every_se() {
    let c = config("buffer_ses = 0", 6);
    let p = place(&c, &ses(&[true, true, true]), &Placement::default());
    for se in ["se-1", "se-2", "se-3"] {
        assert_eq!(load(&p, se), 2, "{p:?}");
    }
}

#[test]
fn a_failed_se_moves_only_its_own_virtual_services() {
    let c = config("", 4);
    let before = place(&c, &ses(&[true, true, true]), &Placement::default());
    let after = place(&c, &ses(&[false, true, true]), &before);
    for (vs, list) in &before.virtual_services {
        if list[0] != "se-1" {
            assert_eq!(after.of(vs), list.as_slice(), "{vs} moved");
        } else {
            // The buffer SE takes what se-1 carried.
            assert_eq!(after.of(vs), ["se-3".to_string()], "{vs}");
        }
    }
    let g = &after.groups["g"];
    assert_eq!(g.ses_free, 0);
    assert_eq!(g.ses_wanted, 3, "two used plus the buffer: heal one");
    assert!(
        g.note.as_deref().unwrap().contains("spare capacity"),
        "{g:?}"
    );
}

#[test]
fn the_primary_goes_and_the_secondary_takes_over_in_active_active() {
    let c = config("ha_mode = \"elastic_active_active\"", 2);
    let before = place(&c, &ses(&[true, true, true]), &Placement::default());
    for list in before.virtual_services.values() {
        assert_eq!(list.len(), 2, "{before:?}");
    }
    let primary = before.of("vs-1")[0].clone();
    let secondary = before.of("vs-1")[1].clone();
    let mut view = ses(&[true, true, true]);
    view.iter_mut().find(|s| s.name == primary).unwrap().up = false;
    let after = place(&c, &view, &before);
    let list = after.of("vs-1");
    assert_eq!(list[0], secondary, "the secondary becomes primary");
    assert_eq!(list.len(), 2);
    assert!(!list.contains(&primary));
}

#[test]
fn limits_explain_why_nothing_fits() {
    let c = config("max_vs_per_se = 1\nbuffer_ses = 0", 3);
    let mut view = ses(&[true, false]);
    view.push(SeView {
        name: "se-3".into(),
        group: "g".into(),
        up: true,
        partitioned: false,
        draining: false,
        busy: Default::default(),
        cpu_percent: Some(95),
    });
    let p = place(&c, &view, &Placement::default());
    assert_eq!(p.of("vs-1"), ["se-1".to_string()]);
    assert!(p.of("vs-2").is_empty());
    let why = &p.problems["vs-2"];
    assert!(why.contains("se-1: full (1 of max_vs_per_se 1)"), "{why}");
    assert!(why.contains("se-2: down"), "{why}");
    assert!(
        why.contains("se-3: CPU 95% above max_cpu_percent 80"),
        "{why}"
    );
    assert!(p.groups["g"].note.is_some());

    let c = config("se_memory_mb = 256\nvs_memory_mb = 200\nbuffer_ses = 0", 2);
    let p = place(&c, &ses(&[true]), &Placement::default());
    let why = &p.problems["vs-2"];
    assert!(
        why.contains("se-1: memory (200 of se_memory_mb 256 used, one more needs 200)"),
        "{why}"
    );

    let p = place(&c, &[], &Placement::default());
    assert!(
        p.problems["vs-1"].contains("has no SEs"),
        "{:?}",
        p.problems
    );
}

#[test]
fn a_stranded_virtual_service_waits_on_its_down_se() {
    let c = config("max_vs_per_se = 1\nbuffer_ses = 0", 2);
    let before = place(&c, &ses(&[true, true]), &Placement::default());
    assert!(before.problems.is_empty());
    let after = place(&c, &ses(&[false, true]), &before);
    // se-2 is full: vs-1 stays on se-1 and says so.
    assert_eq!(after.of("vs-1"), ["se-1".to_string()]);
    assert!(
        after.problems["vs-1"].starts_with("stays on se-1 (down)"),
        "{:?}",
        after.problems
    );
    // Back up: nothing moves.
    let back = place(&c, &ses(&[true, true]), &after);
    assert_eq!(back.virtual_services, before.virtual_services);
    assert!(back.problems.is_empty());
}

#[test]
fn draining_moves_what_it_carries_once_its_connections_end() {
    let c = config("buffer_ses = 0", 2);
    let before = place(&c, &ses(&[true]), &Placement::default());
    let mut view = ses(&[true, true]);
    view[0].draining = true;
    view[0].busy.insert("vs-1".into());
    let after = place(&c, &view, &before);
    // vs-1 has connections open on se-1: its replacement goes first (it
    // holds the VIP), se-1 stays last until they end; vs-2 moves at once.
    assert_eq!(after.of("vs-1"), ["se-2".to_string(), "se-1".to_string()]);
    assert_eq!(after.of("vs-2"), ["se-2".to_string()]);
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    // Its connections ended: gone from the list.
    view[0].busy.clear();
    let done = place(&c, &view, &after);
    assert_eq!(done.of("vs-1"), ["se-2".to_string()]);
    // The only SE, draining, idle: it keeps serving, and says why.
    let alone = place(&c, &view[..1], &before);
    assert_eq!(alone.of("vs-2"), ["se-1".to_string()]);
    assert!(
        alone.problems["vs-2"].starts_with("stays on se-1 (draining)"),
        "{:?}",
        alone.problems
    );
    // A draining SE takes nothing new.
    let c = config("buffer_ses = 0", 3);
    let more = place(&c, &view, &done);
    assert_eq!(more.of("vs-3"), ["se-2".to_string()]);
    // Drained and back: it takes new work again, nothing moves back.
    view[0].draining = false;
    let c = config("buffer_ses = 0", 4);
    let back = place(&c, &view, &more);
    assert_eq!(back.of("vs-1"), ["se-2".to_string()]);
    assert_eq!(back.of("vs-4"), ["se-1".to_string()]);
}

#[test]
fn legacy_groups_are_not_placed() {
    let c = config("ha_mode = \"legacy_active_standby\"", 2);
    let p = place(&c, &ses(&[true, true]), &Placement::default());
    assert!(p.virtual_services.is_empty() && p.groups.is_empty());
}

/// Random fleets, limits, failures and drains: limits always hold for new
/// places, the result is a function of its inputs, an up SE that is not
/// draining never loses a virtual service it could keep, a draining SE
/// (never busy here) keeps nothing, and every unplaced virtual service
/// says why.
#[test]
fn random_fleets_keep_the_rules() {
    let mut rng = SmallRng::seed_from_u64(0x91ace);
    for round in 0..300 {
        let mode = ["elastic_n_plus_m", "elastic_active_active"][rng.gen_range(0..2)];
        let group = format!(
            "ha_mode = \"{mode}\"\ncompact = {}\nmax_vs_per_se = {}\nbuffer_ses = {}",
            rng.gen_bool(0.5),
            rng.gen_range(1..5),
            rng.gen_range(0..3),
        );
        let c = config(&group, rng.gen_range(0..12));
        let g = &c.se_groups[0];
        let mut placement = Placement::default();
        let mut view = ses(&vec![true; rng.gen_range(0..7)]);
        for _step in 0..8 {
            for s in &mut view {
                if rng.gen_bool(0.2) {
                    s.up = !s.up;
                }
                s.draining = rng.gen_bool(0.1);
            }
            let next = place(&c, &view, &placement);
            assert_eq!(
                next,
                place(&c, &view, &placement),
                "round {round}: not a function"
            );
            for se in &view {
                let n = load(&next, &se.name) as u32;
                assert!(
                    n <= g.max_vs_per_se,
                    "round {round}: {} carries {n}",
                    se.name
                );
            }
            for vs in &c.virtual_services {
                let list = next.of(&vs.name);
                let mut dedup = list.to_vec();
                dedup.sort();
                dedup.dedup();
                assert_eq!(dedup.len(), list.len(), "round {round}: twice on one SE");
                // Draining places are extra (kept while busy; none here).
                let counted: Vec<&String> = list
                    .iter()
                    .filter(|n| view.iter().any(|s| &s.name == *n && !s.draining))
                    .collect();
                assert!(counted.len() <= g.scaleout() as usize);
                let up_places = counted
                    .iter()
                    .filter(|n| view.iter().any(|s| &s.name == **n && s.up))
                    .count();
                if up_places < g.scaleout() as usize {
                    assert!(
                        next.problems.contains_key(&vs.name),
                        "round {round}: {} short, silent",
                        vs.name
                    );
                }
                // Stickiness: a place on an up SE that had room stays.
                for se in placement.of(&vs.name) {
                    let s = view.iter().find(|s| &s.name == se).unwrap();
                    if s.up && !s.draining && load(&placement, se) as u32 <= g.max_vs_per_se {
                        assert!(list.contains(se), "round {round}: {} left up {se}", vs.name);
                    }
                }
            }
            // A draining SE keeps only what has nowhere else to go (and says so).
            for vs in &c.virtual_services {
                let list = next.of(&vs.name);
                let drained = list
                    .iter()
                    .any(|n| view.iter().any(|s| &s.name == n && s.draining));
                if drained {
                    assert_eq!(
                        list.len(),
                        1,
                        "round {round}: {} on a draining SE beside others",
                        vs.name
                    );
                    assert!(
                        next.problems[&vs.name].contains("(draining)"),
                        "round {round}"
                    );
                }
            }
            placement = next;
        }
    }
}

#[test]
fn a_partitioned_se_keeps_what_it_carries_and_takes_nothing_new() {
    // N+M, M = 1: vs-1 on se-1, se-2 the buffer. se-1 loses its session
    // but its peers hear it: vs-1 stays; a new vs-2 does not go to se-1.
    let c = config("buffer_ses = 0", 1);
    let before = place(&c, &ses(&[true, false]), &Placement::default());
    assert_eq!(before.of("vs-1"), ["se-1".to_string()]);
    let mut view = ses(&[true, true]);
    view[0].partitioned = true;
    let after = place(&c, &view, &before);
    assert_eq!(
        after,
        place(&c, &ses(&[true, true]), &before),
        "nothing moves"
    );
    assert_eq!(after.of("vs-1"), ["se-1".to_string()]);
    let c2 = config("buffer_ses = 0\nmax_vs_per_se = 5", 2);
    let mut view = ses(&[true, false]);
    view[0].partitioned = true;
    let p = place(&c2, &view, &before);
    assert_eq!(p.of("vs-1"), ["se-1".to_string()]);
    assert!(p.of("vs-2").is_empty(), "{p:?}");
    let why = &p.problems["vs-2"];
    assert!(why.contains("se-1: partitioned"), "{why}");
}
