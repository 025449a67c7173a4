//! Static zone data: the records an operator brings to a DNS zone, from
//! `dns.zones[].records` and from RFC 1035 master-format text
//! (`dns.zones[].zone_text`, or a `zone_file` that [`Config::load`] reads into
//! it), checked and merged into one sorted list the DNS engine answers from.
//!
//! Master files are read by hickory-proto's `serialize::txt::Parser` ($ORIGIN,
//! $TTL, relative names, `@`, parentheses, comments, quoted strings, TTL
//! units); `$INCLUDE` is refused, so a zone text never reads a file. The checks
//! here are the ones knot applies when it loads a zone (names inside the zone,
//! one CNAME and nothing else at a name, SOA and NS only at the apex) plus our
//! own limits (no wildcards, no delegations, only the types the engine writes).
//!
//! [`Config::load`]: crate::model::Config::load

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{DNSClass, Name, RData};
use hickory_proto::serialize::txt::Parser;

use crate::model::{in_zone, normalize_name, StaticRecord, ZoneConfig};

/// Records in one zone, text and config together: a bound on memory and on
/// the time a config change takes to validate.
pub const MAX_RECORDS_PER_ZONE: usize = 100_000;
/// The largest TTL (RFC 2181 8).
const TTL_MAX_SECS: u32 = i32::MAX as u32;
/// One TXT character-string holds at most 255 bytes.
const TXT_STRING_MAX_BYTES: usize = 255;
/// The RDATA of one TXT record, in bytes on the wire (length prefixes included).
const TXT_RDATA_MAX_BYTES: usize = 4096;

/// The data of one static record. Names are normalized (lower case, no
/// trailing dot); the root is the empty string (`MX 0 .`, `SRV 0 0 0 .`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias: the canonical name.
    Cname(String),
    /// A name server of the zone (apex only).
    Ns(String),
    /// A mail exchanger.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// The mail server's name.
        exchange: String,
    },
    /// A service location (RFC 2782).
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Share among equal priorities.
        weight: u16,
        /// The service's port.
        port: u16,
        /// The server's name.
        target: String,
    },
    /// Character-strings, each at most 255 bytes.
    Txt(Vec<Vec<u8>>),
    /// The zone's SOA (apex only); replaces the generated one.
    Soa(Soa),
}

/// SOA fields as the zone text wrote them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Soa {
    /// The primary name server.
    pub mname: String,
    /// The responsible mailbox, as a name.
    pub rname: String,
    /// The zone's version.
    pub serial: u32,
    /// Seconds between secondaries' checks.
    pub refresh_secs: u32,
    /// Seconds before a failed check is retried.
    pub retry_secs: u32,
    /// Seconds after which secondaries stop answering.
    pub expire_secs: u32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum_secs: u32,
}

impl RecordData {
    /// The record type's number on the wire.
    pub fn rtype(&self) -> u16 {
        match self {
            RecordData::A(_) => 1,
            RecordData::Ns(_) => 2,
            RecordData::Cname(_) => 5,
            RecordData::Soa(_) => 6,
            RecordData::Mx { .. } => 15,
            RecordData::Txt(_) => 16,
            RecordData::Aaaa(_) => 28,
            RecordData::Srv { .. } => 33,
        }
    }

    /// The type's mnemonic.
    pub fn type_name(&self) -> &'static str {
        match self {
            RecordData::A(_) => "A",
            RecordData::Ns(_) => "NS",
            RecordData::Cname(_) => "CNAME",
            RecordData::Soa(_) => "SOA",
            RecordData::Mx { .. } => "MX",
            RecordData::Txt(_) => "TXT",
            RecordData::Aaaa(_) => "AAAA",
            RecordData::Srv { .. } => "SRV",
        }
    }
}

/// One static record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ZoneRecord {
    /// Owner name, normalized, inside the zone.
    pub owner: String,
    /// Time to live.
    pub ttl_secs: u32,
    /// Type and data.
    pub data: RecordData,
}

/// A problem with a zone's static records: field path and reason.
pub type ZoneError = (String, String);

/// Every static record of `zone` (config records and zone text), sorted by
/// owner and type, each RRset once; or every problem found, each naming its
/// field (`dns.zones[0].records[2].value`) — `at` is the zone's own path.
///
/// A zone whose name is not a valid DNS name has no records (validation
/// reports the name itself).
pub fn zone_records(zone: &ZoneConfig, at: &str) -> Result<Vec<ZoneRecord>, Vec<ZoneError>> {
    let Some(apex) = normalize_name(&zone.name) else {
        return Ok(Vec::new());
    };
    let mut errors = Vec::new();
    // Each record with the path that errors about it should name.
    let mut records: Vec<(ZoneRecord, String)> = Vec::new();
    if let Some(text) = &zone.zone_text {
        let path = format!("{at}.zone_text");
        match parse_zone_text(text, &apex, zone.ttl_secs) {
            Ok(parsed) => records.extend(parsed.into_iter().map(|r| (r, path.clone()))),
            Err(reason) => errors.push((path, reason)),
        }
    }
    for (j, record) in zone.records.iter().enumerate() {
        let path = format!("{at}.records[{j}]");
        match parse_config_record(record, &apex, zone.ttl_secs) {
            Ok(r) => records.push((r, path)),
            Err((field, reason)) => errors.push((format!("{path}.{field}"), reason)),
        }
    }
    if records.len() > MAX_RECORDS_PER_ZONE {
        errors.push((
            at.to_string(),
            format!(
                "{} static records, at most {MAX_RECORDS_PER_ZONE} per zone",
                records.len()
            ),
        ));
    }
    check_placement(&records, &apex, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    records.sort();
    check_rrsets(&records, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut records: Vec<ZoneRecord> = records.into_iter().map(|(r, _)| r).collect();
    records.dedup();
    Ok(records)
}

/// Where a record may be: inside the zone, not a wildcard, SOA and NS only
/// at the apex (no delegations), no CNAME at the apex.
fn check_placement(records: &[(ZoneRecord, String)], apex: &str, errors: &mut Vec<ZoneError>) {
    for (record, path) in records {
        let what = || format!("`{} {}`", record.owner, record.data.type_name());
        if !in_zone(&record.owner, apex) {
            errors.push((path.clone(), format!("{} is outside zone `{apex}`", what())));
            continue;
        }
        let at_apex = record.owner == apex;
        match &record.data {
            RecordData::Soa(_) if !at_apex => errors.push((
                path.clone(),
                format!("{}: a SOA belongs at the apex `{apex}`", what()),
            )),
            RecordData::Ns(_) if !at_apex => errors.push((
                path.clone(),
                format!(
                    "{}: NS below the apex would delegate a child zone, which is not supported",
                    what()
                ),
            )),
            RecordData::Cname(_) if at_apex => errors.push((
                path.clone(),
                format!(
                    "{}: the apex has SOA and NS, so it cannot be an alias",
                    what()
                ),
            )),
            _ => {}
        }
    }
}

/// Across the sorted records: a CNAME is alone at its name (RFC 1034 3.6.2),
/// and the records of one RRset share one TTL (RFC 2181 5.2).
fn check_rrsets(records: &[(ZoneRecord, String)], errors: &mut Vec<ZoneError>) {
    let mut start = 0;
    while start < records.len() {
        let owner = &records[start].0.owner;
        let end = start
            + records[start..]
                .iter()
                .take_while(|(r, _)| &r.owner == owner)
                .count();
        let at_name = &records[start..end];
        let cnames = at_name
            .iter()
            .filter(|(r, _)| matches!(r.data, RecordData::Cname(_)))
            .count();
        if cnames > 0 && (cnames > 1 || at_name.len() > cnames) {
            let (cname, path) = at_name
                .iter()
                .find(|(r, _)| matches!(r.data, RecordData::Cname(_)))
                .expect("counted above");
            let others: Vec<&str> = at_name
                .iter()
                .filter(|(r, _)| r != cname)
                .map(|(r, _)| r.data.type_name())
                .collect();
            errors.push((
                path.clone(),
                format!(
                    "`{owner}` has a CNAME, so it can have no other record (it also has {})",
                    others.join(", ")
                ),
            ));
        }
        for pair in at_name.windows(2) {
            let ((a, _), (b, path)) = (&pair[0], &pair[1]);
            if a.data.rtype() == b.data.rtype() && a.ttl_secs != b.ttl_secs {
                errors.push((
                    path.clone(),
                    format!(
                        "`{owner} {}` has TTLs {} and {}: the records of one RRset share one TTL",
                        a.data.type_name(),
                        a.ttl_secs,
                        b.ttl_secs
                    ),
                ));
            }
        }
        start = end;
    }
}

/// Parse master-format text whose default origin is `apex` and default TTL
/// (until a `$TTL`) `default_ttl_secs`.
fn parse_zone_text(
    text: &str,
    apex: &str,
    default_ttl_secs: u32,
) -> Result<Vec<ZoneRecord>, String> {
    if let Some(line) = text.lines().position(|line| {
        line.trim_start()
            .get(..8)
            .is_some_and(|word| word.eq_ignore_ascii_case("$include"))
    }) {
        return Err(format!(
            "line {}: $INCLUDE is not supported (a zone text never reads files)",
            line + 1
        ));
    }
    let origin = Name::from_ascii(format!("{apex}.")).map_err(|e| e.to_string())?;
    // knot's `default-ttl` for a file without $TTL; as in hickory (and BIND
    // with $TTL), a record without a TTL takes the default, not the previous
    // record's TTL.
    let text = format!("$TTL {default_ttl_secs}\n{text}");
    let (_, rrsets) = Parser::new(text, None, Some(origin))
        .parse()
        .map_err(|e| format!("not a valid zone file: {e}"))?;
    let mut records = Vec::new();
    for rrset in rrsets.values() {
        for record in rrset.records_without_rrsigs() {
            let owner = owner_name(&record.name)?;
            if record.dns_class != DNSClass::IN {
                return Err(format!(
                    "`{owner}`: class {} is not supported, only IN",
                    record.dns_class
                ));
            }
            let data = from_rdata(&record.data).map_err(|reason| format!("`{owner}`: {reason}"))?;
            if record.ttl > TTL_MAX_SECS {
                return Err(format!("`{owner}`: TTL {} is above 2^31-1", record.ttl));
            }
            records.push(ZoneRecord {
                owner,
                ttl_secs: record.ttl,
                data,
            });
        }
    }
    Ok(records)
}

fn from_rdata(data: &RData) -> Result<RecordData, String> {
    Ok(match data {
        RData::A(a) => RecordData::A(a.0),
        RData::AAAA(a) => RecordData::Aaaa(a.0),
        RData::CNAME(c) => RecordData::Cname(target_name(&c.0)?),
        RData::NS(n) => RecordData::Ns(target_name(&n.0)?),
        RData::MX(mx) => RecordData::Mx {
            preference: mx.preference,
            exchange: target_name(&mx.exchange)?,
        },
        RData::SRV(srv) => RecordData::Srv {
            priority: srv.priority,
            weight: srv.weight,
            port: srv.port,
            target: target_name(&srv.target)?,
        },
        RData::TXT(txt) => {
            let strings: Vec<Vec<u8>> = txt.txt_data.iter().map(|s| s.to_vec()).collect();
            check_txt(&strings)?;
            RecordData::Txt(strings)
        }
        RData::SOA(soa) => RecordData::Soa(Soa {
            mname: target_name(&soa.mname)?,
            rname: target_name(&soa.rname)?,
            serial: soa.serial,
            // hickory keeps these as i32; the wire has u32. Negative ones
            // would be out of range for RFC 1035 anyway.
            refresh_secs: u32::try_from(soa.refresh).map_err(|_| "negative SOA refresh")?,
            retry_secs: u32::try_from(soa.retry).map_err(|_| "negative SOA retry")?,
            expire_secs: u32::try_from(soa.expire).map_err(|_| "negative SOA expire")?,
            minimum_secs: soa.minimum,
        }),
        other => {
            return Err(format!(
                "{} records are not supported (A, AAAA, CNAME, TXT, SRV, MX, NS and SOA are)",
                other.record_type()
            ))
        }
    })
}

fn check_txt(strings: &[Vec<u8>]) -> Result<(), String> {
    let wire_bytes: usize = strings.iter().map(|s| 1 + s.len()).sum();
    if strings.iter().any(|s| s.len() > TXT_STRING_MAX_BYTES) {
        return Err(format!(
            "a TXT string holds at most {TXT_STRING_MAX_BYTES} bytes"
        ));
    }
    if wire_bytes > TXT_RDATA_MAX_BYTES {
        return Err(format!(
            "TXT data of {wire_bytes} bytes, at most {TXT_RDATA_MAX_BYTES}"
        ));
    }
    Ok(())
}

/// An owner name from a zone text: a host name, not a wildcard.
fn owner_name(name: &Name) -> Result<String, String> {
    if name.is_wildcard() {
        return Err(format!("`{name}`: wildcard records are not supported"));
    }
    normalize_name(&name.to_ascii()).ok_or_else(|| {
        format!("`{name}` is not a host name (labels of letters, digits, '-' and '_')")
    })
}

/// A name in record data; the root is allowed and becomes "".
fn target_name(name: &Name) -> Result<String, String> {
    if name.is_root() {
        return Ok(String::new());
    }
    normalize_name(&name.to_ascii()).ok_or_else(|| {
        format!("`{name}` is not a host name (labels of letters, digits, '-' and '_')")
    })
}

/// One `records` entry: `Err((field, reason))`.
fn parse_config_record(
    record: &StaticRecord,
    apex: &str,
    zone_ttl_secs: u32,
) -> Result<ZoneRecord, (&'static str, String)> {
    let owner = config_name(&record.name, apex).map_err(|reason| ("name", reason))?;
    let ttl_secs = record.ttl_secs.unwrap_or(zone_ttl_secs);
    if ttl_secs > TTL_MAX_SECS {
        return Err(("ttl_secs", "must be at most 2147483647 (2^31-1)".into()));
    }
    let value = record.value.trim();
    let target = |text: &str| config_name(text, apex);
    let number = |text: &str| text.parse::<u16>().ok();
    let data = match record.rtype.to_ascii_uppercase().as_str() {
        "A" => RecordData::A(
            value
                .parse()
                .map_err(|_| ("value", "not an IPv4 address".to_string()))?,
        ),
        "AAAA" => RecordData::Aaaa(
            value
                .parse()
                .map_err(|_| ("value", "not an IPv6 address".to_string()))?,
        ),
        "CNAME" => RecordData::Cname(target(value).map_err(|reason| ("value", reason))?),
        "MX" => {
            let usage = || {
                (
                    "value",
                    "must be `PREFERENCE EXCHANGE`, e.g. `10 mail`".to_string(),
                )
            };
            let [preference, exchange] = words(value).ok_or_else(usage)?;
            RecordData::Mx {
                preference: number(preference).ok_or_else(usage)?,
                exchange: target_or_root(exchange, apex).map_err(|reason| ("value", reason))?,
            }
        }
        "SRV" => {
            let usage = || {
                (
                    "value",
                    "must be `PRIORITY WEIGHT PORT TARGET`, e.g. `10 5 5060 sip`".to_string(),
                )
            };
            let [priority, weight, port, target] = words(value).ok_or_else(usage)?;
            RecordData::Srv {
                priority: number(priority).ok_or_else(usage)?,
                weight: number(weight).ok_or_else(usage)?,
                port: number(port).ok_or_else(usage)?,
                target: target_or_root(target, apex).map_err(|reason| ("value", reason))?,
            }
        }
        "TXT" => {
            let strings = txt_value(&record.value, apex).map_err(|reason| ("value", reason))?;
            check_txt(&strings).map_err(|reason| ("value", reason))?;
            RecordData::Txt(strings)
        }
        _ => {
            return Err((
                "type",
                format!(
                    "`{}`: must be A, AAAA, CNAME, TXT, SRV or MX (NS and SOA come from zone_text)",
                    record.rtype
                ),
            ))
        }
    };
    Ok(ZoneRecord {
        owner,
        ttl_secs,
        data,
    })
}

/// Exactly `N` whitespace-separated words.
fn words<const N: usize>(text: &str) -> Option<[&str; N]> {
    let mut parts = text.split_whitespace();
    let out = std::array::from_fn(|_| parts.next().unwrap_or(""));
    (parts.next().is_none() && out.iter().all(|w| !w.is_empty())).then_some(out)
}

/// A name in the config, with the zone-file rule: `@` is the apex, a name
/// ending in `.` is absolute, any other is relative to the zone.
fn config_name(text: &str, apex: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "@" {
        return Ok(apex.to_string());
    }
    if text.split('.').next() == Some("*") {
        return Err(format!("`{text}`: wildcard records are not supported"));
    }
    let invalid =
        || format!("`{text}` is not a DNS name (labels of 1-63 letters, digits, '-' and '_')");
    if text.ends_with('.') {
        return normalize_name(text).ok_or_else(invalid);
    }
    let relative = normalize_name(text).ok_or_else(invalid)?;
    if in_zone(&relative, apex) {
        // The usual slip: `www.example.com` meant absolute.
        return Err(format!(
            "`{text}` is relative to the zone, so it would be `{relative}.{apex}`: \
             write `{}` or `{text}.`",
            relative
                .strip_suffix(apex)
                .and_then(|head| head.strip_suffix('.'))
                .unwrap_or("@")
        ));
    }
    normalize_name(&format!("{relative}.{apex}"))
        .ok_or_else(|| format!("`{text}` makes a name longer than 253 bytes in `{apex}`"))
}

/// A target that may be the root (`.`: "no such service" in MX and SRV).
fn target_or_root(text: &str, apex: &str) -> Result<String, String> {
    if text == "." {
        Ok(String::new())
    } else {
        config_name(text, apex)
    }
}

/// A TXT value: one text (split into 255-byte strings), or, starting with
/// `"`, character-strings in zone-file syntax (`"v=spf1" " -all"`).
fn txt_value(value: &str, apex: &str) -> Result<Vec<Vec<u8>>, String> {
    if !value.trim_start().starts_with('"') {
        if value.is_empty() {
            return Ok(vec![Vec::new()]);
        }
        return Ok(value
            .as_bytes()
            .chunks(TXT_STRING_MAX_BYTES)
            .map(<[u8]>::to_vec)
            .collect());
    }
    if value.contains(['\n', '\r']) {
        return Err("quoted TXT strings must be on one line".into());
    }
    let parsed = parse_zone_text(&format!("@ 0 IN TXT {value}\n"), apex, 0)?;
    match parsed.as_slice() {
        [ZoneRecord {
            data: RecordData::Txt(strings),
            ..
        }] => Ok(strings.clone()),
        _ => Err("not TXT character-strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, ConfigError, EXAMPLE_CONFIG};

    /// The zone of /work/shared/peers/dns/zones/example.com.zone, which knot
    /// serves in the DNS benchmarks.
    const PEER_ZONE: &str = "$ORIGIN example.com.
$TTL 300
@    IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@    IN NS  ns1.example.com.
ns1  IN A   127.0.0.1
www  IN A   192.0.2.10
www  IN AAAA 2001:db8::10
";

    /// The example config with `zone` (TOML lines) appended to its
    /// `fabric.test` zone.
    fn with_zone(zone: &str) -> String {
        let at = "[[dns.zones]]\nname = \"fabric.test\"\n";
        assert!(EXAMPLE_CONFIG.contains(at));
        EXAMPLE_CONFIG.replacen(at, &format!("{at}{zone}\n"), 1)
    }

    fn errors(zone: &str) -> Vec<ConfigError> {
        Config::parse(&with_zone(zone))
            .expect_err("should be rejected")
            .0
    }

    fn records(zone: &str) -> Vec<ZoneRecord> {
        let config = Config::parse(&with_zone(zone)).unwrap_or_else(|e| panic!("{e}"));
        let zone = &config.dns.as_ref().unwrap().zones[0];
        zone_records(zone, "dns.zones[0]").unwrap()
    }

    fn zone_text(text: &str) -> String {
        format!("zone_text = '''\n{text}'''")
    }

    #[test]
    fn config_records_of_every_type() {
        let got = records(
            r#"records = [
  { name = "www", type = "A", value = "192.0.2.1" },
  { name = "www", type = "aaaa", value = "2001:db8::1", ttl_secs = 300 },
  { name = "alias", type = "CNAME", value = "www", ttl_secs = 60 },
  { name = "ext", type = "CNAME", value = "www.example.net." },
  { name = "@", type = "MX", value = "10 mail" },
  { name = "@", type = "MX", value = "0 ." },
  { name = "_sip._tcp", type = "SRV", value = "1 2 5060 sip.fabric.test." },
  { name = "@", type = "TXT", value = "v=spf1 -all" },
  { name = "two.fabric.test.", type = "TXT", value = '"a b" "c"' },
]"#,
        );
        let find = |owner: &str, t: &str| {
            got.iter()
                .filter(|r| r.owner == owner && r.data.type_name() == t)
                .map(|r| (r.ttl_secs, r.data.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            find("www.fabric.test", "A"),
            [(300, RecordData::A("192.0.2.1".parse().unwrap()))]
        );
        assert_eq!(
            find("alias.fabric.test", "CNAME"),
            [(60, RecordData::Cname("www.fabric.test".into()))]
        );
        assert_eq!(
            find("ext.fabric.test", "CNAME"),
            [(300, RecordData::Cname("www.example.net".into()))]
        );
        assert_eq!(find("fabric.test", "MX").len(), 2);
        assert!(find("fabric.test", "MX").contains(&(
            300,
            RecordData::Mx {
                preference: 0,
                exchange: String::new()
            }
        )));
        assert_eq!(
            find("_sip._tcp.fabric.test", "SRV"),
            [(
                300,
                RecordData::Srv {
                    priority: 1,
                    weight: 2,
                    port: 5060,
                    target: "sip.fabric.test".into()
                }
            )]
        );
        assert_eq!(
            find("fabric.test", "TXT"),
            [(300, RecordData::Txt(vec![b"v=spf1 -all".to_vec()]))]
        );
        assert_eq!(
            find("two.fabric.test", "TXT"),
            [(300, RecordData::Txt(vec![b"a b".to_vec(), b"c".to_vec()]))]
        );
    }

    #[test]
    fn long_txt_values_split_into_255_byte_strings() {
        let value = "x".repeat(600);
        let got = records(&format!(
            "records = [{{ name = \"t\", type = \"TXT\", value = \"{value}\" }}]"
        ));
        let RecordData::Txt(strings) = &got[0].data else {
            panic!("{got:?}")
        };
        let lens: Vec<usize> = strings.iter().map(Vec::len).collect();
        assert_eq!(lens, [255, 255, 90]);
    }

    #[test]
    fn bad_values_name_the_field_and_why() {
        let e = errors(
            r#"records = [
  { name = "a", type = "A", value = "192.0.2.1" },
  { name = "b", type = "A", value = "2001:db8::1" },
  { name = "c", type = "AAAA", value = "192.0.2.1" },
  { name = "d", type = "MX", value = "mail" },
  { name = "e", type = "SRV", value = "1 2 mail" },
  { name = "f", type = "PTR", value = "x" },
  { name = "bad..name", type = "A", value = "192.0.2.1" },
  { name = "*.wild", type = "A", value = "192.0.2.1" },
  { name = "g", type = "CNAME", value = "bad name" },
  { name = "h", type = "A", value = "192.0.2.1", ttl_secs = 4000000000 },
]"#,
        );
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.path.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            got[..3],
            [
                ("dns.zones[0].records[1].value", "not an IPv4 address"),
                ("dns.zones[0].records[2].value", "not an IPv6 address"),
                (
                    "dns.zones[0].records[3].value",
                    "must be `PREFERENCE EXCHANGE`, e.g. `10 mail`"
                ),
            ]
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            paths[3..],
            [
                "dns.zones[0].records[4].value",
                "dns.zones[0].records[5].type",
                "dns.zones[0].records[6].name",
                "dns.zones[0].records[7].name",
                "dns.zones[0].records[8].value",
                "dns.zones[0].records[9].ttl_secs",
            ]
        );
        assert!(got[6].1.contains("wildcard"), "{}", got[6].1);
    }

    #[test]
    fn a_relative_name_that_repeats_the_zone_is_caught() {
        let e =
            errors(r#"records = [{ name = "www.fabric.test", type = "A", value = "192.0.2.1" }]"#);
        assert_eq!(e[0].path, "dns.zones[0].records[0].name");
        assert!(
            e[0].reason.contains("write `www` or `www.fabric.test.`"),
            "{}",
            e[0].reason
        );
        // Absolute names outside the zone are refused.
        let e =
            errors(r#"records = [{ name = "www.other.test.", type = "A", value = "192.0.2.1" }]"#);
        assert_eq!(e[0].path, "dns.zones[0].records[0]");
        assert!(e[0].reason.contains("outside zone"), "{}", e[0].reason);
    }

    #[test]
    fn a_cname_is_alone_at_its_name() {
        let e = errors(
            r#"records = [
  { name = "www", type = "A", value = "192.0.2.1" },
  { name = "www", type = "CNAME", value = "other" },
]"#,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "dns.zones[0].records[1]");
        assert!(e[0].reason.contains("has a CNAME"), "{}", e[0].reason);
        // Across the zone text and the config records too.
        let e = errors(&format!(
            "{}\nrecords = [{{ name = \"www\", type = \"TXT\", value = \"x\" }}]",
            zone_text("www CNAME other\n")
        ));
        assert!(e[0].reason.contains("has a CNAME"), "{e:?}");
        let e = errors(r#"records = [{ name = "@", type = "CNAME", value = "x" }]"#);
        assert!(e[0].reason.contains("cannot be an alias"), "{e:?}");
    }

    #[test]
    fn one_rrset_has_one_ttl() {
        let e = errors(
            r#"records = [
  { name = "www", type = "A", value = "192.0.2.1", ttl_secs = 60 },
  { name = "www", type = "A", value = "192.0.2.2", ttl_secs = 30 },
]"#,
        );
        assert!(e[0].reason.contains("share one TTL"), "{e:?}");
    }

    #[test]
    fn gslb_names_do_not_collide_with_static_records() {
        let e = errors(r#"records = [{ name = "app", type = "TXT", value = "x" }]"#);
        assert_eq!(e[0].path, "gslb_services[0].fqdn");
        assert!(e[0].reason.contains("static records"), "{}", e[0].reason);
    }

    #[test]
    fn the_peer_zone_file_loads() {
        // The file itself when shared/ is there, the embedded copy anyway.
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/peers/dns/zones/example.com.zone");
        let mut texts = vec![PEER_ZONE.to_string()];
        texts.extend(std::fs::read_to_string(shared).ok());
        for text in texts {
            let zone = ZoneConfig {
                name: "example.com".into(),
                ttl_secs: 300,
                records: Vec::new(),
                zone_text: Some(text),
                zone_file: None,
            };
            let got = zone_records(&zone, "z").unwrap();
            let types: Vec<(&str, &str)> = got
                .iter()
                .map(|r| (r.owner.as_str(), r.data.type_name()))
                .collect();
            assert_eq!(
                types,
                [
                    ("example.com", "NS"),
                    ("example.com", "SOA"),
                    ("ns1.example.com", "A"),
                    ("www.example.com", "A"),
                    ("www.example.com", "AAAA"),
                ]
            );
        }
    }

    #[test]
    fn zone_text_syntax_and_its_errors() {
        let got = records(&zone_text(
            "$TTL 1h
@ IN SOA ns1 hostmaster ( 5 ; serial
    1h 10m 1w 60 )
  IN NS ns1
ns1 IN A 192.0.2.53
txt 30 IN TXT \"one two\" three ; a comment
$ORIGIN sub.fabric.test.
x IN AAAA ::1
",
        ));
        let soa = got.iter().find(|r| r.data.type_name() == "SOA").unwrap();
        assert_eq!(soa.ttl_secs, 3600);
        let RecordData::Soa(data) = &soa.data else {
            unreachable!()
        };
        assert_eq!(
            (data.serial, data.refresh_secs, data.expire_secs),
            (5, 3600, 604800)
        );
        assert_eq!(data.mname, "ns1.fabric.test");
        let txt = got.iter().find(|r| r.owner == "txt.fabric.test").unwrap();
        assert_eq!(
            txt.data,
            RecordData::Txt(vec![b"one two".to_vec(), b"three".to_vec()])
        );
        assert_eq!(txt.ttl_secs, 30);
        assert!(got.iter().any(|r| r.owner == "x.sub.fabric.test"));

        for (text, why) in [
            ("www IN A 999.0.0.1\n", "not a valid zone file"),
            ("$INCLUDE /etc/passwd\n", "$INCLUDE"),
            ("www IN PTR x\n", "not supported"),
            ("www IN NS ns.elsewhere.net.\n", "delegate"),
            ("www IN SOA a b 1 2 3 4 5\n", "apex"),
            ("*.w IN A 192.0.2.1\n", "wildcard"),
            ("$ORIGIN other.test.\nwww IN A 192.0.2.1\n", "outside zone"),
            ("www CH A 192.0.2.1\n", "class"),
        ] {
            let e = errors(&zone_text(text));
            assert_eq!(e[0].path, "dns.zones[0].zone_text", "{text}");
            assert!(e[0].reason.contains(why), "{text}: {}", e[0].reason);
        }
    }

    #[test]
    fn zone_files_are_read_at_load_and_only_there() {
        let e = errors("zone_file = \"example.zone\"");
        assert_eq!(e[0].path, "dns.zones[0].zone_file");

        let dir = std::env::temp_dir().join(format!("fabric-zone-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("zones")).unwrap();
        let config_path = dir.join("fabric.toml");
        std::fs::write(dir.join("zones/fabric.test.zone"), "www IN A 192.0.2.7\n").unwrap();
        std::fs::write(
            &config_path,
            with_zone("zone_file = \"zones/fabric.test.zone\""),
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let zone = &config.dns.as_ref().unwrap().zones[0];
        assert_eq!(zone.zone_file, None, "the loaded config names no file");
        assert_eq!(zone.zone_text.as_deref(), Some("www IN A 192.0.2.7\n"));
        // What the Controller replicates parses again as text.
        let toml = toml::to_string(&config).unwrap();
        assert_eq!(Config::parse(&toml).unwrap(), config);

        std::fs::write(
            &config_path,
            with_zone("zone_file = \"zones/missing.zone\""),
        )
        .unwrap();
        let e = Config::load(&config_path).unwrap_err().0;
        assert_eq!(e[0].path, "dns.zones[0].zone_file");
        assert!(e[0].reason.contains("cannot read"), "{}", e[0].reason);
        std::fs::write(
            &config_path,
            with_zone("zone_file = \"zones/fabric.test.zone\"\nzone_text = \"\""),
        )
        .unwrap();
        let e = Config::load(&config_path).unwrap_err().0;
        assert!(e[0].reason.contains("not both"), "{}", e[0].reason);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
