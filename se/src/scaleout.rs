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

/// The secondary of `peers` that takes the flow from `client` when this SE
/// (`me`) is the primary, by [`owner`] over `me` and them; `None` when it
/// is this SE's own.
pub fn taker<'a>(
    me: &str,
    peers: &'a [ScaleoutPeer],
    client: SocketAddr,
) -> Option<&'a ScaleoutPeer> {
    if peers.is_empty() {
        return None;
    }
    let mut members: Vec<&str> = Vec::with_capacity(peers.len() + 1);
    members.push(me);
    members.extend(peers.iter().map(|p| p.se.as_str()));
    peers.get(owner(client, &members).checked_sub(1)?)
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

/// The PROXY protocol v2 signature (HAProxy's spec, section 2.2).
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest PROXY v2 header this SE writes or reads: the fixed 16 bytes and
/// an IPv6 address block.
pub const MAX_PROXY_V2_HEADER: usize = 16 + 36;

/// Put before a datagram from `client` to `vip` relayed to a secondary:
/// a PROXY protocol v2 header, command PROXY, transport DGRAM (`0x12`
/// IPv4, `0x22` IPv6; a client and VIP of different families go as IPv6
/// with the IPv4 one mapped), the addresses, no TLVs. The datagram follows
/// it in the same UDP payload, as Cloudflare Spectrum and other UDP
/// proxies carry the client's address.
pub fn proxy_v2_dgram(client: SocketAddr, vip: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&PROXY_V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    match (client, vip) {
        (SocketAddr::V4(c), SocketAddr::V4(v)) => {
            out.push(0x12);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&v.ip().octets());
        }
        _ => {
            out.push(0x22);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(client));
            out.extend_from_slice(&v6(vip));
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&vip.port().to_be_bytes());
}

/// The client and the VIP a PROXY v2 DGRAM header at the start of
/// `datagram` names, and where the relayed datagram begins. TLVs after the
/// addresses are skipped; anything but PROXY over DGRAM is refused.
pub fn parse_proxy_v2_dgram(
    datagram: &[u8],
) -> Result<(SocketAddr, SocketAddr, usize), ProxyLineError> {
    if datagram.len() < 16 || datagram[..12] != PROXY_V2_SIGNATURE {
        return Err(ProxyLineError("no PROXY v2 signature"));
    }
    if datagram[12] != 0x21 {
        return Err(ProxyLineError("not version 2 with the PROXY command"));
    }
    let len = usize::from(u16::from_be_bytes([datagram[14], datagram[15]]));
    let end = 16 + len;
    let block = datagram
        .get(16..end)
        .ok_or(ProxyLineError("address block past the datagram"))?;
    let (client, vip) = match datagram[13] {
        0x12 if len >= 12 => {
            let ip = |o: usize| IpAddr::from([block[o], block[o + 1], block[o + 2], block[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x22 if len >= 36 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&block[o..o + 16]);
                let v6 = std::net::Ipv6Addr::from(b);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        0x12 | 0x22 => return Err(ProxyLineError("address block too short")),
        _ => return Err(ProxyLineError("not UDP over IPv4 or IPv6")),
    };
    Ok((client, vip, end))
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

    #[test]
    fn proxy_v2_dgram_headers_round_trip_and_match_the_spec() {
        let c4: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let v4: SocketAddr = "10.0.100.1:53".parse().unwrap();
        let mut out = Vec::new();
        proxy_v2_dgram(c4, v4, &mut out);
        // The spec's layout, byte for byte: signature, 0x21, 0x12 (INET,
        // DGRAM), length 12, source, destination, source port, destination port.
        let mut want = PROXY_V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x12, 0, 12, 192, 0, 2, 7, 10, 0, 100, 1]);
        want.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        assert_eq!(out, want);
        out.extend_from_slice(b"payload");
        assert_eq!(parse_proxy_v2_dgram(&out), Ok((c4, v4, 28)));
        assert_eq!(&out[28..], b"payload");

        let c6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::100]:53".parse().unwrap();
        let mut out = Vec::new();
        proxy_v2_dgram(c6, v6, &mut out);
        assert_eq!(out.len(), MAX_PROXY_V2_HEADER);
        assert_eq!(out[13], 0x22);
        assert_eq!(parse_proxy_v2_dgram(&out), Ok((c6, v6, 52)));
        // Mixed families: IPv6 on the wire, each address as it was.
        let mut out = Vec::new();
        proxy_v2_dgram(c4, v6, &mut out);
        assert_eq!(parse_proxy_v2_dgram(&out), Ok((c4, v6, 52)));
        // TLVs after the addresses are skipped.
        let mut tlv = Vec::new();
        proxy_v2_dgram(c4, v4, &mut tlv);
        tlv[15] = 12 + 4;
        tlv.extend_from_slice(&[0x04, 0, 1, 0xaa, b'x']);
        assert_eq!(parse_proxy_v2_dgram(&tlv), Ok((c4, v4, 32)));
    }

    #[test]
    fn proxy_v2_dgram_refuses_what_it_cannot_carry() {
        let c: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let v: SocketAddr = "10.0.100.1:53".parse().unwrap();
        let mut good = Vec::new();
        proxy_v2_dgram(c, v, &mut good);
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = good.clone();
            f(&mut d);
            parse_proxy_v2_dgram(&d).unwrap_err()
        };
        assert_eq!(bad(&|d| d[0] = b'X').0, "no PROXY v2 signature");
        assert_eq!(bad(&|d| d.truncate(15)).0, "no PROXY v2 signature");
        assert_eq!(
            bad(&|d| d[12] = 0x20).0,
            "not version 2 with the PROXY command"
        );
        assert_eq!(
            bad(&|d| d[12] = 0x11).0,
            "not version 2 with the PROXY command"
        );
        assert_eq!(bad(&|d| d[13] = 0x11).0, "not UDP over IPv4 or IPv6");
        assert_eq!(bad(&|d| d[13] = 0x31).0, "not UDP over IPv4 or IPv6");
        assert_eq!(bad(&|d| d[15] = 8).0, "address block too short");
        assert_eq!(
            bad(&|d| d.truncate(20)).0,
            "address block past the datagram"
        );
        assert_eq!(bad(&|d| d[15] = 200).0, "address block past the datagram");
        // A data-path beat is not a relayed datagram.
        assert!(parse_proxy_v2_dgram(b"FKPB\x01rest of a beat").is_err());
        assert!(parse_proxy_v2_dgram(&[]).is_err());
    }

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
