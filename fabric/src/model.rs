//! The desired-state vocabulary: what an operator writes in a config file.
//!
//! Parsing is strict (unknown fields are errors) and every error names the
//! path of the offending field and why it is wrong. [`Config::parse`] either
//! returns a fully validated config or nothing: callers apply only what
//! parsed and validated, so a bad file never half-applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The example fabric that `fabric up` runs when given no config file.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// A whole fabric's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Controller listens.
    pub controller: ControllerConfig,
    /// Groups of Service Engines sharing HA mode and sizing.
    #[serde(default)]
    pub se_groups: Vec<SeGroup>,
    /// Server pools that virtual services balance over.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Virtual services: a VIP and port served by Service Engines.
    #[serde(default)]
    pub virtual_services: Vec<VirtualService>,
    /// The authoritative DNS listener and its zones, if any.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// GSLB services: DNS names answered with the VIPs of their members.
    #[serde(default)]
    pub gslb_services: Vec<GslbService>,
    /// Small built-in HTTP servers, for examples and drills.
    #[serde(default)]
    pub demo_origins: Vec<DemoOrigin>,
}

/// Controller settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address for Service Engine sessions (`fabric::proto`).
    pub listen: SocketAddr,
    /// How often SEs send heartbeats; a session missing 3 is considered lost.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1000
}

/// How a group's SEs back each other up (seed 002).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaMode {
    /// Spare capacity for M failures across N active SEs (the default).
    #[default]
    ElasticNPlusM,
    /// A virtual service placed on several SEs at once.
    ElasticActiveActive,
    /// Pairs of SEs; the standby takes the VIP with gratuitous ARP.
    LegacyActiveStandby,
}

/// A group of Service Engines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeGroup {
    /// Unique name.
    pub name: String,
    /// HA mode of the group.
    #[serde(default)]
    pub ha_mode: HaMode,
    /// Most virtual services one SE of this group carries.
    #[serde(default = "default_max_vs_per_se")]
    pub max_vs_per_se: u32,
}

fn default_max_vs_per_se() -> u32 {
    10
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each server in turn.
    #[default]
    RoundRobin,
}

/// A pool of servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// How requests are spread over `servers`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Server addresses, `ip:port`; at least one.
    pub servers: Vec<SocketAddr>,
}

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    /// Unique name.
    pub name: String,
    /// SE group that carries it.
    #[serde(default = "default_group")]
    pub se_group: String,
    /// The virtual IP clients connect to.
    pub vip: IpAddr,
    /// The port on the VIP (HTTP/1.1 for now).
    pub port: u16,
    /// Name of the pool it balances over.
    pub pool: String,
}

fn default_group() -> String {
    "default".to_string()
}

/// The authoritative DNS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address to answer on.
    pub listen: SocketAddr,
    /// Zones this server is authoritative for; other names get REFUSED.
    pub zones: Vec<ZoneConfig>,
}

/// One authoritative zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The apex, e.g. `fabric.test`.
    pub name: String,
    /// TTL of the SOA and NS records, and the negative-caching TTL.
    #[serde(default = "default_zone_ttl")]
    pub ttl_secs: u32,
}

fn default_zone_ttl() -> u32 {
    300
}

/// A GSLB service: a DNS name answered with its members' VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbService {
    /// The name, inside one of the DNS zones.
    pub fqdn: String,
    /// Names of the virtual services whose VIPs answer for it.
    pub members: Vec<String>,
    /// TTL of the answers.
    #[serde(default = "default_gslb_ttl")]
    pub ttl_secs: u32,
}

fn default_gslb_ttl() -> u32 {
    30
}

/// A built-in HTTP origin server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoOrigin {
    /// Name it puts in its responses.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
}

/// One thing wrong with a config: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `virtual_services[0].port`; empty for the file as a whole.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Everything wrong with a config (at least one entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config, nothing applied:")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parse and validate TOML text. Unknown fields, wrong types and invalid
    /// values are errors naming the field's path.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let one = |path: String, reason: String| ConfigErrors(vec![ConfigError { path, reason }]);
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            one(String::new(), format!("not valid TOML: {}", e.message()))
        })?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                one(path, e.into_inner().message().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded example config, parsed.
    pub fn example() -> Config {
        Config::parse(EXAMPLE_CONFIG).expect("the embedded example config is valid")
    }

    /// Check every rule that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: String, reason: String| errors.push(ConfigError { path, reason });

        if self.controller.listen.port() == 0 {
            err(
                "controller.listen".into(),
                "port 0 is not a usable port".into(),
            );
        }
        if self.controller.heartbeat_ms == 0 || self.controller.heartbeat_ms > 60_000 {
            err(
                "controller.heartbeat_ms".into(),
                "must be between 1 and 60000".into(),
            );
        }

        let groups = unique_names(
            self.se_groups.iter().map(|g| &g.name),
            "se_groups",
            &mut err,
        );
        for (i, g) in self.se_groups.iter().enumerate() {
            if g.max_vs_per_se == 0 {
                err(
                    format!("se_groups[{i}].max_vs_per_se"),
                    "must be at least 1".into(),
                );
            }
        }

        let pools = unique_names(self.pools.iter().map(|p| &p.name), "pools", &mut err);
        for (i, p) in self.pools.iter().enumerate() {
            if p.servers.is_empty() {
                err(
                    format!("pools[{i}].servers"),
                    "a pool needs at least one server".into(),
                );
            }
            let mut seen = BTreeSet::new();
            for (j, s) in p.servers.iter().enumerate() {
                if s.port() == 0 {
                    err(
                        format!("pools[{i}].servers[{j}]"),
                        "port 0 is not a usable port".into(),
                    );
                }
                if !seen.insert(s) {
                    err(
                        format!("pools[{i}].servers[{j}]"),
                        format!("server {s} is listed twice"),
                    );
                }
            }
        }

        let vs_names = unique_names(
            self.virtual_services.iter().map(|v| &v.name),
            "virtual_services",
            &mut err,
        );
        let mut vips: BTreeMap<(IpAddr, u16), &str> = BTreeMap::new();
        for (i, v) in self.virtual_services.iter().enumerate() {
            if v.port == 0 {
                err(
                    format!("virtual_services[{i}].port"),
                    "port 0 is not a usable port".into(),
                );
            }
            if v.vip.is_unspecified() || v.vip.is_multicast() {
                err(
                    format!("virtual_services[{i}].vip"),
                    format!("{} cannot be a VIP", v.vip),
                );
            }
            if !pools.contains(v.pool.as_str()) {
                err(
                    format!("virtual_services[{i}].pool"),
                    format!("no pool named `{}`", v.pool),
                );
            }
            if !groups.contains(v.se_group.as_str()) {
                err(
                    format!("virtual_services[{i}].se_group"),
                    format!("no SE group named `{}`", v.se_group),
                );
            }
            if let Some(other) = vips.insert((v.vip, v.port), &v.name) {
                err(
                    format!("virtual_services[{i}].vip"),
                    format!(
                        "duplicate VIP {}:{}, already used by virtual service `{other}`",
                        v.vip, v.port
                    ),
                );
            }
        }

        let mut zones = Vec::new();
        if let Some(dns) = &self.dns {
            if dns.listen.port() == 0 {
                err("dns.listen".into(), "port 0 is not a usable port".into());
            }
            for (i, z) in dns.zones.iter().enumerate() {
                match normalize_name(&z.name) {
                    Some(n) => zones.push(n),
                    None => err(
                        format!("dns.zones[{i}].name"),
                        format!("`{}` is not a valid DNS name", z.name),
                    ),
                }
            }
            let mut seen = BTreeSet::new();
            for (i, z) in zones.iter().enumerate() {
                if !seen.insert(z.clone()) {
                    err(
                        format!("dns.zones[{i}].name"),
                        format!("zone `{z}` is listed twice"),
                    );
                }
            }
        }
        let mut fqdns = BTreeSet::new();
        for (i, s) in self.gslb_services.iter().enumerate() {
            match normalize_name(&s.fqdn) {
                None => err(
                    format!("gslb_services[{i}].fqdn"),
                    format!("`{}` is not a valid DNS name", s.fqdn),
                ),
                Some(n) => {
                    if !zones.iter().any(|z| in_zone(&n, z)) {
                        err(
                            format!("gslb_services[{i}].fqdn"),
                            format!("`{n}` is in no zone of `dns.zones`"),
                        );
                    }
                    if !fqdns.insert(n.clone()) {
                        err(
                            format!("gslb_services[{i}].fqdn"),
                            format!("`{n}` is defined twice"),
                        );
                    }
                }
            }
            if s.members.is_empty() {
                err(
                    format!("gslb_services[{i}].members"),
                    "a GSLB service needs at least one member".into(),
                );
            }
            for (j, m) in s.members.iter().enumerate() {
                if !vs_names.contains(m.as_str()) {
                    err(
                        format!("gslb_services[{i}].members[{j}]"),
                        format!("no virtual service named `{m}`"),
                    );
                }
            }
        }

        let _ = unique_names(
            self.demo_origins.iter().map(|o| &o.name),
            "demo_origins",
            &mut err,
        );
        for (i, o) in self.demo_origins.iter().enumerate() {
            if o.listen.port() == 0 {
                err(
                    format!("demo_origins[{i}].listen"),
                    "port 0 is not a usable port".into(),
                );
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The virtual service named `name`.
    pub fn virtual_service(&self, name: &str) -> Option<&VirtualService> {
        self.virtual_services.iter().find(|v| v.name == name)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a String>,
    list: &str,
    err: &mut impl FnMut(String, String),
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            err(format!("{list}[{i}].name"), "must not be empty".into());
        } else if !seen.insert(n.as_str()) {
            err(format!("{list}[{i}].name"), format!("`{n}` is used twice"));
        }
    }
    seen
}

/// Lower-case a DNS name without its trailing dot; `None` if it is not a
/// valid host name (labels of 1-63 letters, digits, `-` or `_`, 253 bytes in all).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// Whether the normalized `name` is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<ConfigError> {
        Config::parse(text)
            .expect_err("config should be rejected")
            .0
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(EXAMPLE_CONFIG.contains(replace), "example lacks {replace}");
        EXAMPLE_CONFIG.replacen(replace, by, 1)
    }

    #[test]
    fn example_is_valid() {
        let c = Config::example();
        assert_eq!(c.virtual_services.len(), 1);
        assert_eq!(c.pools[0].servers.len(), 2);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let e = errors_of(&with("pool = \"web\"", "pool = \"web\"\ncolour = \"blue\""));
        assert_eq!(e.len(), 1);
        assert!(e[0].path.starts_with("virtual_services[0]"), "{:?}", e[0]);
        assert!(e[0].reason.contains("unknown field `colour`"), "{:?}", e[0]);
    }

    #[test]
    fn wrong_type_names_its_path() {
        let e = errors_of(&with("port = 8080", "port = \"eighty\""));
        assert_eq!(e[0].path, "virtual_services[0].port");
        let e = errors_of(&with("port = 8080", "port = 70000"));
        assert_eq!(e[0].path, "virtual_services[0].port");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let e = errors_of(&with("port = 8080", "port = 0"));
        assert_eq!(
            e,
            vec![ConfigError {
                path: "virtual_services[0].port".into(),
                reason: "port 0 is not a usable port".into()
            }]
        );

        let e = errors_of(&with(
            "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]",
            "servers = []",
        ));
        assert_eq!(e[0].path, "pools[0].servers");

        let dup = with(
            "[dns]",
            "[[virtual_services]]\nname = \"app2\"\nvip = \"127.0.0.10\"\nport = 8080\npool = \"web\"\n\n[dns]",
        );
        let e = errors_of(&dup);
        assert_eq!(e[0].path, "virtual_services[1].vip");
        assert!(e[0].reason.contains("duplicate VIP"), "{:?}", e[0]);
    }

    #[test]
    fn dangling_references_are_errors() {
        let e = errors_of(&with("pool = \"web\"", "pool = \"nope\""));
        assert_eq!(e[0].path, "virtual_services[0].pool");
        let e = errors_of(&with("members = [\"app\"]", "members = [\"ghost\"]"));
        assert_eq!(e[0].path, "gslb_services[0].members[0]");
        let e = errors_of(&with(
            "fqdn = \"app.fabric.test\"",
            "fqdn = \"app.elsewhere.test\"",
        ));
        assert_eq!(e[0].path, "gslb_services[0].fqdn");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "[[[",
            "controller = 5",
            "\u{0}\u{1}",
            "[controller]\nlisten = \"nowhere\"",
        ] {
            assert!(Config::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("App.Fabric.TEST.").as_deref(),
            Some("app.fabric.test")
        );
        assert_eq!(normalize_name("a..b"), None);
        assert!(in_zone("app.fabric.test", "fabric.test"));
        assert!(in_zone("fabric.test", "fabric.test"));
        assert!(!in_zone("xfabric.test", "fabric.test"));
    }
}
