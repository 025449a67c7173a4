//! The answer engine: one DNS query in wire format in, one response out.
//!
//! Sans-IO: no sockets, no clock, no randomness, so every behaviour is a pure
//! function of (config, serial, query bytes, transport) and is unit-tested
//! without a runtime. The server loops in [`crate::server`] only move bytes.
//!
//! The wire format is read and written here directly rather than through a
//! DNS library's message types: a query touches only its header, question and
//! OPT record, so parsing borrows the query and lower-cases the name into a
//! stack buffer, and the response is a single `Vec` written front to back.
//! Every owner name in a response is a compression pointer into the question
//! (the answer name, the zone apex as a suffix of it), so nothing is formatted
//! per query and the client's letter case is kept.
//!
//! Behaviour, modelled on knot and NSD as authoritative-only servers:
//! - FORMERR (header only) for anything that does not parse, has QDCOUNT != 1,
//!   trailing bytes, several OPT records or a question of type OPT; NOTIMP
//!   (header only) for opcodes other than QUERY; nothing at all for a response.
//! - REFUSED, without AA, outside every zone, for classes other than IN, and
//!   for zone transfers (AXFR/IXFR are not offered).
//! - ANY is answered with every RRset at the name (not RFC 8482's minimal
//!   answer): the zones are small, and the UDP size limit and TC bound the
//!   amplification exactly as for an A query.
//! - No authority section on positive answers (minimal responses); the SOA in
//!   the authority section on NXDOMAIN and NODATA; `ns1.<zone>` glue after NS.
//! - EDNS(0): OPT echoed with our payload size and the client's DO bit; BADVERS
//!   for versions above 0; EDNS options are validated and ignored; a TSIG
//!   record is ignored (the response is unsigned).

use std::collections::BTreeMap;
use std::net::IpAddr;

use fabric::model::{self, Config};

/// Which transport a query arrived on: it decides the response size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 bytes without EDNS, the negotiated size (at most 1232) with it.
    Udp,
    /// TCP: up to 65535 bytes, the largest a 2-byte length prefix frames.
    Tcp,
}

const HEADER_LEN: usize = 12;
/// A name on the wire is at most 255 bytes, of which the final root label is one.
const NAME_MAX_BYTES: usize = 254;
/// Each label takes at least two bytes (length and one character).
const LABELS_MAX: usize = NAME_MAX_BYTES / 2;

const FLAG_QR: u8 = 0x80;
const MASK_OPCODE: u8 = 0x78;
const FLAG_AA: u8 = 0x04;
const FLAG_TC: u8 = 0x02;
const FLAG_RD: u8 = 0x01;
const FLAG_CD: u8 = 0x10;

const TYPE_A: u16 = 1;
const TYPE_NS: u16 = 2;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const RCODE_NOERROR: u16 = 0;
const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;
const RCODE_BADVERS: u16 = 16;

/// Our advertised EDNS UDP payload size (DNS flag day 2020).
const EDNS_PAYLOAD_BYTES: u16 = 1232;
const UDP_PLAIN_BYTES: usize = 512;
const TCP_MAX_BYTES: usize = 65535;

const SOA_REFRESH_SECS: u32 = 3600;
const SOA_RETRY_SECS: u32 = 600;
const SOA_EXPIRE_SECS: u32 = 86400;

const LABEL_NS1: &[u8] = b"\x03ns1";
const LABEL_HOSTMASTER: &[u8] = b"\x0ahostmaster";

/// The authoritative data of every configured zone, ready to answer from.
///
/// Immutable once built: a config change builds a new `Engine` and swaps it
/// in whole (see [`crate::EngineHandle`]).
#[derive(Debug, Clone)]
pub struct Engine {
    /// Zones by apex, as lower-case wire-format labels without the root label.
    zones: BTreeMap<Box<[u8]>, Zone>,
    serial: u32,
}

#[derive(Debug, Clone)]
struct Zone {
    /// TTL of SOA and NS.
    ttl_secs: u32,
    /// The SOA minimum: the negative-caching TTL (RFC 2308). The config has one
    /// TTL per zone for both; they are kept apart so that the negative TTL
    /// stays min(SOA TTL, minimum) if the config ever splits them.
    minimum_secs: u32,
    /// Every name that exists in the zone (same key format as the zones):
    /// the apex, GSLB names, `ns1`, and the empty non-terminals between them.
    nodes: BTreeMap<Box<[u8]>, Node>,
    /// Addresses of `ns1.<zone>`, sent as glue after the NS record.
    glue: Node,
}

impl Zone {
    /// TTL of the SOA in negative answers: min(SOA TTL, SOA minimum) (RFC 2308).
    fn negative_ttl_secs(&self) -> u32 {
        self.ttl_secs.min(self.minimum_secs)
    }
}

/// The address records at one name; both lists empty for an empty non-terminal.
#[derive(Debug, Clone, Default)]
struct Node {
    ttl_secs: u32,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

impl Node {
    fn with_addresses(ttl_secs: u32, addresses: impl IntoIterator<Item = IpAddr>) -> Node {
        let mut node = Node {
            ttl_secs,
            ..Node::default()
        };
        for address in addresses {
            // An RRset holds each record once, whatever the config repeats.
            match address {
                IpAddr::V4(v4) if !node.v4.contains(&v4.octets()) => node.v4.push(v4.octets()),
                IpAddr::V6(v6) if !node.v6.contains(&v6.octets()) => node.v6.push(v6.octets()),
                _ => {}
            }
        }
        node
    }
}

impl Engine {
    /// Build from a validated config: one zone per `dns.zones` entry; each GSLB
    /// service's fqdn answers A (IPv4 VIPs) and AAAA (IPv6 VIPs) with the VIPs
    /// of its member virtual services, TTL `ttl_secs`.
    ///
    /// Each zone's apex has SOA (`ns1.<zone>`, `hostmaster.<zone>`, `serial`)
    /// and NS `ns1.<zone>`; `ns1.<zone>` has the address of `dns.listen` unless
    /// that is unspecified. A GSLB service named `ns1.<zone>` replaces that
    /// address. A name in nested zones belongs to the closest one. Entries that
    /// would fail validation are skipped rather than trusted.
    pub fn from_config(config: &Config, serial: u32) -> Engine {
        let mut zones = BTreeMap::new();
        let Some(dns) = &config.dns else {
            return Engine { zones, serial };
        };
        for zone_config in &dns.zones {
            let Some(apex) =
                model::normalize_name(&zone_config.name).map(|n| wire_name(&n).into_boxed_slice())
            else {
                continue;
            };
            let mut nodes = BTreeMap::new();
            nodes.insert(apex.clone(), Node::default());
            let listen = dns.listen.ip();
            if !listen.is_unspecified() {
                let ns1 = [LABEL_NS1, &apex[..]].concat().into_boxed_slice();
                nodes.insert(ns1, Node::with_addresses(zone_config.ttl_secs, [listen]));
            }
            let zone = Zone {
                ttl_secs: zone_config.ttl_secs,
                minimum_secs: zone_config.ttl_secs,
                nodes,
                glue: Node::default(),
            };
            zones.insert(apex, zone);
        }
        let mut engine = Engine { zones, serial };
        for service in &config.gslb_services {
            engine.add_service(config, service);
        }
        for (apex, zone) in engine.zones.iter_mut() {
            let ns1 = [LABEL_NS1, &apex[..]].concat();
            zone.glue = zone.nodes.get(&ns1[..]).cloned().unwrap_or_default();
        }
        engine
    }

    fn add_service(&mut self, config: &Config, service: &fabric::model::GslbService) {
        let Some(name) = model::normalize_name(&service.fqdn).map(|n| wire_name(&n)) else {
            return;
        };
        let starts = label_starts(&name);
        let Some(zone_label) = starts
            .iter()
            .position(|&start| self.zones.contains_key(&name[start..]))
        else {
            return;
        };
        let Some(zone) = self.zones.get_mut(&name[starts[zone_label]..]) else {
            return;
        };
        let vips = service
            .members
            .iter()
            .filter_map(|m| config.virtual_service(m))
            .map(|vs| vs.vip);
        zone.nodes.insert(
            name.clone().into_boxed_slice(),
            Node::with_addresses(service.ttl_secs, vips),
        );
        // Names between the service and the apex exist without records: they
        // must answer NODATA, not NXDOMAIN (RFC 8020).
        for &start in starts.iter().take(zone_label).skip(1) {
            zone.nodes.entry(name[start..].into()).or_default();
        }
    }

    /// Answer one wire-format query.
    ///
    /// `None` when nothing must be sent: fewer than 2 bytes (no ID to echo),
    /// or a message with QR=1 (answering responses invites loops). Anything
    /// else gets a response, malformed input a FORMERR echoing what of the
    /// header is there. Never panics.
    pub fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if query.len() < 2 || query.get(2).is_some_and(|flags| flags & FLAG_QR != 0) {
            return None;
        }
        let request = match Request::parse(query) {
            Ok(request) => request,
            Err(rcode) => return Some(header_only(query, rcode)),
        };
        let mut response = Response::start(&request);
        self.resolve(&request, &mut response);
        Some(response.finish(&request, request.size_limit(transport)))
    }

    fn resolve(&self, request: &Request<'_>, response: &mut Response) {
        if request.edns.is_some_and(|edns| edns.version > 0) {
            response.rcode = RCODE_BADVERS;
            return;
        }
        let qtype = request.qtype;
        let zone = match request.qclass {
            CLASS_IN if !matches!(qtype, TYPE_AXFR | TYPE_IXFR) => self.zone_of(&request.name),
            _ => None,
        };
        let Some((zone_label, zone)) = zone else {
            response.rcode = RCODE_REFUSED;
            return;
        };
        response.authoritative = true;
        let apex = Pointer::to_label(&request.name, zone_label);
        let Some(node) = zone.nodes.get(request.name.bytes()) else {
            response.rcode = RCODE_NXDOMAIN;
            response.soa(Section::Authority, apex, zone, self.serial);
            return;
        };
        let any = qtype == TYPE_ANY;
        let at_apex = zone_label == 0;
        if at_apex && (any || qtype == TYPE_SOA) {
            response.soa(Section::Answer, apex, zone, self.serial);
        }
        let with_ns = at_apex && (any || qtype == TYPE_NS);
        if with_ns {
            response.ns(apex, zone.ttl_secs);
        }
        if any || qtype == TYPE_A || qtype == TYPE_AAAA {
            response.addresses(node, any || qtype == TYPE_A, any || qtype == TYPE_AAAA);
        }
        if response.count(Section::Answer) == 0 {
            // NODATA: an existing name (or empty non-terminal) without this type.
            response.soa(Section::Authority, apex, zone, self.serial);
        }
        if with_ns {
            response.glue(apex, &zone.glue);
        }
    }

    /// The closest enclosing zone of `name` and the index of its apex label.
    fn zone_of(&self, name: &LowerName) -> Option<(usize, &Zone)> {
        (0..name.label_count).find_map(|i| self.zones.get(name.suffix(i)).map(|zone| (i, zone)))
    }
}

/// A normalized (lower-case, dotted, valid) name in wire format, root label omitted.
fn wire_name(normalized: &str) -> Vec<u8> {
    let mut wire = Vec::with_capacity(normalized.len() + 1);
    for label in normalized.split('.') {
        debug_assert!(
            (1..=63).contains(&label.len()),
            "normalize_name admits only 1-63 byte labels"
        );
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire
}

/// Offsets of each label in a wire name (root label omitted), first label first.
fn label_starts(wire: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        starts.push(at);
        at += 1 + wire[at] as usize;
    }
    starts
}

/// The response to a message that cannot be answered properly: the header
/// alone, echoing the ID, and the opcode and RD bit when the header is whole.
fn header_only(query: &[u8], rcode: u16) -> Vec<u8> {
    debug_assert!(query.len() >= 2 && rcode < 16);
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&query[..2]);
    let echoed = if query.len() >= HEADER_LEN {
        query[2] & (MASK_OPCODE | FLAG_RD)
    } else {
        0
    };
    out[2] = FLAG_QR | echoed;
    out[3] = rcode as u8;
    out
}

/// The question name, lower-cased, in wire format without the root label.
struct LowerName {
    bytes: [u8; NAME_MAX_BYTES],
    len: usize,
    starts: [u8; LABELS_MAX],
    label_count: usize,
}

impl LowerName {
    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The name from label `label` on: the wire form of that ancestor.
    fn suffix(&self, label: usize) -> &[u8] {
        &self.bytes[self.starts[label] as usize..self.len]
    }
}

#[derive(Clone, Copy, Debug)]
struct Edns {
    payload_bytes: u16,
    version: u8,
    dnssec_ok: bool,
}

/// A query that parsed: borrowed question bytes plus what the answer needs.
struct Request<'q> {
    id: [u8; 2],
    /// Opcode and RD from the query, already in response bit positions.
    echoed_flags: u8,
    checking_disabled: bool,
    /// Name, type and class exactly as the client sent them.
    question: &'q [u8],
    name: LowerName,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
}

impl<'q> Request<'q> {
    /// Parse a query whose QR bit is clear; `Err(rcode)` for FORMERR or NOTIMP.
    fn parse(msg: &'q [u8]) -> Result<Request<'q>, u16> {
        if msg.len() < HEADER_LEN {
            return Err(RCODE_FORMERR);
        }
        if msg[2] & MASK_OPCODE != 0 {
            return Err(RCODE_NOTIMP);
        }
        let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        if count(4) != 1 {
            return Err(RCODE_FORMERR);
        }
        let (name, name_end) = parse_question_name(msg, HEADER_LEN).ok_or(RCODE_FORMERR)?;
        let qtype = read_u16(msg, name_end).ok_or(RCODE_FORMERR)?;
        let qclass = read_u16(msg, name_end + 2).ok_or(RCODE_FORMERR)?;
        if qtype == TYPE_OPT {
            return Err(RCODE_FORMERR);
        }
        let question_end = name_end + 4;
        let mut at = question_end;
        let mut edns = None;
        for (section, n) in [
            (Section::Answer, count(6)),
            (Section::Authority, count(8)),
            (Section::Additional, count(10)),
        ] {
            for _ in 0..n {
                at = skip_record(msg, at, section, &mut edns).ok_or(RCODE_FORMERR)?;
            }
        }
        if at != msg.len() {
            return Err(RCODE_FORMERR);
        }
        Ok(Request {
            id: [msg[0], msg[1]],
            echoed_flags: msg[2] & (MASK_OPCODE | FLAG_RD),
            checking_disabled: msg[3] & FLAG_CD != 0,
            question: &msg[HEADER_LEN..question_end],
            name,
            qtype,
            qclass,
            edns,
        })
    }

    fn size_limit(&self, transport: Transport) -> usize {
        match (transport, self.edns) {
            (Transport::Tcp, _) => TCP_MAX_BYTES,
            (Transport::Udp, None) => UDP_PLAIN_BYTES,
            (Transport::Udp, Some(edns)) => {
                (edns.payload_bytes as usize).clamp(UDP_PLAIN_BYTES, EDNS_PAYLOAD_BYTES as usize)
            }
        }
    }
}

fn read_u16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

fn read_u32(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *msg.get(at)?,
        *msg.get(at + 1)?,
        *msg.get(at + 2)?,
        *msg.get(at + 3)?,
    ]))
}

/// The question name at `at`, lower-cased, and where it ends. Compression is
/// refused: the question is the first name in the message, there is nothing
/// before it to point at.
fn parse_question_name(msg: &[u8], mut at: usize) -> Option<(LowerName, usize)> {
    let mut name = LowerName {
        bytes: [0; NAME_MAX_BYTES],
        len: 0,
        starts: [0; LABELS_MAX],
        label_count: 0,
    };
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 || name.len + 1 + len > NAME_MAX_BYTES {
            return None;
        }
        let label = msg.get(at..at + len)?;
        debug_assert!(name.label_count < LABELS_MAX);
        name.starts[name.label_count] = name.len as u8;
        name.label_count += 1;
        name.bytes[name.len] = len as u8;
        for (dst, src) in name.bytes[name.len + 1..name.len + 1 + len]
            .iter_mut()
            .zip(label)
        {
            *dst = src.to_ascii_lowercase();
        }
        name.len += 1 + len;
        at += len;
    }
}

/// Skip a possibly compressed name; returns its end and whether it is the root.
/// Pointers are not followed: only the shape of the name is checked here.
fn skip_name(msg: &[u8], mut at: usize) -> Option<(usize, bool)> {
    let first = at;
    let mut wire_len = 0;
    loop {
        let len = *msg.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some((at + 1, at == first)),
            0x00 => {
                wire_len += 1 + len;
                if wire_len > NAME_MAX_BYTES {
                    return None;
                }
                at += 1 + len;
            }
            0xC0 => {
                msg.get(at + 1)?;
                return Some((at + 2, false));
            }
            _ => return None, // 0x40 and 0x80: extended label types, obsolete
        }
    }
}

/// Skip one resource record, checking its framing; an OPT record in the
/// additional section is read into `edns`. `None` means FORMERR.
fn skip_record(msg: &[u8], at: usize, section: Section, edns: &mut Option<Edns>) -> Option<usize> {
    let (at, owner_is_root) = skip_name(msg, at)?;
    let rtype = read_u16(msg, at)?;
    let class = read_u16(msg, at + 2)?;
    let ttl = read_u32(msg, at + 4)?;
    let rdlen = read_u16(msg, at + 8)? as usize;
    let rdata_at = at + 10;
    let rdata = msg.get(rdata_at..rdata_at + rdlen)?;
    if rtype == TYPE_OPT {
        // RFC 6891 6.1.1: one OPT, owned by the root, in the additional section.
        if section != Section::Additional || edns.is_some() || !owner_is_root {
            return None;
        }
        let mut option = 0;
        while option < rdata.len() {
            let option_len = read_u16(rdata, option + 2)? as usize;
            option += 4 + option_len;
        }
        if option != rdata.len() {
            return None;
        }
        *edns = Some(Edns {
            payload_bytes: class,
            version: (ttl >> 16) as u8,
            dnssec_ok: ttl & 0x8000 != 0,
        });
    }
    Some(rdata_at + rdlen)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    Additional,
}

/// A compression pointer to a name inside the echoed question.
#[derive(Clone, Copy, Debug)]
struct Pointer(u16);

impl Pointer {
    /// The question name itself.
    const QNAME: Pointer = Pointer(HEADER_LEN as u16);

    /// The ancestor of the question name starting at label `label`.
    fn to_label(name: &LowerName, label: usize) -> Pointer {
        // The question starts at offset 12 and is at most 255 bytes long, far
        // below the 14-bit pointer limit.
        Pointer((HEADER_LEN + name.starts[label] as usize) as u16)
    }

    /// A pointer to `offset` in the response, if a pointer can reach it.
    fn to_offset(offset: usize) -> Option<Pointer> {
        u16::try_from(offset)
            .ok()
            .filter(|&o| o < 0x4000)
            .map(Pointer)
    }

    fn bytes(self) -> [u8; 2] {
        (0xC000 | self.0).to_be_bytes()
    }
}

/// A response being written front to back: header, echoed question, records.
struct Response {
    buf: Vec<u8>,
    counts: [u16; 3],
    rcode: u16,
    authoritative: bool,
}

impl Response {
    fn start(request: &Request<'_>) -> Response {
        let mut buf = Vec::with_capacity(UDP_PLAIN_BYTES);
        buf.extend_from_slice(&request.id);
        buf.extend_from_slice(&[0; HEADER_LEN - 2]); // flags and counts, set by `finish`
        buf.extend_from_slice(request.question);
        Response {
            buf,
            counts: [0; 3],
            rcode: RCODE_NOERROR,
            authoritative: false,
        }
    }

    fn count(&self, section: Section) -> u16 {
        self.counts[section as usize]
    }

    /// Count one more record. Saturating: a section with 65535 records is far
    /// past any size limit, so that response is replaced by a truncated one.
    fn bump(&mut self, section: Section) {
        let count = &mut self.counts[section as usize];
        *count = count.saturating_add(1);
    }

    /// Write a record's owner (encoded), type, class and TTL; returns where
    /// RDLENGTH goes, for [`end_rdata`](Self::end_rdata).
    fn record(&mut self, section: Section, owner: &[u8], rtype: u16, ttl_secs: u32) -> usize {
        self.bump(section);
        self.buf.extend_from_slice(owner);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl_secs.to_be_bytes());
        let rdlength_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        rdlength_at
    }

    fn end_rdata(&mut self, rdlength_at: usize) {
        let rdlength = self.buf.len() - rdlength_at - 2;
        // Every record we write is far smaller; a bigger one would be a bug here.
        debug_assert!(rdlength <= u16::MAX as usize, "rdata of {rdlength} bytes");
        self.buf[rdlength_at..rdlength_at + 2].copy_from_slice(&(rdlength as u16).to_be_bytes());
    }

    /// The zone's SOA: TTL the zone's in the answer section, the negative TTL
    /// in the authority section.
    fn soa(&mut self, section: Section, apex: Pointer, zone: &Zone, serial: u32) {
        let ttl_secs = match section {
            Section::Authority => zone.negative_ttl_secs(),
            _ => zone.ttl_secs,
        };
        let at = self.record(section, &apex.bytes(), TYPE_SOA, ttl_secs);
        self.buf.extend_from_slice(LABEL_NS1);
        self.buf.extend_from_slice(&apex.bytes());
        self.buf.extend_from_slice(LABEL_HOSTMASTER);
        self.buf.extend_from_slice(&apex.bytes());
        for value in [
            serial,
            SOA_REFRESH_SECS,
            SOA_RETRY_SECS,
            SOA_EXPIRE_SECS,
            zone.minimum_secs,
        ] {
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
        self.end_rdata(at);
    }

    fn ns(&mut self, apex: Pointer, ttl_secs: u32) {
        let at = self.record(Section::Answer, &apex.bytes(), TYPE_NS, ttl_secs);
        self.buf.extend_from_slice(LABEL_NS1);
        self.buf.extend_from_slice(&apex.bytes());
        self.end_rdata(at);
    }

    /// A and/or AAAA records of `node`, owned by the question name.
    fn addresses(&mut self, node: &Node, v4: bool, v6: bool) {
        let owner = Pointer::QNAME.bytes();
        let v4s = node.v4.iter().filter(|_| v4).map(|a| (TYPE_A, &a[..]));
        let v6s = node.v6.iter().filter(|_| v6).map(|a| (TYPE_AAAA, &a[..]));
        for (rtype, rdata) in v4s.chain(v6s) {
            let at = self.record(Section::Answer, &owner, rtype, node.ttl_secs);
            self.buf.extend_from_slice(rdata);
            self.end_rdata(at);
        }
    }

    /// `ns1.<zone>` addresses in the additional section, so a resolver needs
    /// no second query to reach the name server it was just told about.
    fn glue(&mut self, apex: Pointer, glue: &Node) {
        // The first owner is written as the label `ns1` plus a pointer to the
        // apex; later ones point at that first one.
        let mut spelled = [0u8; 6];
        spelled[..4].copy_from_slice(LABEL_NS1);
        spelled[4..].copy_from_slice(&apex.bytes());
        let mut first: Option<Pointer> = None;
        let v4s = glue.v4.iter().map(|a| (TYPE_A, &a[..]));
        let v6s = glue.v6.iter().map(|a| (TYPE_AAAA, &a[..]));
        for (rtype, rdata) in v4s.chain(v6s) {
            let owner_at = self.buf.len();
            let at = match first {
                Some(pointer) => {
                    self.record(Section::Additional, &pointer.bytes(), rtype, glue.ttl_secs)
                }
                None => {
                    first = Pointer::to_offset(owner_at);
                    self.record(Section::Additional, &spelled, rtype, glue.ttl_secs)
                }
            };
            self.buf.extend_from_slice(rdata);
            self.end_rdata(at);
        }
    }

    /// OPT: our payload size, the high bits of the rcode, version 0, DO echoed.
    fn opt(&mut self, edns: Edns) {
        self.bump(Section::Additional);
        self.buf.push(0); // root owner
        self.buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
        self.buf
            .extend_from_slice(&EDNS_PAYLOAD_BYTES.to_be_bytes());
        self.buf.push((self.rcode >> 4) as u8);
        self.buf.push(0); // version
        self.buf
            .extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]); // no options
    }

    /// Close the response; past `limit_bytes`, replace it by a truncated one
    /// (TC, question and OPT only) so that the client retries over TCP.
    fn finish(mut self, request: &Request<'_>, limit_bytes: usize) -> Vec<u8> {
        if let Some(edns) = request.edns {
            self.opt(edns);
        }
        let mut truncated = false;
        if self.buf.len() > limit_bytes {
            truncated = true;
            self.buf.truncate(HEADER_LEN + request.question.len());
            self.counts = [0; 3];
            if let Some(edns) = request.edns {
                self.opt(edns);
            }
            debug_assert!(
                self.buf.len() <= limit_bytes,
                "a question and an OPT fit in 512 bytes"
            );
        }
        let mut flags = FLAG_QR | request.echoed_flags;
        if self.authoritative {
            flags |= FLAG_AA;
        }
        if truncated {
            flags |= FLAG_TC;
        }
        self.buf[2] = flags;
        let cd = if request.checking_disabled {
            FLAG_CD
        } else {
            0
        };
        self.buf[3] = cd | (self.rcode & 0x0F) as u8;
        let counts = [1, self.counts[0], self.counts[1], self.counts[2]];
        for (i, count) in counts.iter().enumerate() {
            self.buf[4 + 2 * i..6 + 2 * i].copy_from_slice(&count.to_be_bytes());
        }
        self.buf
    }
}
