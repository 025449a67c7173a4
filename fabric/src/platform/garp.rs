//! The frames that tell a LAN segment a VIP has moved: gratuitous ARP for
//! IPv4 and unsolicited neighbour advertisements for IPv6.
//!
//! Pure builders, the same in both worlds; the real sender is
//! `platform::netlink`. Both frames are what the Linux kernel itself sends
//! when `arp_notify` / `ndisc_notify` are on, byte for byte (the tests hold
//! frames captured from Linux 6.18):
//!
//! - **ARP announcement** (RFC 5227 §2.3): an ARP *request*, broadcast, with
//!   sender and target protocol address both the VIP and the sender hardware
//!   address the interface's MAC. A request rather than a reply because
//!   every stack processes requests (a neighbour that holds an entry for
//!   the sender IP updates it from any ARP packet, RFC 826), while some
//!   ignore unsolicited replies; RFC 5227 recommends the request form, and
//!   keepalived, `arping -U` and the kernel all send it. The target hardware
//!   address is zero as RFC 5227 asks (keepalived and `arping -U` put
//!   ff:ff:ff:ff:ff:ff there; receivers ignore it in a request).
//! - **Unsolicited neighbour advertisement** (RFC 4861 §4.4, §7.2.6): to the
//!   all-nodes group ff02::1 from the VIP itself, hop limit 255, Override
//!   set, Solicited and Router clear, with the target link-layer address
//!   option carrying the MAC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An Ethernet (EUI-48) address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Length of a gratuitous ARP frame (Ethernet header and ARP payload; the
/// NIC pads it to the 60-byte minimum on the wire).
pub const ARP_FRAME_LEN: usize = 14 + 28;
/// Length of an unsolicited NA frame: Ethernet, IPv6 header, ICMPv6 NA with
/// one target link-layer address option.
pub const NA_FRAME_LEN: usize = 14 + 40 + NA_ICMP_LEN;
/// The all-nodes multicast group (RFC 4291 §2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// ICMPv6 type of a neighbour advertisement.
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// IPv6 next header value of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;
/// NA header (type, code, checksum, flags, target) plus an 8-byte option.
const NA_ICMP_LEN: usize = 4 + 4 + 16 + 8;
/// Neighbour discovery packets must arrive with this hop limit (RFC 4861
/// §7.1.2): it proves they were not forwarded by a router.
const ND_HOP_LIMIT: u8 = 255;
/// NA flags word: Override (bit 29); Router (31) and Solicited (30) clear.
const NA_FLAG_OVERRIDE: u32 = 1 << 29;
/// Option type: target link-layer address (RFC 4861 §4.6.1).
const OPT_TARGET_LL_ADDR: u8 = 2;

/// One frame ready for an AF_PACKET socket: the bytes, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The whole frame, Ethernet header first.
    pub frame: Vec<u8>,
    /// Its Ethernet destination (also in the frame's first six bytes).
    pub destination: Mac,
    /// Its EtherType (also in bytes 12 and 13).
    pub ethertype: u16,
}

/// The announcement of `vip` from the interface with address `mac`: a
/// gratuitous ARP for IPv4, an unsolicited NA for IPv6.
pub fn announcement(mac: Mac, vip: IpAddr) -> Announcement {
    match vip {
        IpAddr::V4(v4) => Announcement {
            frame: arp_announcement(mac, v4).to_vec(),
            destination: BROADCAST,
            ethertype: ETHERTYPE_ARP,
        },
        IpAddr::V6(v6) => Announcement {
            frame: unsolicited_na(mac, v6).to_vec(),
            destination: multicast_mac(ALL_NODES),
            ethertype: ETHERTYPE_IPV6,
        },
    }
}

/// What an ARP frame says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpSender {
    /// ARP operation (1 request, 2 reply).
    pub operation: u16,
    /// The sender hardware address.
    pub mac: Mac,
    /// The sender protocol address: the address the sender says is its own.
    pub ip: Ipv4Addr,
}

/// The sender of an Ethernet/IPv4 ARP frame (Ethernet header first; VLAN
/// tags already stripped, as AF_PACKET delivers them), or `None` for
/// anything else. Any ARP packet, request or reply, gratuitous or not,
/// tells its neighbours that its sender IP is at its sender MAC (RFC 826),
/// so a host that sees its own VIP as another MAC's sender IP knows another
/// host is answering for it.
pub fn arp_sender(frame: &[u8]) -> Option<ArpSender> {
    if frame.len() < ARP_FRAME_LEN || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_ARP {
        return None;
    }
    let arp = &frame[14..];
    let hw = u16::from_be_bytes([arp[0], arp[1]]);
    let proto = u16::from_be_bytes([arp[2], arp[3]]);
    if hw != 1 || proto != 0x0800 || arp[4] != 6 || arp[5] != 4 {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&arp[8..14]);
    Some(ArpSender {
        operation: u16::from_be_bytes([arp[6], arp[7]]),
        mac,
        ip: Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]),
    })
}

/// What a neighbour advertisement says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaSender {
    /// The link-layer address the advertisement gives for the target: its
    /// target link-layer address option, or (without one) the frame's
    /// Ethernet source.
    pub mac: Mac,
    /// The target address: the address the sender says is at `mac`.
    pub ip: Ipv6Addr,
}

/// The IPv6 counterpart of [`arp_sender`]: the target and link-layer
/// address of an Ethernet/IPv6/ICMPv6 neighbour advertisement (solicited or
/// not; either tells the segment the target is at that MAC), or `None` for
/// anything else. Checked as RFC 4861 §7.1.2 asks a receiver to: ICMPv6
/// straight after the IPv6 header, hop limit 255 (not forwarded by a
/// router), code 0, at least 24 bytes of message. The checksum is not
/// verified: the kernel delivers frames to packet sockets before it does,
/// and a forged NA could carry a right one anyway.
pub fn na_sender(frame: &[u8]) -> Option<NaSender> {
    const IP: usize = 14;
    const ICMP: usize = IP + 40;
    if frame.len() < ICMP + 24 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = &frame[IP..ICMP];
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 || ip[7] != ND_HOP_LIMIT {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = &frame[ICMP..frame.len().min(ICMP + payload)];
    if icmp.len() < 24 || icmp[0] != ICMPV6_NEIGHBOUR_ADVERTISEMENT || icmp[1] != 0 {
        return None;
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&icmp[8..24]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[6..12]);
    // Options: (type, length in 8-byte units, data); a zero length is
    // invalid and ends the walk, as it makes the packet invalid.
    let mut options = &icmp[24..];
    while let &[kind, len, ..] = options {
        let len = usize::from(len) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if kind == OPT_TARGET_LL_ADDR && len >= 8 {
            mac.copy_from_slice(&options[2..8]);
        }
        options = &options[len..];
    }
    Some(NaSender {
        mac,
        ip: Ipv6Addr::from(target),
    })
}

/// A classic BPF program (for `SO_ATTACH_FILTER` on an AF_PACKET socket of
/// EtherType IPv6) that keeps only what [`na_sender`] can read: ICMPv6
/// neighbour advertisements with no extension header, the first 128 bytes
/// of each. Everything else on the interface (all of its IPv6 traffic) is
/// dropped in the kernel, before it is queued for the socket. As
/// `(code, jt, jf, k)` rows of `struct sock_filter`.
pub const NA_FILTER: [(u16, u8, u8, u32); 8] = [
    (0x28, 0, 0, 12),                                    // ldh [12]: EtherType
    (0x15, 0, 5, ETHERTYPE_IPV6 as u32),                 // jeq IPv6, else drop
    (0x30, 0, 0, 20),                                    // ldb [20]: next header
    (0x15, 0, 3, IPPROTO_ICMPV6 as u32),                 // jeq ICMPv6, else drop
    (0x30, 0, 0, 54),                                    // ldb [54]: ICMPv6 type
    (0x15, 0, 1, ICMPV6_NEIGHBOUR_ADVERTISEMENT as u32), // jeq NA, else drop
    (0x06, 0, 0, 128),                                   // ret 128: keep
    (0x06, 0, 0, 0),                                     // ret 0: drop
];

/// A gratuitous ARP request announcing that `vip` is at `mac`.
pub fn arp_announcement(mac: Mac, vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    ethernet_header(&mut f, BROADCAST, mac, ETHERTYPE_ARP);
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    arp[4] = 6; // hardware address length
    arp[5] = 4; // protocol address length
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // operation: request
    arp[8..14].copy_from_slice(&mac); // sender hardware address
    arp[14..18].copy_from_slice(&vip.octets()); // sender protocol address
                                                // The target hardware address (18..24) stays zero (RFC 5227 §2.3).
    arp[24..28].copy_from_slice(&vip.octets()); // target protocol address
    f
}

/// An unsolicited neighbour advertisement of `vip` at `mac` to all nodes.
pub fn unsolicited_na(mac: Mac, vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    ethernet_header(&mut f, multicast_mac(ALL_NODES), mac, ETHERTYPE_IPV6);
    let ip = &mut f[14..54];
    ip[0] = 0x60; // version 6, traffic class and flow label 0
    ip[4..6].copy_from_slice(&(NA_ICMP_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = ND_HOP_LIMIT;
    ip[8..24].copy_from_slice(&vip.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..];
    icmp[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    icmp[1] = 0; // code
                 // The checksum (2..4) comes last, over the message with the field zero.
    icmp[4..8].copy_from_slice(&NA_FLAG_OVERRIDE.to_be_bytes());
    icmp[8..24].copy_from_slice(&vip.octets());
    icmp[24] = OPT_TARGET_LL_ADDR;
    icmp[25] = 1; // option length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(vip, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `message` (whose checksum field
/// must be zero) sent from `src` to `dst`: the one's complement of the one's
/// complement sum over the IPv6 pseudo-header (RFC 8200 §8.1) and the
/// message.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).expect("ICMPv6 messages are under 4 GiB");
    let mut sum = ones_complement_add(0, &src.octets());
    sum = ones_complement_add(sum, &dst.octets());
    sum = ones_complement_add(sum, &length.to_be_bytes());
    sum = ones_complement_add(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
    sum = ones_complement_add(sum, message);
    !fold(sum)
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    !fold(ones_complement_add(0, bytes))
}

/// Add `bytes` as big-endian 16-bit words (an odd last byte padded with
/// zero) to `sum`, carries kept in the upper half until [`fold`]. Every
/// caller but the last passes an even number of bytes, so words never
/// straddle two calls.
fn ones_complement_add(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Fold the carries of a one's complement sum back into 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Ethernet address an IPv6 multicast group maps to (RFC 2464 §7):
/// 33:33 followed by the group's last four bytes.
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    debug_assert!(group.is_multicast(), "{group} is not a multicast group");
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn ethernet_header(frame: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// `mac` as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x01];

    // Captured with an AF_PACKET socket on the far end of a veth pair, from
    // Linux 6.18's own announcements (`net.ipv4.conf.va.arp_notify=1` and
    // `net.ipv6.conf.va.ndisc_notify=1`, triggered by bringing the link up)
    // for 192.0.2.100/32 and 2001:db8::100/128 on an interface with MAC
    // 02:00:00:00:0a:01.
    const KERNEL_GARP: &str = "ffffffffffff 020000000a01 0806
        0001 0800 06 04 0001 020000000a01 c0000264 000000000000 c0000264";
    const KERNEL_NA: &str = "333300000001 020000000a01 86dd
        60000000 0020 3a ff
        20010db8000000000000000000000100
        ff020000000000000000000000000001
        88 00 ed2c 20000000
        20010db8000000000000000000000100
        02 01 020000000a01";
    // The same NA after the MAC changed to 02:00:00:00:0a:02: the checksum
    // moves by one, as it must.
    const KERNEL_NA_MAC2: &str = "333300000001 020000000a02 86dd
        60000000 0020 3a ff
        20010db8000000000000000000000100
        ff020000000000000000000000000001
        88 00 ed2b 20000000
        20010db8000000000000000000000100
        02 01 020000000a02";

    #[test]
    fn gratuitous_arp_matches_the_kernels_byte_for_byte() {
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        assert_eq!(arp_announcement(MAC, vip).to_vec(), hex(KERNEL_GARP));
    }

    #[test]
    fn arp_senders_are_read_and_other_frames_are_not() {
        let mac = [0x02, 0, 0, 0, 0x0b, 1];
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        let garp = arp_announcement(mac, vip);
        assert_eq!(
            arp_sender(&garp),
            Some(ArpSender {
                operation: 1,
                mac,
                ip: vip
            })
        );
        // Padded to the Ethernet minimum: the same.
        let mut padded = garp.to_vec();
        padded.resize(60, 0);
        assert_eq!(arp_sender(&padded).map(|s| s.ip), Some(vip));
        // Short, not ARP, not Ethernet/IPv4: nothing.
        assert_eq!(arp_sender(&garp[..30]), None);
        assert_eq!(
            arp_sender(&unsolicited_na(mac, "2001:db8::1".parse().unwrap())),
            None
        );
        let mut other = garp;
        other[14 + 3] = 0x06; // protocol type 0x0806
        assert_eq!(arp_sender(&other), None);
        assert_eq!(arp_sender(&[]), None);
    }

    #[test]
    fn na_senders_are_read_and_other_frames_are_not() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        // The kernel's own unsolicited NA: its option names the MAC.
        assert_eq!(
            na_sender(&hex(KERNEL_NA)),
            Some(NaSender { mac: MAC, ip: vip })
        );
        let other = [0x02, 0, 0, 0, 0x0b, 1];
        let na = unsolicited_na(other, vip);
        assert_eq!(
            na_sender(&na),
            Some(NaSender {
                mac: other,
                ip: vip
            })
        );
        // A solicited NA without the option: the Ethernet source.
        let mut bare = na[..14 + 40 + 24].to_vec();
        bare[14 + 4..14 + 6].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(na_sender(&bare).map(|s| s.mac), Some(other));
        // Padding past the IPv6 payload length is not read as options.
        let mut padded = bare.clone();
        padded.extend_from_slice(&[0xee; 8]);
        assert_eq!(na_sender(&padded).map(|s| s.mac), Some(other));
        // Forwarded (hop limit 254), a solicitation, a zero-length option,
        // an option past the end, short, ARP: nothing.
        let mut forwarded = na;
        forwarded[14 + 7] = 254;
        assert_eq!(na_sender(&forwarded), None);
        let mut solicitation = na;
        solicitation[54] = 135;
        assert_eq!(na_sender(&solicitation), None);
        let mut zero = na;
        zero[54 + 25] = 0;
        assert_eq!(na_sender(&zero), None);
        let mut long = na;
        long[54 + 25] = 2;
        assert_eq!(na_sender(&long), None);
        assert_eq!(na_sender(&na[..60]), None);
        assert_eq!(
            na_sender(&arp_announcement(other, Ipv4Addr::new(192, 0, 2, 1))),
            None
        );
        assert_eq!(na_sender(&[]), None);
    }

    /// Run the classic BPF rows `NA_FILTER` uses (ldh, ldb, jeq, ret) over
    /// `frame`, as the kernel would: what it keeps of it.
    fn run_filter(program: &[(u16, u8, u8, u32)], frame: &[u8]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = program[pc];
            let at = k as usize;
            match code {
                0x28 if at + 2 <= frame.len() => {
                    a = u32::from(u16::from_be_bytes([frame[at], frame[at + 1]]))
                }
                0x30 if at < frame.len() => a = u32::from(frame[at]),
                // A load past the end ends the program: dropped.
                0x28 | 0x30 => return 0,
                0x15 => {
                    pc += usize::from(if a == k { jt } else { jf });
                }
                0x06 => return k,
                other => panic!("opcode {other:#x} not modelled"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_na_filter_keeps_advertisements_and_nothing_else() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let na = unsolicited_na(MAC, vip);
        assert_eq!(run_filter(&NA_FILTER, &na), 128);
        assert_eq!(run_filter(&NA_FILTER, &hex(KERNEL_NA)), 128);
        let mut solicitation = na;
        solicitation[54] = 135;
        assert_eq!(run_filter(&NA_FILTER, &solicitation), 0);
        let mut udp = na;
        udp[20] = 17;
        assert_eq!(run_filter(&NA_FILTER, &udp), 0);
        let garp = arp_announcement(MAC, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(run_filter(&NA_FILTER, &garp), 0);
        assert_eq!(run_filter(&NA_FILTER, &na[..40]), 0);
    }

    #[test]
    fn gratuitous_arp_fields() {
        let vip = Ipv4Addr::new(10, 1, 2, 3);
        let f = arp_announcement(MAC, vip);
        assert_eq!(&f[0..6], &BROADCAST, "broadcast destination");
        assert_eq!(&f[6..12], &MAC, "source MAC");
        assert_eq!(&f[12..14], &[0x08, 0x06], "EtherType ARP");
        assert_eq!(&f[20..22], &[0, 1], "a request, not a reply");
        assert_eq!(&f[22..28], &MAC, "sender hardware address");
        assert_eq!(&f[28..32], &vip.octets(), "sender IP is the VIP");
        assert_eq!(&f[38..42], &vip.octets(), "target IP is the VIP");
    }

    #[test]
    fn unsolicited_na_matches_the_kernels_byte_for_byte() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        assert_eq!(unsolicited_na(MAC, vip).to_vec(), hex(KERNEL_NA));
        let mac2 = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x02];
        assert_eq!(unsolicited_na(mac2, vip).to_vec(), hex(KERNEL_NA_MAC2));
    }

    #[test]
    fn unsolicited_na_checksum_verifies() {
        // A receiver sums the message with its checksum in place and gets 0.
        for vip in [
            "2001:db8::100",
            "fd00::1:2:3",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let vip: Ipv6Addr = vip.parse().unwrap();
            let f = unsolicited_na(MAC, vip);
            assert_eq!(icmpv6_checksum(vip, ALL_NODES, &f[54..]), 0, "{vip}");
        }
    }

    #[test]
    fn internet_checksum_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let bytes = hex("0001 f203 f4f5 f6f7");
        assert_eq!(internet_checksum(&bytes), !0xddf2);
        // An odd length pads the last byte with zero.
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn checksum_folds_many_carries() {
        let bytes = vec![0xff; 1 << 16];
        // 32768 words of 0xffff: one's complement sum 0xffff, checksum 0.
        assert_eq!(internet_checksum(&bytes), 0);
    }

    #[test]
    fn announcement_picks_the_frame_and_destination() {
        let a = announcement(MAC, "192.0.2.100".parse().unwrap());
        assert_eq!((a.destination, a.ethertype), (BROADCAST, ETHERTYPE_ARP));
        assert_eq!(a.frame.len(), ARP_FRAME_LEN);
        let a = announcement(MAC, "2001:db8::100".parse().unwrap());
        assert_eq!(
            (a.destination, a.ethertype),
            ([0x33, 0x33, 0, 0, 0, 1], ETHERTYPE_IPV6)
        );
        assert_eq!(a.frame.len(), NA_FRAME_LEN);
        assert_eq!(&a.frame[..6], &a.destination);
    }

    #[test]
    fn multicast_mac_maps_the_last_four_bytes() {
        let g: Ipv6Addr = "ff02::1:ff00:b01".parse().unwrap();
        assert_eq!(multicast_mac(g), [0x33, 0x33, 0xff, 0x00, 0x0b, 0x01]);
        assert_eq!(format_mac(&MAC), "02:00:00:00:0a:01");
    }
}
