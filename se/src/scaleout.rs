//! Scale-out of one virtual service over several SEs (seed 002): the primary
//! SE holds the VIP and hands a share of new connections to secondary SEs,
//! which terminate them (TLS, HTTP, the pool) as if the client had come to
//! them; replies go back through the primary, as in the seeds.
//!
//! - **Who takes a flow**: rendezvous (highest random weight) hashing of the
//!   client's address and port over the SEs of the virtual service. Adding
//!   an SE moves only the flows that now rank it first (about 1/(n+1) of
//!   them); removing one moves only its own. Established connections never
//!   move: they are spliced until they end, which is what draining means.
//! - **The hand-off**: a TCP connection from the primary to the secondary's
//!   relay listener, starting with a PROXY protocol v1 line (HAProxy's
//!   format) naming the client and the VIP, then the client's bytes as they
//!   come. The secondary reads the line, finds the virtual service by VIP
//!   and port, and serves the rest with the client's address as the peer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric::proto::ScaleoutPeer;
use fabric::rt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::VirtualService;

/// Port of an SE's relay listener unless it is given another.
pub const DEFAULT_RELAY_PORT: u16 = 7476;
/// Longest wait for a secondary to accept a hand-off; past it the primary
/// serves the connection itself.
pub const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a hand-off's PROXY line.
pub const PROXY_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most hand-offs one relay listener serves at once.
pub const MAX_RELAYED: usize = 16_384;

/// The virtual services this SE serves as a secondary, by VIP and port:
/// what its relay listener hands connections to.
pub type RelayTable = Arc<Mutex<BTreeMap<SocketAddr, Arc<VirtualService>>>>;

/// The index in `members` of the SE that takes the flow from `client`:
/// the one whose hash with the flow is highest.
pub fn owner<S: AsRef<str>>(client: SocketAddr, members: &[S]) -> usize {
    let flow = flow_key(client);
    let mut best = (0usize, 0u64);
    for (i, m) in members.iter().enumerate() {
        let w = mix(flow ^ fnv1a(m.as_ref().as_bytes()));
        if i == 0 || w > best.1 {
            best = (i, w);
        }
    }
    best.0
}

/// A flow's key: the client's address and port.
fn flow_key(client: SocketAddr) -> u64 {
    let ip = match client.ip() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n as u64) ^ ((n >> 64) as u64)
        }
    };
    mix(ip.rotate_left(16) ^ u64::from(client.port()))
}

/// FNV-1a, 64 bits: fixed, so every SE and every run ranks alike.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: spreads nearby keys far apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Longest PROXY protocol v1 line, CRLF included (the spec's bound).
pub const MAX_PROXY_LINE: usize = 107;

/// The PROXY protocol v1 line for a connection from `client` to `vip`.
pub fn proxy_line(client: SocketAddr, vip: SocketAddr) -> String {
    let family = match (client, vip) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        _ => "TCP6",
    };
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) if family == "TCP6" => v4.to_ipv6_mapped().to_string(),
        other => other.to_string(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        ip(client),
        ip(vip),
        client.port(),
        vip.port()
    )
}

/// Why a PROXY line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PROXY line: {0}")]
pub struct ProxyLineError(pub &'static str);

/// The client and the VIP a PROXY v1 line (without its CRLF) names.
pub fn parse_proxy_line(line: &[u8]) -> Result<(SocketAddr, SocketAddr), ProxyLineError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyLineError("not ASCII"))?;
    let mut words = text.split(' ');
    if words.next() != Some("PROXY") {
        return Err(ProxyLineError("no PROXY signature"));
    }
    let family = words.next().ok_or(ProxyLineError("no family"))?;
    if family != "TCP4" && family != "TCP6" {
        return Err(ProxyLineError("family is not TCP4 or TCP6"));
    }
    let mut next = |what| words.next().ok_or(ProxyLineError(what));
    let (src, dst) = (next("no source")?, next("no destination")?);
    let (sport, dport) = (next("no source port")?, next("no destination port")?);
    if words.next().is_some() {
        return Err(ProxyLineError("extra fields"));
    }
    let ip = |s: &str| {
        let ip: IpAddr = s.parse().map_err(|_| ProxyLineError("bad address"))?;
        match (family, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            _ => Err(ProxyLineError("address of the other family")),
        }
    };
    let port = |s: &str| {
        // No sign, no leading zeros (the spec), 1-65535 here.
        if s.starts_with('0') || s.starts_with('+') {
            return Err(ProxyLineError("bad port"));
        }
        s.parse::<u16>().map_err(|_| ProxyLineError("bad port"))
    };
    let canonical = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    Ok((
        canonical(SocketAddr::new(ip(src)?, port(sport)?)),
        canonical(SocketAddr::new(ip(dst)?, port(dport)?)),
    ))
}

/// Hand `client` (accepted on `vip`) to the secondary `peer`: a connection
/// to its relay listener, the PROXY line, then both directions spliced
/// until either side closes. `Err` (with the client given back) when the
/// secondary cannot be reached in time: the caller serves it itself.
pub async fn hand_off(
    client: rt::TcpStream,
    client_addr: SocketAddr,
    vip: SocketAddr,
    peer: &ScaleoutPeer,
) -> Result<(), rt::TcpStream> {
    let mut upstream = match rt::timeout(HAND_OFF_TIMEOUT, rt::connect(peer.relay)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(se = %peer.se, relay = %peer.relay, error = %e, "hand-off refused");
            return Err(client);
        }
        Err(_) => {
            tracing::debug!(se = %peer.se, relay = %peer.relay, "hand-off timed out");
            return Err(client);
        }
    };
    let _ = upstream.set_nodelay(true);
    let line = proxy_line(client_addr, vip);
    if upstream.write_all(line.as_bytes()).await.is_err() || upstream.flush().await.is_err() {
        return Err(client);
    }
    let mut client = client;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// Read a PROXY v1 line off `stream`, one byte at a time so that nothing
/// after its CRLF is consumed.
pub async fn read_proxy_line(
    stream: &mut rt::TcpStream,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let bad = |e: ProxyLineError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut line = Vec::with_capacity(64);
    loop {
        let b = stream.read_u8().await?;
        if b == b'\n' && line.last() == Some(&b'\r') {
            line.pop();
            return parse_proxy_line(&line).map_err(bad);
        }
        line.push(b);
        if line.len() >= MAX_PROXY_LINE {
            return Err(bad(ProxyLineError("longer than 107 bytes")));
        }
    }
}

/// Serve hand-offs from primaries on `listener`: each connection names its
/// client and VIP in a PROXY line, and is served by the virtual service
/// this SE holds as a secondary for that VIP (with the client as the
/// peer), or closed when there is none.
pub async fn serve_relay(listener: rt::TcpListener, table: RelayTable) -> std::io::Result<()> {
    rt::accept_loop(listener, MAX_RELAYED, move |mut stream, primary| {
        let table = table.clone();
        async move {
            let named = rt::timeout(PROXY_LINE_TIMEOUT, read_proxy_line(&mut stream)).await;
            let (client, vip) = match named {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!(%primary, error = %e, "bad hand-off");
                    return;
                }
                Err(_) => return,
            };
            let vs = table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&vip)
                .cloned();
            match vs {
                Some(vs) => crate::proxy::serve_connection(vs, stream, client).await,
                None => tracing::debug!(%primary, %vip, "hand-off for a VIP this SE is not a secondary of"),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4((0x0a00_0000 + i / 50_000).into()),
            (i % 50_000 + 1024) as u16,
        )
    }

    #[test]
    fn flows_spread_evenly_and_adding_an_se_moves_only_its_share() {
        let three = ["se-1", "se-2", "se-3"];
        let four = ["se-1", "se-2", "se-3", "se-4"];
        let n = 40_000;
        let mut counts = [0usize; 4];
        let mut moved = 0;
        for i in 0..n {
            let (a, b) = (owner(addr(i), &three), owner(addr(i), &four));
            counts[b] += 1;
            if a != b {
                // Only to the new SE.
                assert_eq!(b, 3, "flow {i} moved from {} to {}", three[a], four[b]);
                moved += 1;
            }
        }
        for c in counts {
            let share = c as f64 / n as f64;
            assert!((share - 0.25).abs() < 0.02, "uneven: {counts:?}");
        }
        let share = moved as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.02, "moved {share}");
    }

    #[test]
    fn removing_an_se_moves_only_its_own_flows() {
        let all = ["se-1", "se-2", "se-3"];
        let without = ["se-1", "se-3"];
        for i in 0..10_000 {
            let before = all[owner(addr(i), &all)];
            let after = without[owner(addr(i), &without)];
            if before != "se-2" {
                assert_eq!(before, after, "flow {i}");
            }
        }
        // The order of the list does not matter, only its members.
        for i in 0..1_000 {
            let a = all[owner(addr(i), &all)];
            let rev = ["se-3", "se-1", "se-2"];
            assert_eq!(a, rev[owner(addr(i), &rev)]);
        }
    }

    #[test]
    fn proxy_lines_round_trip_and_bad_ones_are_errors() {
        let client: SocketAddr = "10.0.9.1:40000".parse().unwrap();
        let vip: SocketAddr = "10.0.100.1:443".parse().unwrap();
        let line = proxy_line(client, vip);
        assert_eq!(line, "PROXY TCP4 10.0.9.1 10.0.100.1 40000 443\r\n");
        assert!(line.len() <= MAX_PROXY_LINE);
        let bare = line.trim_end().as_bytes();
        assert_eq!(parse_proxy_line(bare), Ok((client, vip)));
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        let line = proxy_line(v6, vip);
        assert_eq!(parse_proxy_line(line.trim_end().as_bytes()), Ok((v6, vip)));
        for bad in [
            "",
            "PROXY",
            "PROXY UNKNOWN",
            "PROXY TCP4 10.0.9.1 10.0.100.1 40000",
            "PROXY TCP4 10.0.9.1 10.0.100.1 40000 443 extra",
            "PROXY TCP4 2001:db8::1 10.0.100.1 1 2",
            "PROXY TCP4 10.0.9.1 10.0.100.1 040000 443",
            "PROXY TCP4 10.0.9.1 10.0.100.1 70000 443",
            "PROXY TCP4 10.0.9.1 10.0.100.1 0 443",
            "GET / HTTP/1.1",
        ] {
            assert!(parse_proxy_line(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_proxy_line(&[0xff, 0xfe]).is_err());
    }
}
