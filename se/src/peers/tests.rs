use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn peer(name: &str, port: u16) -> ScaleoutPeer {
    ScaleoutPeer {
        se: name.into(),
        relay: addr(port),
    }
}

fn beat(group: &str, from: &str, token: u64, echo: u64) -> Vec<u8> {
    let mut out = Vec::new();
    Beat {
        group,
        from,
        token,
        echo,
    }
    .encode(&mut out);
    out
}

const HB: Duration = Duration::from_millis(500);

#[test]
fn a_beat_round_trips_and_garbage_is_refused() {
    let bytes = beat("g", "se-1", 7, 9);
    assert_eq!(
        Beat::decode(&bytes),
        Ok(Beat {
            group: "g",
            from: "se-1",
            token: 7,
            echo: 9
        })
    );
    assert!(bytes.len() <= MAX_BEAT_BYTES);
    assert_eq!(Beat::decode(b""), Err(BeatError::Malformed));
    assert_eq!(
        Beat::decode(&bytes[..bytes.len() - 1]),
        Err(BeatError::Malformed)
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Beat::decode(&long), Err(BeatError::Malformed));
    let mut foreign = bytes.clone();
    foreign[0] = b'X';
    assert_eq!(Beat::decode(&foreign), Err(BeatError::Foreign));
    assert_eq!(
        Beat::decode(&beat("g", "se-1", 0, 0)),
        Err(BeatError::Malformed),
        "token 0 is never sent"
    );
    // Every prefix and every one-byte corruption parses or is refused,
    // never panics.
    for cut in 0..bytes.len() {
        let _ = Beat::decode(&bytes[..cut]);
        for b in [0u8, 1, 0x7f, 0xff] {
            let mut c = bytes.clone();
            c[cut] = b;
            let _ = Beat::decode(&c);
        }
    }
}

#[test]
fn peers_hear_each_other_and_echo_tokens() {
    let t0 = fabric::rt::now();
    let mut a = Peers::new("se-1", "g", t0);
    let mut b = Peers::new("se-2", "g", t0);
    a.configure(&[peer("se-1", 1), peer("se-2", 2)]);
    b.configure(&[peer("se-1", 1)]);
    let mut out = Vec::new();
    a.beats(t0, &mut out);
    assert_eq!(out.len(), 1, "not to itself");
    assert_eq!(out[0].0, addr(2));
    let t1 = t0 + Duration::from_millis(10);
    assert!(b.on_datagram(t1, &out[0].1, addr(1)));
    assert_eq!(b.heard(t1, HB)[0].se, "se-1");
    // b's next beat echoes a's token: a knows b heard its beat of t0.
    b.beats(t1, &mut out);
    let t2 = t1 + Duration::from_millis(10);
    assert!(a.on_datagram(t2, &out[0].1, addr(2)));
    assert_eq!(a.vouched, Some(t0));
    assert_eq!(a.heard(t2, HB).len(), 1);
    assert!(a.heard(t2 + HB, HB).is_empty(), "old news is not reported");
    // Another group's beats, our own name, and garbage are ignored.
    assert!(!a.on_datagram(t2, &beat("h", "se-3", 1, 0), addr(3)));
    assert!(!a.on_datagram(t2, &beat("g", "se-1", 1, 0), addr(3)));
    assert!(!a.on_datagram(t2, b"hello", addr(3)));
    // An echo from the future proves nothing.
    assert!(a.on_datagram(t2, &beat("g", "se-2", 5, u64::MAX), addr(2)));
    assert_eq!(a.vouched, Some(t0));
}

#[test]
fn an_unknown_peer_of_the_group_is_learned_and_forgotten_when_quiet() {
    let t0 = fabric::rt::now();
    let mut a = Peers::new("se-1", "g", t0);
    a.set_timing(HB, 3);
    assert!(a.on_datagram(t0, &beat("g", "se-9", 1, 0), addr(9)));
    let mut out = Vec::new();
    a.beats(t0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(9), "answered where it came from");
    a.beats(t0 + lease_window(HB, 3) * 11, &mut out);
    assert!(out.is_empty(), "forgotten");
    // At most MAX_PEERS are kept.
    for i in 0..MAX_PEERS + 10 {
        a.on_datagram(t0, &beat("g", &format!("x-{i}"), 1, 0), addr(9));
    }
    a.beats(t0, &mut out);
    assert_eq!(out.len(), MAX_PEERS);
}

#[test]
fn the_lease_runs_out_only_when_neither_the_controller_nor_a_peer_heard() {
    let t0 = fabric::rt::now();
    let window = lease_window(HB, 3);
    assert_eq!(window, Duration::from_millis(1125));
    let mut a = Peers::new("se-1", "g", t0);
    // No timing from a session yet, or no peers: never fenced.
    assert!(!a.fence_due(t0 + window * 10));
    a.set_timing(HB, 3);
    a.controller_heard(t0);
    assert!(
        !a.fence_due(t0 + window * 10),
        "no peers: the headless rule"
    );
    a.configure(&[peer("se-2", 2)]);
    assert!(!a.fence_due(t0 + window));
    // A peer vouches for a beat sent later than the Controller's last ack.
    let mut out = Vec::new();
    let t1 = t0 + Duration::from_millis(800);
    a.beats(t1, &mut out);
    let token = Beat::decode(&out[0].1).unwrap().token;
    assert!(a.on_datagram(t1, &beat("g", "se-2", 3, token), addr(2)));
    assert!(!a.fence_due(t0 + window + Duration::from_millis(1)));
    assert!(!a.fence_due(t1 + window));
    assert!(a.fence_due(t1 + window + Duration::from_millis(1)));
    assert!(a.fenced());
    assert!(!a.fence_due(t1 + window * 2), "once");
    assert!(a.lift());
    assert!(!a.lift());
}

#[test]
fn the_lease_ends_before_the_leader_may_move_anything() {
    // The leader moves nothing before the detection time after it (or a
    // peer) last heard the SE; the SE lets go a quarter of that earlier.
    for hb in [10u64, 100, 500, 1000, 60_000] {
        let hb = Duration::from_millis(hb);
        let detect = hb * 3;
        let window = lease_window(hb, 3);
        assert!(window < detect);
        assert!(detect - window >= detect / 4 - Duration::from_nanos(1));
    }
}
