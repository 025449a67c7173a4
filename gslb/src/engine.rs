//! The answer engine: one DNS query in wire format in, one response out.
//!
//! Sans-IO: no sockets, no clock, no randomness, so every behaviour is a pure
//! function of (config, serial, health snapshot, query bytes, client address,
//! transport, turn) and is unit-tested without a runtime. GSLB names are
//! answered by [`crate::policy`]. The server loops in [`crate::server`] only move bytes.
//!
//! The wire format is read and written here directly rather than through a
//! DNS library's message types: a query touches only its header, question and
//! OPT record, so parsing borrows the query and lower-cases the name into a
//! stack buffer, and the response is a single `Vec` written front to back.
//! Every owner name in a response is a compression pointer into the question
//! (the answer name, the zone apex as a suffix of it) or into a name written
//! before it (a CNAME's or MX's target), so nothing is formatted per query and
//! the client's letter case is kept. Static RDATA is rendered once per engine,
//! in-zone names as their labels plus a pointer patched per response.
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
//!   the authority section on NXDOMAIN and NODATA (also at the end of a CNAME
//!   chain); A/AAAA of in-zone NS, MX and SRV targets in the additional
//!   section while they fit. CNAMEs are followed inside the zone.
//! - Static records (`fabric::zone`): a zone text's SOA and NS replace the
//!   generated ones. docs/dns.md has the whole behaviour and how it compares
//!   with knot.
//! - EDNS(0): OPT echoed with our payload size and the client's DO bit; BADVERS
//!   for versions above 0; EDNS Client Subnet validated and echoed with the
//!   answer's scope, other options validated and ignored; a TSIG
//!   record is ignored (the response is unsigned).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fabric::model::{self, Config};
use fabric::zone::{self, RecordData, ZoneRecord};

use crate::metrics::Metrics;
use crate::policy::{self, Choice, Client, Family, Outcome, Service, ServiceHealth, Sites};

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
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_MX: u16 = 15;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
/// EDNS Client Subnet (RFC 7871).
const OPTION_ECS: u16 = 8;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const RCODE_NOERROR: u16 = 0;
const RCODE_FORMERR: u16 = 1;
const RCODE_SERVFAIL: u16 = 2;
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
    zones: Arc<BTreeMap<Box<[u8]>, Zone>>,
    /// GSLB services in config order (`None`: an entry that resolves to
    /// nothing); nodes refer to them by index.
    services: Arc<[Option<Service>]>,
    /// Sites and the topology table.
    sites: Arc<Sites>,
    /// Member health by service index, from [`crate::health::Tracker`];
    /// shorter than `services` (or empty) means unknown, treated as up.
    health: Arc<[ServiceHealth]>,
    /// Queries answered from a GSLB service: round robin's turn, the
    /// weighted draw. Shared by every engine of one server, so a health or
    /// config swap does not restart the rotation.
    turn: Arc<AtomicU64>,
    /// Counters, shared like `turn`.
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone)]
struct Zone {
    /// The SOA, for the authority section of negative answers (the apex node
    /// has it too, for SOA and ANY queries).
    soa: Rdata,
    /// TTL of the SOA in negative answers: min(SOA TTL, SOA minimum) (RFC 2308).
    negative_ttl_secs: u32,
    /// Every name that exists in the zone (same key format as the zones):
    /// the apex, static and GSLB names, `ns1` when generated, and the empty
    /// non-terminals between them.
    nodes: BTreeMap<Box<[u8]>, Node>,
}

/// What one name holds; nothing at all for an empty non-terminal.
#[derive(Debug, Clone, Default)]
struct Node {
    /// The GSLB service answering A and AAAA here (index into
    /// `Engine::services`); a GSLB name has no static records.
    gslb: Option<usize>,
    /// Static RRsets (and the apex's SOA and NS), SOA first then by type,
    /// each type once.
    rrsets: Vec<Rrset>,
}

impl Node {
    fn rrset(&self, rtype: u16) -> Option<&Rrset> {
        self.rrsets.iter().find(|rrset| rrset.rtype == rtype)
    }

    fn add(&mut self, rtype: u16, ttl_secs: u32, rdata: Rdata) {
        match self.rrsets.iter_mut().find(|rrset| rrset.rtype == rtype) {
            Some(rrset) => rrset.rdatas.push(rdata),
            None => {
                self.rrsets.push(Rrset {
                    rtype,
                    ttl_secs,
                    rdatas: vec![rdata],
                });
                // SOA first, as a zone file starts; then by type.
                self.rrsets
                    .sort_by_key(|rrset| (rrset.rtype != TYPE_SOA, rrset.rtype));
            }
        }
    }

    fn has_addresses(&self) -> bool {
        self.gslb.is_some() || self.rrset(TYPE_A).is_some() || self.rrset(TYPE_AAAA).is_some()
    }
}

/// The records of one name and type.
#[derive(Debug, Clone)]
struct Rrset {
    rtype: u16,
    ttl_secs: u32,
    rdatas: Vec<Rdata>,
}

/// One record's RDATA, rendered once when the engine is built. A name in it
/// that lies in the zone is written as its labels below the apex plus a
/// compression pointer to the apex, patched per response (the apex is always
/// a suffix of the question); other names are written in full.
#[derive(Debug, Clone)]
struct Rdata {
    bytes: Box<[u8]>,
    /// Where in `bytes` an apex pointer goes (two bytes each).
    apex_at: Box<[u16]>,
    /// The name that additional processing (NS, MX, SRV) or CNAME chasing
    /// looks up: its offset in `bytes` and its key, when it is in the zone.
    target: Option<(u16, Box<[u8]>)>,
    /// When the target (the last thing in the RDATA) shares more labels with
    /// the record's owner than the apex: where that shared suffix starts in
    /// the target's key, and how many labels it has. An answer owned by the
    /// question then points into the question there, as knot compresses
    /// (`mx-1.manymx.example.com` under `manymx.example.com` is 7 bytes).
    owner_cut: Option<(u16, u8)>,
}

impl Rdata {
    fn fixed(bytes: &[u8]) -> Rdata {
        Rdata {
            bytes: bytes.into(),
            apex_at: Box::new([]),
            target: None,
            owner_cut: None,
        }
    }
}

/// Builds one zone's RDATA: names relative to `apex` (its key).
struct RdataWriter<'a> {
    apex: &'a [u8],
    bytes: Vec<u8>,
    apex_at: Vec<u16>,
    target: Option<(u16, Box<[u8]>)>,
}

impl<'a> RdataWriter<'a> {
    fn new(apex: &'a [u8]) -> Self {
        RdataWriter {
            apex,
            bytes: Vec::new(),
            apex_at: Vec::new(),
            target: None,
        }
    }

    fn u16(mut self, value: u16) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u32(mut self, value: u32) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A name given as its key (wire labels, no root label; empty: the root).
    fn name_key(mut self, key: &[u8], is_target: bool) -> Self {
        let at = self.bytes.len();
        match apex_suffix_at(key, self.apex) {
            Some(apex_start) => {
                self.bytes.extend_from_slice(&key[..apex_start]);
                self.apex_at.push(self.bytes.len() as u16);
                self.bytes.extend_from_slice(&[0xC0, 0]);
                if is_target {
                    self.target = Some((at as u16, key.into()));
                }
            }
            None => {
                self.bytes.extend_from_slice(key);
                self.bytes.push(0);
            }
        }
        self
    }

    /// A normalized name ("" is the root).
    fn name(self, normalized: &str, is_target: bool) -> Self {
        let key = if normalized.is_empty() {
            Vec::new()
        } else {
            wire_name(normalized)
        };
        self.name_key(&key, is_target)
    }

    fn finish(self) -> Rdata {
        debug_assert!(self.bytes.len() <= u16::MAX as usize);
        Rdata {
            bytes: self.bytes.into(),
            apex_at: self.apex_at.into(),
            target: self.target,
            owner_cut: None,
        }
    }
}

/// Where the apex starts in `key` when `key` is the apex or below it.
fn apex_suffix_at(key: &[u8], apex: &[u8]) -> Option<usize> {
    label_starts(key)
        .into_iter()
        .find(|&start| key[start..] == *apex)
}

/// The wire RDATA of a static record owned by `owner` (a key).
fn static_rdata(data: &RecordData, apex: &[u8], owner: &[u8]) -> Rdata {
    let mut rdata = rdata_of(data, apex);
    if let Some((name_at, key)) = &rdata.target {
        debug_assert_eq!(
            *name_at as usize + key.len() - apex.len() + 2,
            rdata.bytes.len()
        );
        let (key_starts, owner_starts) = (label_starts(key), label_starts(owner));
        let shared = key_starts
            .iter()
            .rev()
            .zip(owner_starts.iter().rev())
            .take_while(|(&k, &o)| key[k..] == owner[o..])
            .count();
        if shared > label_starts(apex).len() {
            let cut = key_starts[key_starts.len() - shared];
            rdata.owner_cut = Some((cut as u16, shared as u8));
        }
    }
    rdata
}

fn rdata_of(data: &RecordData, apex: &[u8]) -> Rdata {
    let writer = RdataWriter::new(apex);
    match data {
        RecordData::A(v4) => Rdata::fixed(&v4.octets()),
        RecordData::Aaaa(v6) => Rdata::fixed(&v6.octets()),
        RecordData::Cname(target) | RecordData::Ns(target) => writer.name(target, true).finish(),
        RecordData::Mx {
            preference,
            exchange,
        } => writer.u16(*preference).name(exchange, true).finish(),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => writer
            .u16(*priority)
            .u16(*weight)
            .u16(*port)
            .name(target, true)
            .finish(),
        RecordData::Txt(strings) => {
            let mut bytes = Vec::new();
            for s in strings {
                debug_assert!(
                    s.len() <= 255,
                    "validated: TXT strings of 255 bytes at most"
                );
                bytes.push(s.len() as u8);
                bytes.extend_from_slice(s);
            }
            Rdata::fixed(&bytes)
        }
        RecordData::Soa(soa) => writer
            .name(&soa.mname, false)
            .name(&soa.rname, false)
            .u32(soa.serial)
            .u32(soa.refresh_secs)
            .u32(soa.retry_secs)
            .u32(soa.expire_secs)
            .u32(soa.minimum_secs)
            .finish(),
    }
}

impl Engine {
    /// Build from a validated config: one zone per `dns.zones` entry with its
    /// static records (`records` and `zone_text`); each GSLB service's fqdn
    /// answers A (IPv4 VIPs) and AAAA (IPv6 VIPs) with the VIPs of its member
    /// virtual services, TTL `ttl_secs`.
    ///
    /// A zone without a static SOA gets one: `ns1.<zone>`,
    /// `hostmaster.<zone>`, `serial`. A zone without static NS gets NS
    /// `ns1.<zone>`, and `ns1.<zone>` has the address of `dns.listen` unless
    /// that is unspecified or `ns1` has addresses of its own (static, or a
    /// GSLB service of that name). A name in nested zones belongs to the
    /// closest one. Entries that would fail validation are skipped rather
    /// than trusted.
    pub fn from_config(config: &Config, serial: u32) -> Engine {
        let mut zones = BTreeMap::new();
        let sites = Sites::from_config(config);
        let services: Vec<Option<Service>> = config
            .gslb_services
            .iter()
            .map(|s| Service::from_config(config, &sites, s))
            .collect();
        if let Some(dns) = &config.dns {
            for (i, zone_config) in dns.zones.iter().enumerate() {
                let Some(apex) = model::normalize_name(&zone_config.name)
                    .map(|n| wire_name(&n).into_boxed_slice())
                else {
                    continue;
                };
                let records =
                    zone::zone_records(zone_config, &format!("dns.zones[{i}]")).unwrap_or_default();
                let zone = build_zone(&apex, zone_config.ttl_secs, &records, dns, serial);
                zones.insert(apex, zone);
            }
        }
        for (index, service) in services.iter().enumerate() {
            if let Some(service) = service {
                add_service(&mut zones, index, service);
            }
        }
        Engine {
            metrics: Arc::new(Metrics::for_services(&services, None)),
            zones: Arc::new(zones),
            services: services.into(),
            sites: Arc::new(sites),
            health: Arc::from(Vec::new()),
            turn: Arc::new(AtomicU64::new(0)),
        }
    }

    /// This engine with `health` (by service index, as
    /// [`services`](Self::services)); zones and services are shared, not
    /// copied.
    pub fn with_health(&self, health: Vec<ServiceHealth>) -> Engine {
        Engine {
            health: health.into(),
            ..self.clone()
        }
    }

    /// A new engine (after a config change) that continues this one's
    /// rotation and counters.
    pub fn continuing(mut self, previous: &Engine) -> Engine {
        self.turn = previous.turn.clone();
        self.metrics = Arc::new(Metrics::for_services(
            &self.services,
            Some(&previous.metrics),
        ));
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The GSLB services, in config order; `None` for an entry that
    /// resolves to nothing.
    pub fn services(&self) -> &[Option<Service>] {
        &self.services
    }

    /// The sites.
    pub fn sites(&self) -> &Sites {
        &self.sites
    }

    /// The health the engine answers with, by service index.
    pub fn health(&self, service: usize) -> ServiceHealth {
        self.health.get(service).cloned().unwrap_or_default()
    }

    /// The decision the next query of `family` for service `index` from
    /// `client` gets (what `explain` reports), without taking a turn.
    pub fn peek_decision(&self, index: usize, client: &Client, family: Family) -> Option<Choice> {
        let service = self.services.get(index)?.as_ref()?;
        let turn = self.turn.load(Ordering::Relaxed);
        Some(self.decide(index, service, client, family, turn))
    }

    /// The service index answering at `name` (normalized), if a GSLB one.
    pub fn service_at(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.fqdn == name))
    }

    fn decide(
        &self,
        index: usize,
        service: &Service,
        client: &Client,
        family: Family,
        turn: u64,
    ) -> Choice {
        let empty = ServiceHealth::default();
        let health = self.health.get(index).unwrap_or(&empty);
        policy::decide(service, health, &self.sites, client, family, turn)
    }

    /// Answer one wire-format query from a client at an unspecified address
    /// into a new buffer: [`answer_into`](Self::answer_into) for tests and
    /// tools.
    pub fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(UDP_PLAIN_BYTES);
        let from = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        self.answer_into(query, from, transport, &mut out)
            .then_some(out)
    }

    /// Answer one wire-format query from `from` into `out` (cleared first;
    /// its capacity is reused, so a server loop allocates nothing).
    ///
    /// `false`, with `out` empty, when nothing must be sent: fewer than 2
    /// bytes (no ID to echo), or a message with QR=1 (answering responses
    /// invites loops). Anything else gets a response, malformed input a
    /// FORMERR echoing what of the header is there. Never panics.
    pub fn answer_into(
        &self,
        query: &[u8],
        from: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.answer_turn(query, from, transport, out, false)
    }

    /// [`answer_into`](Self::answer_into) without taking round robin's
    /// turn: the response the next such query gets (for `explain`).
    pub fn answer_peek(
        &self,
        query: &[u8],
        from: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.answer_turn(query, from, transport, out, true)
    }

    fn answer_turn(
        &self,
        query: &[u8],
        from: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
        peek: bool,
    ) -> bool {
        out.clear();
        if query.len() < 2 || query.get(2).is_some_and(|flags| flags & FLAG_QR != 0) {
            return false;
        }
        let mut name = LowerName::new();
        let request = match Request::parse(query, &mut name) {
            Ok(mut request) => {
                request.client = match request.edns.and_then(|e| e.ecs) {
                    Some(ecs) => ecs.client(),
                    None => Client::from_source(from),
                };
                request.peek = peek;
                request
            }
            Err(rcode) => {
                header_only(query, rcode, out);
                if !peek {
                    self.metrics
                        .response(transport == Transport::Tcp, rcode as u8, false);
                }
                return true;
            }
        };
        let mut response = Response::start(&request, request.size_limit(transport), out);
        self.resolve(&request, &mut response);
        response.finish(&request);
        if !peek {
            self.metrics.response(
                transport == Transport::Tcp,
                out[3] & 0x0F,
                out[2] & FLAG_TC != 0,
            );
        }
        true
    }

    fn resolve(&self, request: &Request<'_>, response: &mut Response) {
        if request.edns.is_some_and(|edns| edns.version > 0) {
            response.rcode = RCODE_BADVERS;
            return;
        }
        let qtype = request.qtype;
        let zone = match request.qclass {
            CLASS_IN if !matches!(qtype, TYPE_AXFR | TYPE_IXFR) => self.zone_of(request.name),
            _ => None,
        };
        let Some((zone_label, zone)) = zone else {
            response.rcode = RCODE_REFUSED;
            return;
        };
        response.authoritative = true;
        let apex = Pointer::to_label(request.name, zone_label);
        let Some(mut node) = zone.nodes.get(request.name.bytes()) else {
            response.rcode = RCODE_NXDOMAIN;
            response.soa(apex, zone);
            return;
        };
        let any = qtype == TYPE_ANY;
        let mut owner = Owner::Pointer(Pointer::QNAME);
        // Follow CNAMEs inside the zone, as knot does: each hop's target was
        // just written as the CNAME's RDATA, so its owner is a pointer there.
        // A name already answered for ends the chain (a loop).
        let mut visited: [&[u8]; CNAME_HOPS_MAX] = [&[]; CNAME_HOPS_MAX];
        visited[0] = request.name.bytes();
        for hop in 1..CNAME_HOPS_MAX {
            let Some(cname) = node
                .rrset(TYPE_CNAME)
                .filter(|_| !any && qtype != TYPE_CNAME)
            else {
                break;
            };
            let Some(rdata) = cname.rdatas.first() else {
                break;
            };
            let rdata_at = response.rrset(Section::Answer, owner, cname, apex, None);
            let Some((name_at, key)) = &rdata.target else {
                return; // out of the zone: the resolver goes on from here
            };
            if visited[..hop].contains(&&key[..]) {
                return;
            }
            let Some(next) = zone.nodes.get(key) else {
                // RFC 6604: the rcode is that of the last name in the chain.
                response.rcode = RCODE_NXDOMAIN;
                response.soa(apex, zone);
                return;
            };
            visited[hop] = key;
            owner = Owner::at(rdata_at + *name_at as usize, key);
            node = next;
        }
        let answered_before = response.count(Section::Answer);
        // Made only for an answer with NS, MX or SRV records: 1.5 KB.
        let mut targets: Option<Targets> = None;
        for rrset in node.rrsets.iter().filter(|r| any || r.rtype == qtype) {
            let additional = matches!(rrset.rtype, TYPE_NS | TYPE_MX | TYPE_SRV);
            let targets = additional.then(|| targets.get_or_insert_with(Targets::new));
            response.rrset(Section::Answer, owner, rrset, apex, targets);
        }
        if any || qtype == TYPE_A || qtype == TYPE_AAAA {
            let (v4, v6) = (any || qtype == TYPE_A, any || qtype == TYPE_AAAA);
            if !self.gslb_addresses(request, response, Section::Answer, owner, node, v4, v6) {
                // Every member down and `when_all_down = "servfail"`.
                response.rewind((HEADER_LEN + request.question.len(), [0; 3]));
                response.rcode = RCODE_SERVFAIL;
                return;
            }
        }
        if response.count(Section::Answer) == answered_before {
            // NODATA: an existing name (or empty non-terminal) without this
            // type, also at the end of a CNAME chain.
            response.soa(apex, zone);
        }
        // Addresses of the NS, MX and SRV targets, as many RRsets as fit:
        // they are optional, so one that does not fit ends the section
        // without TC, as knot does.
        for (offset, key) in targets.iter().flat_map(|t| t.iter()) {
            let Some(target) = zone.nodes.get(key) else {
                continue;
            };
            let owner = Owner::at(offset, key);
            for rtype in [TYPE_A, TYPE_AAAA] {
                let mark = response.mark();
                if let Some(rrset) = target.rrset(rtype) {
                    response.rrset(Section::Additional, owner, rrset, apex, None);
                }
                let gslb = (rtype == TYPE_A, rtype == TYPE_AAAA);
                if !self.gslb_addresses(
                    request,
                    response,
                    Section::Additional,
                    owner,
                    target,
                    gslb.0,
                    gslb.1,
                ) {
                    response.rewind(mark);
                }
                if !response.fits(request) {
                    response.rewind(mark);
                    return;
                }
            }
        }
    }

    /// The GSLB A and/or AAAA records of `node` (nothing for a static
    /// node), as its service's policy chooses for this client; the ECS
    /// scope of the response follows the decision. `false` when the
    /// service answers SERVFAIL.
    #[allow(clippy::too_many_arguments)]
    fn gslb_addresses(
        &self,
        request: &Request<'_>,
        response: &mut Response<'_>,
        section: Section,
        owner: Owner<'_>,
        node: &Node,
        v4: bool,
        v6: bool,
    ) -> bool {
        let Some(index) = node.gslb else {
            return true;
        };
        let Some(Some(service)) = self.services.get(index) else {
            return true;
        };
        let turn = if request.peek {
            self.turn.load(Ordering::Relaxed)
        } else {
            self.turn.fetch_add(1, Ordering::Relaxed)
        };
        for (wanted, family) in [(v4, Family::V4), (v6, Family::V6)] {
            if !wanted {
                continue;
            }
            let choice = self.decide(index, service, &request.client, family, turn);
            if section == Section::Answer {
                response.ecs_scope = response.ecs_scope.max(choice.scope);
            }
            let count = !request.peek && section == Section::Answer;
            if count {
                self.metrics.decision(index, &choice.rule);
            }
            match choice.outcome {
                Outcome::Members => {
                    for m in choice.members() {
                        if count {
                            self.metrics.answered(index, m);
                        }
                        response.address(section, owner, service.members[m].addr, choice.ttl_secs);
                    }
                }
                Outcome::Fallback => {
                    if count {
                        self.metrics.fallback(index);
                    }
                    for &addr in &service.fallback {
                        if family_of(addr) == family {
                            response.address(section, owner, addr, choice.ttl_secs);
                        }
                    }
                }
                Outcome::Servfail => return false,
                Outcome::Nodata => {}
            }
        }
        true
    }

    /// The closest enclosing zone of `name` and the index of its apex label.
    fn zone_of(&self, name: &LowerName) -> Option<(usize, &Zone)> {
        (0..name.label_count).find_map(|i| self.zones.get(name.suffix(i)).map(|zone| (i, zone)))
    }
}

/// Put GSLB service `index` at its name in its closest zone.
fn add_service(zones: &mut BTreeMap<Box<[u8]>, Zone>, index: usize, service: &Service) {
    let name = wire_name(&service.fqdn);
    let starts = label_starts(&name);
    let Some(zone_label) = starts
        .iter()
        .position(|&start| zones.contains_key(&name[start..]))
    else {
        return;
    };
    let Some(zone) = zones.get_mut(&name[starts[zone_label]..]) else {
        return;
    };
    let mut node = Node {
        gslb: Some(index),
        ..Node::default()
    };
    if zone_label == 0 {
        // A GSLB service at the apex: the apex keeps its SOA and NS.
        if let Some(apex) = zone.nodes.get(&name[..]) {
            node.rrsets = apex.rrsets.clone();
        }
    }
    zone.nodes.insert(name.clone().into_boxed_slice(), node);
    add_empty_non_terminals(zone, &name, &starts[..zone_label]);
}

/// Names in one CNAME chain, the question's included; a longer chain ends
/// with the CNAMEs written so far.
const CNAME_HOPS_MAX: usize = 8;
/// Most names that additional processing looks up for one answer.
const TARGETS_MAX: usize = 64;

/// In-zone names in the NS, MX and SRV records of an answer: where each was
/// written in the response and its key. Fixed-size, no allocation; names past
/// the bound get no additional records (which are optional).
struct Targets<'e> {
    found: [(usize, &'e [u8]); TARGETS_MAX],
    len: usize,
}

impl<'e> Targets<'e> {
    fn new() -> Self {
        Targets {
            found: [(0, &[]); TARGETS_MAX],
            len: 0,
        }
    }

    /// The in-zone name `key`, written at `offset` of the response.
    fn note(&mut self, offset: usize, key: &'e [u8]) {
        let known = self.found[..self.len].iter().any(|&(_, k)| k == key);
        if !known && self.len < TARGETS_MAX {
            self.found[self.len] = (offset, key);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &'e [u8])> + '_ {
        self.found[..self.len].iter().copied()
    }
}

/// Build one zone from its static records, adding what the zone lacks:
/// SOA, NS `ns1.<zone>` and the address of `ns1`.
fn build_zone(
    apex: &[u8],
    ttl_secs: u32,
    records: &[ZoneRecord],
    dns: &model::DnsConfig,
    serial: u32,
) -> Zone {
    let mut nodes: BTreeMap<Box<[u8]>, Node> = BTreeMap::new();
    nodes.insert(apex.into(), Node::default());
    for record in records {
        let key = wire_name(&record.owner);
        let starts = label_starts(&key);
        let Some(zone_label) = starts.iter().position(|&s| key[s..] == *apex) else {
            continue; // outside the zone: validation rejects it
        };
        let rdata = static_rdata(&record.data, apex, &key);
        nodes
            .entry(key.clone().into_boxed_slice())
            .or_default()
            .add(record.data.rtype(), record.ttl_secs, rdata);
        for &start in starts.iter().take(zone_label).skip(1) {
            nodes.entry(key[start..].into()).or_default();
        }
    }
    let apex_node = nodes.get_mut(apex).expect("inserted above");
    if apex_node.rrset(TYPE_SOA).is_none() {
        let soa = RdataWriter::new(apex)
            .name_key(&[LABEL_NS1, apex].concat(), false)
            .name_key(&[LABEL_HOSTMASTER, apex].concat(), false)
            .u32(serial)
            .u32(SOA_REFRESH_SECS)
            .u32(SOA_RETRY_SECS)
            .u32(SOA_EXPIRE_SECS)
            .u32(ttl_secs)
            .finish();
        apex_node.add(TYPE_SOA, ttl_secs, soa);
    }
    if apex_node.rrset(TYPE_NS).is_none() {
        let ns1 = [LABEL_NS1, apex].concat();
        let ns = RdataWriter::new(apex).name_key(&ns1, true).finish();
        apex_node.add(TYPE_NS, ttl_secs, ns);
        let listen = dns.listen.ip();
        let node = nodes.entry(ns1.into_boxed_slice()).or_default();
        if !listen.is_unspecified() && !node.has_addresses() {
            let (rtype, rdata) = match listen {
                IpAddr::V4(v4) => (TYPE_A, Rdata::fixed(&v4.octets())),
                IpAddr::V6(v6) => (TYPE_AAAA, Rdata::fixed(&v6.octets())),
            };
            node.add(rtype, ttl_secs, rdata);
        }
        if node.rrsets.is_empty() {
            // No address: `ns1` does not exist (a GSLB service may add it).
            nodes.remove(&[LABEL_NS1, apex].concat()[..]);
        }
    }
    let apex_node = nodes.get(apex).expect("inserted above");
    let soa_rrset = apex_node.rrset(TYPE_SOA).expect("added above");
    let soa = soa_rrset.rdatas[0].clone();
    let minimum_secs = u32::from_be_bytes(
        soa.bytes[soa.bytes.len() - 4..]
            .try_into()
            .expect("a SOA ends in 4 bytes of minimum"),
    );
    Zone {
        negative_ttl_secs: soa_rrset.ttl_secs.min(minimum_secs),
        soa,
        nodes,
    }
}

/// Names between a name and its apex exist without records: they answer
/// NODATA, not NXDOMAIN (RFC 8020). `starts` are the name's label offsets
/// above the apex.
fn add_empty_non_terminals(zone: &mut Zone, name: &[u8], starts: &[usize]) {
    for &start in starts.iter().skip(1) {
        zone.nodes.entry(name[start..].into()).or_default();
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
fn header_only(query: &[u8], rcode: u16, out: &mut Vec<u8>) {
    debug_assert!(query.len() >= 2 && rcode < 16);
    out.clear();
    out.resize(HEADER_LEN, 0);
    out[..2].copy_from_slice(&query[..2]);
    let echoed = if query.len() >= HEADER_LEN {
        query[2] & (MASK_OPCODE | FLAG_RD)
    } else {
        0
    };
    out[2] = FLAG_QR | echoed;
    out[3] = rcode as u8;
}

/// The question name, lower-cased, in wire format without the root label.
struct LowerName {
    bytes: [u8; NAME_MAX_BYTES],
    len: usize,
    starts: [u8; LABELS_MAX],
    label_count: usize,
}

impl LowerName {
    fn new() -> LowerName {
        LowerName {
            bytes: [0; NAME_MAX_BYTES],
            len: 0,
            starts: [0; LABELS_MAX],
            label_count: 0,
        }
    }

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
    /// The client's EDNS Client Subnet option, echoed with a scope.
    ecs: Option<Ecs>,
}

/// An EDNS Client Subnet option (RFC 7871) as the client sent it.
#[derive(Clone, Copy, Debug)]
struct Ecs {
    /// 1 (IPv4) or 2 (IPv6).
    family: u16,
    /// Source prefix length.
    source: u8,
    /// The address, zero past the prefix.
    addr: [u8; 16],
}

impl Ecs {
    /// Parse and check one ECS option's data: `None` (FORMERR) for an
    /// unknown family, a prefix longer than the address, an address not
    /// exactly the prefix's bytes or with bits set past it, or a non-zero
    /// scope (RFC 7871 7.1.1, 6).
    fn parse(data: &[u8]) -> Option<Ecs> {
        let family = read_u16(data, 0)?;
        let source = *data.get(2)?;
        let scope = *data.get(3)?;
        let width = match family {
            1 => 32,
            2 => 128,
            _ => return None,
        };
        if source > width || scope != 0 {
            return None;
        }
        let bytes = &data[4..];
        if bytes.len() != source.div_ceil(8) as usize {
            return None;
        }
        if source % 8 != 0 {
            let last = bytes[bytes.len() - 1];
            if last & (0xFF >> (source % 8)) != 0 {
                return None;
            }
        }
        let mut addr = [0; 16];
        addr[..bytes.len()].copy_from_slice(bytes);
        Some(Ecs {
            family,
            source,
            addr,
        })
    }

    fn addr_len(&self) -> usize {
        self.source.div_ceil(8) as usize
    }

    /// The client network as policies see it.
    fn client(&self) -> Client {
        let addr = if self.family == 1 {
            IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        };
        Client {
            addr,
            prefix: self.source,
            ecs: true,
        }
    }
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// A query that parsed: borrowed question bytes plus what the answer needs.
struct Request<'q> {
    id: [u8; 2],
    /// Opcode and RD from the query, already in response bit positions.
    echoed_flags: u8,
    checking_disabled: bool,
    /// Name, type and class exactly as the client sent them.
    question: &'q [u8],
    name: &'q LowerName,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
    /// Who the answer is for: the ECS network, else the source address
    /// (set by [`Engine::answer_into`]).
    client: Client,
    /// Answer without taking a turn.
    peek: bool,
}

impl<'q> Request<'q> {
    /// Parse a query whose QR bit is clear; `Err(rcode)` for FORMERR or NOTIMP.
    /// `name` is where the lower-cased question name goes: the caller's, so
    /// that the 400-byte buffer is not copied on its way out.
    fn parse(msg: &'q [u8], name: &'q mut LowerName) -> Result<Request<'q>, u16> {
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
        let name_end = parse_question_name(msg, HEADER_LEN, name).ok_or(RCODE_FORMERR)?;
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
            client: Client::from_source(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            peek: false,
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
fn parse_question_name(msg: &[u8], mut at: usize, name: &mut LowerName) -> Option<usize> {
    name.len = 0;
    name.label_count = 0;
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some(at);
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
        let mut ecs = None;
        while option < rdata.len() {
            let code = read_u16(rdata, option)?;
            let option_len = read_u16(rdata, option + 2)? as usize;
            let data = rdata.get(option + 4..option + 4 + option_len)?;
            if code == OPTION_ECS {
                // One ECS option per query (RFC 7871 7.1.1 asks for FORMERR
                // on a malformed one; two would be ambiguous).
                if ecs.is_some() {
                    return None;
                }
                ecs = Some(Ecs::parse(data)?);
            }
            option += 4 + option_len;
        }
        if option != rdata.len() {
            return None;
        }
        *edns = Some(Edns {
            payload_bytes: class,
            version: (ttl >> 16) as u8,
            dnssec_ok: ttl & 0x8000 != 0,
            ecs,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// How a record's owner is written.
#[derive(Clone, Copy, Debug)]
enum Owner<'k> {
    /// A compression pointer to the name written earlier.
    Pointer(Pointer),
    /// The name in full (its key plus the root label): for a name first
    /// written past the reach of a pointer.
    Spelled(&'k [u8]),
}

impl<'k> Owner<'k> {
    /// The name `key` that was written at `offset` in the response.
    fn at(offset: usize, key: &'k [u8]) -> Owner<'k> {
        Pointer::to_offset(offset).map_or(Owner::Spelled(key), Owner::Pointer)
    }
}

/// Size of our OPT record without options: root owner, type, class, TTL,
/// RDLENGTH.
const OPT_BYTES: usize = 11;

/// Size of the OPT record answering `edns`: with the ECS echo if it had one.
fn opt_len(edns: &Edns) -> usize {
    OPT_BYTES + edns.ecs.map_or(0, |ecs| 8 + ecs.addr_len())
}

/// A response being written front to back: header, echoed question, records.
struct Response<'o> {
    buf: &'o mut Vec<u8>,
    counts: [u16; 3],
    rcode: u16,
    authoritative: bool,
    /// The transport's size limit for this response.
    limit_bytes: usize,
    /// Length of the question name without its root label.
    question_name_len: usize,
    /// The ECS scope prefix length to echo (0: the answer is the same for
    /// every client).
    ecs_scope: u8,
}

impl<'o> Response<'o> {
    fn start(request: &Request<'_>, limit_bytes: usize, buf: &'o mut Vec<u8>) -> Response<'o> {
        buf.clear();
        buf.extend_from_slice(&request.id);
        buf.extend_from_slice(&[0; HEADER_LEN - 2]); // flags and counts, set by `finish`
        buf.extend_from_slice(request.question);
        Response {
            buf,
            counts: [0; 3],
            rcode: RCODE_NOERROR,
            authoritative: false,
            limit_bytes,
            question_name_len: request.name.len,
            ecs_scope: 0,
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

    /// Write a record's owner, type, class and TTL; returns where RDLENGTH
    /// goes, for [`end_rdata`](Self::end_rdata).
    fn record(&mut self, section: Section, owner: Owner<'_>, rtype: u16, ttl_secs: u32) -> usize {
        self.bump(section);
        match owner {
            Owner::Pointer(pointer) => self.buf.extend_from_slice(&pointer.bytes()),
            Owner::Spelled(key) => {
                self.buf.extend_from_slice(key);
                self.buf.push(0);
            }
        }
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

    /// One prepared RDATA, its apex pointers patched in; returns where it starts.
    fn rdata(&mut self, rdata: &Rdata, apex: Pointer) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&rdata.bytes);
        for &at in rdata.apex_at.iter() {
            let at = start + at as usize;
            self.buf[at..at + 2].copy_from_slice(&apex.bytes());
        }
        start
    }

    /// Every record of `rrset`, owned by `owner`; returns where the first
    /// RDATA starts. In-zone names of the RDATA are noted in `targets` with
    /// where they were written, for additional processing.
    fn rrset<'e>(
        &mut self,
        section: Section,
        owner: Owner<'_>,
        rrset: &'e Rrset,
        apex: Pointer,
        mut targets: Option<&mut Targets<'e>>,
    ) -> usize {
        let mut first = None;
        for rdata in &rrset.rdatas {
            let at = self.record(section, owner, rrset.rtype, rrset.ttl_secs);
            // Owned by the question: the target's shared suffix with it is
            // the question's tail, so the target is its head plus a pointer.
            let shared_at = match (owner, rdata.owner_cut, &rdata.target) {
                (Owner::Pointer(Pointer::QNAME), Some((cut, _)), Some((name_at, key))) => self
                    .question_name_len
                    .checked_sub(key.len() - cut as usize)
                    .map(|tail| (tail, *name_at as usize, &key[..cut as usize])),
                _ => None,
            };
            let start = match shared_at {
                Some((tail, name_at, head)) => {
                    let start = self.buf.len();
                    self.buf.extend_from_slice(&rdata.bytes[..name_at]);
                    self.buf.extend_from_slice(head);
                    let pointer = Pointer((HEADER_LEN + tail) as u16);
                    self.buf.extend_from_slice(&pointer.bytes());
                    start
                }
                None => self.rdata(rdata, apex),
            };
            first.get_or_insert(start);
            if let (Some(targets), Some((name_at, key))) = (targets.as_deref_mut(), &rdata.target) {
                targets.note(start + *name_at as usize, key);
            }
            self.end_rdata(at);
        }
        first.unwrap_or(self.buf.len())
    }

    /// The zone's SOA in the authority section, with the negative TTL.
    fn soa(&mut self, apex: Pointer, zone: &Zone) {
        let at = self.record(
            Section::Authority,
            Owner::Pointer(apex),
            TYPE_SOA,
            zone.negative_ttl_secs,
        );
        self.rdata(&zone.soa, apex);
        self.end_rdata(at);
    }

    /// One A or AAAA record.
    fn address(&mut self, section: Section, owner: Owner<'_>, addr: IpAddr, ttl_secs: u32) {
        let (rtype, octets, len) = match addr {
            IpAddr::V4(a) => {
                let mut octets = [0; 16];
                octets[..4].copy_from_slice(&a.octets());
                (TYPE_A, octets, 4)
            }
            IpAddr::V6(a) => (TYPE_AAAA, a.octets(), 16),
        };
        let at = self.record(section, owner, rtype, ttl_secs);
        self.buf.extend_from_slice(&octets[..len]);
        self.end_rdata(at);
    }

    /// Where the response is now, to [`rewind`](Self::rewind) to.
    fn mark(&self) -> (usize, [u16; 3]) {
        (self.buf.len(), self.counts)
    }

    fn rewind(&mut self, (len, counts): (usize, [u16; 3])) {
        self.buf.truncate(len);
        self.counts = counts;
    }

    /// Whether what is written so far, plus the OPT record, fits the limit.
    fn fits(&self, request: &Request<'_>) -> bool {
        let opt_bytes = request.edns.map_or(0, |edns| opt_len(&edns));
        self.buf.len() + opt_bytes <= self.limit_bytes
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
        match edns.ecs {
            None => self.buf.extend_from_slice(&[0, 0]), // no options
            Some(ecs) => {
                // ECS echoed: family, source prefix and address as sent,
                // our scope (RFC 7871 7.2.1).
                let len = 4 + ecs.addr_len();
                self.buf.extend_from_slice(&(4 + len as u16).to_be_bytes());
                self.buf.extend_from_slice(&OPTION_ECS.to_be_bytes());
                self.buf.extend_from_slice(&(len as u16).to_be_bytes());
                self.buf.extend_from_slice(&ecs.family.to_be_bytes());
                self.buf.push(ecs.source);
                self.buf.push(self.ecs_scope);
                self.buf.extend_from_slice(&ecs.addr[..ecs.addr_len()]);
            }
        }
    }

    /// Close the response; past `limit_bytes`, replace it by a truncated one
    /// (TC, question and OPT only) so that the client retries over TCP.
    fn finish(mut self, request: &Request<'_>) {
        let limit_bytes = self.limit_bytes;
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
    }
}
