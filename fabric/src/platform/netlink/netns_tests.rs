//! [`NetlinkL2`] against the real kernel, inside network namespaces each
//! test creates for itself: two namespaces joined by a veth pair, the VIP
//! claimed on one end, the frames captured on the other with an AF_PACKET
//! socket, and the far kernel's neighbour table as the judge of whether
//! the frames are right (it drops a bad checksum or hop limit silently).
//!
//! Needs root (`ip netns add`); without it every test prints `SKIPPED` and
//! passes. Nothing here touches the host's own namespace: the claims and
//! captures run on threads that `setns` into the test's namespaces first,
//! and deleting a namespace (always, by `Drop`, even when a test fails)
//! deletes its end of the veth pair.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::platform::garp::{self, Mac};

const MAC_A: Mac = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x01];
const MAC_B: Mac = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x01];
/// What the far side's neighbour table says before the claim: another host.
const OLD_OWNER: &str = "02:00:00:00:00:99";
const IF_A: &str = "veth-a";
const IF_B: &str = "veth-b";
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

/// A captured frame and when it arrived.
type Frame = (Instant, Vec<u8>);

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace this test created, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "fabric-l2-{}-{nanos:x}-{}{tag}",
            std::process::id(),
            NEXT_NETNS.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        Ok(Self { name })
    }

    /// `ip -n <this namespace> args...`; panics (so the test fails, and the
    /// namespaces are still deleted) when it fails.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `f` on a new thread inside this namespace.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) on a descriptor we hold; it moves only this
            // thread (network namespaces are per thread).
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
    }

    /// Run the future `make()` builds on a current-thread runtime inside
    /// this namespace, and wait for it.
    fn block_on<T, F>(&self, make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T>,
    {
        self.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(make())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Two namespaces on one segment: `a` (where VIPs are claimed, `veth-a`,
/// 192.0.2.1/24, 2001:db8::1/64) and `b` (the neighbour, `veth-b`,
/// 192.0.2.2/24, 2001:db8::2/64).
struct Segment {
    a: Netns,
    b: Netns,
}

impl Segment {
    /// The segment, or `None` (after printing why) where namespaces cannot
    /// be made here.
    fn new(test: &str) -> Option<Self> {
        let a = match Netns::create("a") {
            Ok(ns) => ns,
            Err(e) => {
                println!("SKIPPED {test}: cannot create a network namespace ({e})");
                return None;
            }
        };
        let b = Netns::create("b").expect("a second namespace");
        let mac = |m: &Mac| garp::format_mac(m);
        run(
            "ip",
            &[
                "link",
                "add",
                IF_A,
                "netns",
                &a.name,
                "address",
                &mac(&MAC_A),
                "type",
                "veth",
                "peer",
                "name",
                IF_B,
                "netns",
                &b.name,
                "address",
                &mac(&MAC_B),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        a.ip(&["addr", "add", "192.0.2.1/24", "dev", IF_A]);
        a.ip(&["addr", "add", "2001:db8::1/64", "dev", IF_A, "nodad"]);
        b.ip(&["addr", "add", "192.0.2.2/24", "dev", IF_B]);
        b.ip(&["addr", "add", "2001:db8::2/64", "dev", IF_B, "nodad"]);
        a.ip(&["link", "set", IF_A, "up"]);
        b.ip(&["link", "set", IF_B, "up"]);
        let segment = Self { a, b };
        segment.wait_until_ready();
        Some(segment)
    }

    /// Wait until both ends are up for the kernel (the link watcher runs up
    /// to a second after `ip link set up`): before that, `veth-a` drops what
    /// it sends without an error and `veth-b`'s IPv6 has not joined ff02::1.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let up = |ns: &Netns, ifname: &str| {
                ns.ip(&["-o", "link", "show", "dev", ifname])
                    .contains("state UP")
            };
            let ipv6_ready = self
                .b
                .ip(&["-o", "-6", "addr", "show", "dev", IF_B, "scope", "link"])
                .contains("fe80");
            if up(&self.a, IF_A) && up(&self.b, IF_B) && ipv6_ready {
                return;
            }
            assert!(Instant::now() < deadline, "the veth pair did not come up");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Make `b` believe `vip` is at another host, as before a failover.
    fn neighbour_believes_old_owner(&self, vip: IpAddr) {
        let vip = vip.to_string();
        self.b.ip(&[
            "neigh", "replace", &vip, "lladdr", OLD_OWNER, "dev", IF_B, "nud", "stale",
        ]);
    }

    /// The MAC `b`'s neighbour table holds for `vip`.
    fn neighbour_mac(&self, vip: IpAddr) -> Option<String> {
        let out = self.b.ip(&["neigh", "show", &vip.to_string(), "dev", IF_B]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// `ip -o addr` of `veth-a`.
    fn addresses_a(&self) -> String {
        self.a.ip(&["-o", "addr", "show", "dev", IF_A])
    }

    /// Capture every frame `veth-b` receives for `window`; the returned
    /// receiver says when the socket is listening.
    fn capture_b(&self, window: Duration) -> (mpsc::Receiver<()>, thread::JoinHandle<Vec<Frame>>) {
        let (ready_tx, ready_rx) = mpsc::channel();
        let capture = self.b.spawn(move || capture(IF_B, window, ready_tx));
        (ready_rx, capture)
    }
}

/// Receive on `ifname` (in this thread's namespace) for `window`.
fn capture(ifname: &str, window: Duration, ready: mpsc::Sender<()>) -> Vec<Frame> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: the descriptor was just made and is owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "{ifname} is not in this namespace");
    // SAFETY: sockaddr_ll is plain data.
    let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    at.sll_family = libc::AF_PACKET as u16;
    at.sll_protocol = all;
    at.sll_ifindex = index as i32;
    // SAFETY: `at` is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&at as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tick as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
    ready.send(()).unwrap();
    let end = Instant::now() + window;
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            frames.push((Instant::now(), buf[..n as usize].to_vec()));
        }
    }
    frames
}

/// Frames from `mac` with `ethertype`.
fn frames_from(frames: &[Frame], mac: Mac, ethertype: u16) -> Vec<Frame> {
    frames
        .iter()
        .filter(|(_, f)| f.len() >= 14 && f[6..12] == mac && f[12..14] == ethertype.to_be_bytes())
        .cloned()
        .collect()
}

/// Gratuitous ARPs from `MAC_A` for `vip`, every field checked on the way.
fn garps_for(frames: &[Frame], vip: Ipv4Addr) -> Vec<Instant> {
    let mut seen = Vec::new();
    for (at, f) in frames_from(frames, MAC_A, 0x0806) {
        assert!(f.len() >= 42, "short ARP frame {f:02x?}");
        if f[28..32] != vip.octets() {
            continue;
        }
        assert_eq!(f[0..6], [0xff; 6], "broadcast destination");
        assert_eq!(f[14..20], [0, 1, 8, 0, 6, 4], "Ethernet/IPv4 ARP");
        assert_eq!(f[20..22], [0, 1], "an ARP request");
        assert_eq!(f[22..28], MAC_A, "sender MAC is the interface's");
        assert_eq!(f[38..42], vip.octets(), "target IP is the VIP too");
        seen.push(at);
    }
    seen
}

/// Unsolicited NAs from `MAC_A` for `vip`, every field checked.
fn nas_for(frames: &[Frame], vip: Ipv6Addr) -> Vec<Instant> {
    let mut seen = Vec::new();
    for (at, f) in frames_from(frames, MAC_A, 0x86dd) {
        // Only neighbour advertisements (the kernel sends MLD and router
        // solicitations of its own).
        if f.len() < 86 || f[20] != 58 || f[54] != 136 || f[62..78] != vip.octets() {
            continue;
        }
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "to all nodes");
        assert_eq!(f[21], 255, "hop limit 255");
        assert_eq!(f[22..38], vip.octets(), "from the VIP");
        assert_eq!(f[38..54], garp::ALL_NODES.octets(), "to ff02::1");
        assert_eq!(f[58], 0x20, "Override, not Solicited, not Router");
        assert_eq!(f[78..80], [2, 1], "a target link-layer address option");
        assert_eq!(f[80..86], MAC_A, "with the interface's MAC");
        assert_eq!(garp::icmpv6_checksum(vip, garp::ALL_NODES, &f[54..86]), 0);
        seen.push(at);
    }
    seen
}

fn config(count: u32, interval: Duration) -> NetlinkL2Config {
    NetlinkL2Config {
        garp_count: count,
        garp_interval: interval,
        ..NetlinkL2Config::new(IF_A)
    }
}

#[test]
fn claim_adds_the_address_and_moves_the_neighbours_cache() {
    let Some(seg) = Segment::new("claim_adds_the_address_and_moves_the_neighbours_cache") else {
        return;
    };
    let (v4, v6) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
    seg.neighbour_believes_old_owner(v4);
    seg.neighbour_believes_old_owner(v6);
    let interval = Duration::from_millis(250);
    let (ready, capture) = seg.capture_b(Duration::from_millis(1800));
    ready.recv().unwrap();
    let started = seg.a.block_on(move || async move {
        let l2 = NetlinkL2::open(config(3, interval)).await.expect("open");
        let started = Instant::now();
        l2.claim_vip(v4).await.expect("claim v4");
        l2.claim_vip(v6).await.expect("claim v6");
        assert_eq!(l2.bind_addr(v4), v4);
        // Let the trains run out.
        rt::sleep(interval * 3).await;
        started
    });
    let frames = capture.join().unwrap();

    let garps = garps_for(&frames, VIP4);
    let nas = nas_for(&frames, VIP6);
    assert_eq!(garps.len(), 3, "gratuitous ARPs: {garps:?}");
    assert_eq!(nas.len(), 3, "neighbour advertisements: {nas:?}");
    for train in [&garps, &nas] {
        assert!(train[0] - started < interval, "the first goes at once");
        for pair in train.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= interval * 8 / 10, "{gap:?} between announcements");
        }
    }
    // Byte for byte what the builders make (veth does not pad).
    let raw = frames_from(&frames, MAC_A, 0x0806);
    assert!(raw
        .iter()
        .any(|(_, f)| f[..] == garp::arp_announcement(MAC_A, VIP4)));

    let addrs = seg.addresses_a();
    assert!(addrs.contains("inet 192.0.2.100/32"), "{addrs}");
    assert!(addrs.contains("inet6 2001:db8::100/128"), "{addrs}");
    // The neighbour's kernel took the frames: its cache moved to us.
    let ours = garp::format_mac(&MAC_A);
    assert_eq!(seg.neighbour_mac(v4).as_deref(), Some(ours.as_str()));
    assert_eq!(seg.neighbour_mac(v6).as_deref(), Some(ours.as_str()));

    seg.a.block_on(move || async move {
        let l2 = NetlinkL2::open(config(1, interval)).await.expect("open");
        // Claiming what is already held is fine; so is announcing it.
        l2.claim_vip(v4).await.expect("claim again");
        l2.announce(v4).await.expect("announce");
        l2.release_vip(v4).await.expect("release v4");
        l2.release_vip(v6).await.expect("release v6");
        // Releasing what is not held is fine; announcing it is not.
        l2.release_vip(v4).await.expect("release again");
        let err = l2.announce(v4).await.expect_err("announce a released VIP");
        assert!(err.to_string().contains("claim it before"), "{err}");
    });
    let addrs = seg.addresses_a();
    assert!(!addrs.contains("192.0.2.100"), "{addrs}");
    assert!(!addrs.contains("2001:db8::100"), "{addrs}");
    assert!(
        addrs.contains("inet 192.0.2.1/24"),
        "the host's own address stays: {addrs}"
    );
}

#[test]
fn release_stops_the_announcements() {
    let Some(seg) = Segment::new("release_stops_the_announcements") else {
        return;
    };
    let interval = Duration::from_millis(300);
    let (ready, capture) = seg.capture_b(Duration::from_millis(1500));
    ready.recv().unwrap();
    seg.a.block_on(move || async move {
        let l2 = NetlinkL2::open(config(5, interval)).await.expect("open");
        l2.claim_vip(IpAddr::V4(VIP4)).await.expect("claim");
        l2.release_vip(IpAddr::V4(VIP4)).await.expect("release");
        // Long enough for the train to have gone on, had it not stopped.
        rt::sleep(interval * 4).await;
    });
    let frames = capture.join().unwrap();
    assert_eq!(
        garps_for(&frames, VIP4).len(),
        1,
        "only the first announcement"
    );
    assert!(!seg.addresses_a().contains("192.0.2.100"));
}

#[test]
fn failures_are_errors_and_leave_nothing_behind() {
    let Some(seg) = Segment::new("failures_are_errors_and_leave_nothing_behind") else {
        return;
    };
    seg.a.block_on(|| async {
        let err = NetlinkL2::open(NetlinkL2Config::new("nonexistent0"))
            .await
            .expect_err("no such interface");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let err = NetlinkL2::open(config(0, Duration::ZERO))
            .await
            .expect_err("garp_count 0");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        // A loopback interface has no Ethernet address to announce.
        let err = NetlinkL2::open(NetlinkL2Config::new("lo"))
            .await
            .expect_err("lo");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");

        let l2 = NetlinkL2::open(config(3, Duration::from_millis(10)))
            .await
            .expect("open");
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(matches!(
            l2.claim_vip(loopback).await,
            Err(L2Error::Unsupported { vip, .. }) if vip == loopback
        ));
    });
    // A link that is down cannot carry the announcement: the claim fails
    // with the OS error and takes its address back.
    seg.a.ip(&["link", "set", IF_A, "down"]);
    seg.a.block_on(|| async {
        let l2 = NetlinkL2::open(config(3, Duration::from_millis(10)))
            .await
            .expect("open");
        let vip = IpAddr::V4(VIP4);
        match l2.claim_vip(vip).await {
            Err(L2Error::Io { vip: v, source }) => {
                assert_eq!(v, vip);
                assert!(
                    source.to_string().contains("announcing on veth-a"),
                    "{source}"
                );
            }
            other => panic!("claim on a down link: {other:?}"),
        }
    });
    assert!(!seg.addresses_a().contains("192.0.2.100"), "rolled back");
}

/// Send one announcement for `vip` from `veth-b` (MAC_B), in `b`: a
/// gratuitous ARP, or an unsolicited NA.
fn announce_from_b(seg: &Segment, vip: IpAddr) {
    seg.b.block_on(move || async move {
        let netlink = Netlink::connect().expect("netlink");
        let link = netlink.link(IF_B).await.expect("veth-b");
        let frame = garp::announcement(MAC_B, vip);
        PacketSocket::open()
            .expect("packet socket")
            .send(link.index, &frame)
            .await
            .expect("send");
    });
}

#[test]
fn a_newer_claim_by_another_host_takes_the_vip() {
    newer_claim_takes(
        "a_newer_claim_by_another_host_takes_the_vip",
        IpAddr::V4(VIP4),
    );
}

#[test]
fn a_newer_ipv6_claim_by_another_host_takes_the_vip() {
    newer_claim_takes(
        "a_newer_ipv6_claim_by_another_host_takes_the_vip",
        IpAddr::V6(VIP6),
    );
}

/// Host a claims `vip`; b announces it within the grace (a keeps it), then
/// after (a yields it, deletes the address, and can claim it again).
fn newer_claim_takes(test: &str, vip: IpAddr) {
    let Some(seg) = Segment::new(test) else {
        return;
    };
    let shown = vip.to_string();
    let interval = Duration::from_millis(50);
    let grace = config(2, interval).claim_grace();
    let (step_tx, step_rx) = mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let a = seg.a.spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let l2 = NetlinkL2::open(config(2, interval)).await.expect("open");
            let wait = |what: &'static str| {
                let done = &done_rx;
                async move {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while done.try_recv().is_err() {
                        assert!(Instant::now() < deadline, "no {what}");
                        rt::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            l2.claim_vip(vip).await.expect("claim");
            step_tx.send("claimed").unwrap();
            wait("early frame").await;
            rt::sleep(Duration::from_millis(50)).await;
            // Within the grace: the tail of an old holder's train.
            assert!(!l2.lost(vip), "yielded to a frame within the grace");
            step_tx.send("kept").unwrap();
            wait("late frame").await;
            let deadline = Instant::now() + Duration::from_secs(2);
            while !l2.lost(vip) {
                assert!(Instant::now() < deadline, "did not yield to a newer claim");
                rt::sleep(Duration::from_millis(5)).await;
            }
            step_tx.send("yielded").unwrap();
            wait("check").await;
            // Claimed again (a config that still puts it here): held again.
            l2.claim_vip(vip).await.expect("claim again");
            assert!(!l2.lost(vip));
            step_tx.send("reclaimed").unwrap();
            wait("end").await;
            l2.release_vip(vip).await.expect("release");
        })
    });
    assert_eq!(step_rx.recv().unwrap(), "claimed");
    announce_from_b(&seg, vip);
    done_tx.send(()).unwrap();
    assert_eq!(step_rx.recv().unwrap(), "kept");
    assert!(seg.addresses_a().contains(&shown));
    thread::sleep(grace);
    announce_from_b(&seg, vip);
    done_tx.send(()).unwrap();
    assert_eq!(step_rx.recv().unwrap(), "yielded");
    let addrs = seg.addresses_a();
    assert!(!addrs.contains(&shown), "the address stays: {addrs}");
    done_tx.send(()).unwrap();
    assert_eq!(step_rx.recv().unwrap(), "reclaimed");
    assert!(seg.addresses_a().contains(&shown));
    done_tx.send(()).unwrap();
    a.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// The `valid_lft` `ip -o addr` shows for `addr` in `listing` (`forever`,
/// `2sec`), if `addr` is there.
fn valid_lft(listing: &str, addr: &str) -> Option<String> {
    let line = listing.lines().find(|l| {
        l.split_whitespace()
            .any(|w| w.split('/').next() == Some(addr))
    })?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "valid_lft")?;
    words.next().map(str::to_string)
}

#[test]
fn addresses_live_while_renewed_and_expire_after_a_crash() {
    let Some(seg) = Segment::new("addresses_live_while_renewed_and_expire_after_a_crash") else {
        return;
    };
    // A permanent leftover of an earlier run (or of a version without
    // lifetimes): claimed, it gets the lifetime too.
    seg.a.ip(&["addr", "add", "192.0.2.100/32", "dev", IF_A]);
    let lifetime = Duration::from_secs(3);
    seg.a.block_on(move || async move {
        let l2 = NetlinkL2::open(NetlinkL2Config {
            address_lifetime: Some(lifetime),
            ..config(1, Duration::from_millis(50))
        })
        .await
        .expect("open");
        l2.claim_vip(IpAddr::V4(VIP4)).await.expect("claim v4");
        l2.claim_vip(IpAddr::V6(VIP6)).await.expect("claim v6");
        // Past the lifetime: only the renewals keep the addresses.
        rt::sleep(lifetime + Duration::from_millis(1500)).await;
        // The process "crashes": its tasks stop, nothing is released.
    });
    let listing = seg.addresses_a();
    for addr in ["192.0.2.100", "2001:db8::100"] {
        let lft = valid_lft(&listing, addr).unwrap_or_else(|| panic!("{addr} gone: {listing}"));
        assert_ne!(lft, "forever", "{addr} is permanent: {listing}");
    }
    let deadline = Instant::now() + lifetime + Duration::from_secs(3);
    loop {
        let listing = seg.addresses_a();
        let left: Vec<&str> = ["192.0.2.100", "2001:db8::100"]
            .into_iter()
            .filter(|a| valid_lft(&listing, a).is_some())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left:?} outlived the crash: {listing}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn permanent_addresses_when_asked() {
    let Some(seg) = Segment::new("permanent_addresses_when_asked") else {
        return;
    };
    seg.a.block_on(move || async move {
        let l2 = NetlinkL2::open(NetlinkL2Config {
            address_lifetime: None,
            ..config(1, Duration::from_millis(50))
        })
        .await
        .expect("open");
        l2.claim_vip(IpAddr::V4(VIP4)).await.expect("claim");
    });
    let listing = seg.addresses_a();
    assert_eq!(
        valid_lft(&listing, "192.0.2.100").as_deref(),
        Some("forever"),
        "{listing}"
    );
}
