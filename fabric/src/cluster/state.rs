//! The replicated desired state: model objects with versions, and the
//! commands that change them.
//!
//! A [`Config`] is stored as objects: every list section (`pools`,
//! `virtual_services`, ...) holds objects keyed by their `name` (`fqdn` for
//! GSLB services), and every other section (`controller`, `dns`) is one
//! object with the empty name. Each object carries the version at which it
//! last changed. A command is checked *inside* `apply`, on every node, in
//! log order: conditional writes compare versions, and the config the
//! change would produce must validate, or the change is refused whole. So
//! every node's state is the same pure function of the log.
//!
//! Versions are `version_floor + log index`: unique, and increasing in log
//! order. A restore raises the floor above the backup's version, so SEs,
//! which refuse to go backwards, accept the restored state.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Config, ConfigError, ConfigErrors};
use crate::pki::CaMaterial;

/// The tenant that owns objects created without one.
pub const ADMIN_TENANT: &str = "admin";

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Version at which it last changed.
    pub version: u64,
    /// Tenant that owns it.
    pub tenant: String,
    /// The object as the config file spells it, as JSON.
    pub body: Value,
}

/// A change to the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Command {
    /// Create or replace one object.
    Put {
        /// Config section, e.g. `pools`.
        kind: String,
        /// Object name (empty for a singleton section).
        name: String,
        /// Owner.
        tenant: String,
        /// The object.
        body: Value,
        /// Only if the current version is this (0: only if absent).
        if_version: Option<u64>,
    },
    /// Delete one object.
    Delete {
        /// Config section.
        kind: String,
        /// Object name.
        name: String,
        /// Only if the current version is this.
        if_version: Option<u64>,
        /// Only if this tenant owns it (None: whoever owns it).
        #[serde(default)]
        tenant: Option<String>,
    },
    /// Set the cluster's CA, unless it has one.
    InitCa {
        /// The CA.
        ca: CaMaterial,
    },
    /// Add a one-time SE join token.
    AddJoinToken {
        /// SHA-256 (hex) of the secret.
        token_sha256: String,
        /// A label for operators.
        label: String,
    },
    /// Use a join token: record the certificate issued to the SE.
    RegisterSe {
        /// SHA-256 (hex) of the secret presented.
        token_sha256: String,
        /// The SE's name.
        se_name: String,
        /// SHA-256 (hex) of the certificate issued to it.
        cert_sha256: String,
    },
    /// Add an API token.
    AddApiToken {
        /// SHA-256 (hex) of the secret.
        token_sha256: String,
        /// What it may do.
        token: ApiToken,
    },
    /// Revoke API tokens whose id (the first 16 hex digits of the secret's
    /// SHA-256) is this.
    RevokeApiToken {
        /// The token's id.
        id: String,
    },
    /// Restore a backup: its objects (with their owners), its CA and the
    /// SE certificates and API tokens it knew.
    Restore {
        /// The backup.
        backup: Box<Backup>,
    },
    /// Change nothing, but go through the log like any write: proves the
    /// cluster commits (the leader-loss drill uses it). Replies the version.
    Probe,
    /// Mark SE `se` draining (or not): placement moves what it carries
    /// elsewhere, keeping each place while it still has connections open.
    SetDraining {
        /// The SE.
        se: String,
        /// Draining or back to normal.
        draining: bool,
    },
    /// Record where the virtual services of elastic groups run (the
    /// leader's placement, `crate::placement`). Replies the SE config
    /// version it makes.
    SetPlacement {
        /// The whole placement.
        placement: Box<crate::placement::Placement>,
        /// The Raft term of the leader that computed it: the entry applies
        /// only if committed in that term. A deposed leader's placement,
        /// computed from what it saw while cut off and forwarded to the new
        /// leader, is refused rather than moving services off healthy SEs
        /// (a fencing token; chaos seed 30 of `fabric_under_faults`).
        /// `None` (entries written before the field existed) always applies.
        #[serde(default)]
        term: Option<u64>,
        /// The node id of that leader: openraft's default election may
        /// make a second node leader in the same term (its leader id is
        /// the pair), so the term alone did not fence a deposed leader of
        /// the same term (chaos seed 836 of the mixed swarm: nodes 2 and 3
        /// both led term 2). `None`: only the term is compared.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<u64>,
    },
    /// Replace everything (bootstrap from a file, restore from a backup).
    Replace {
        /// The whole config.
        config: Box<Config>,
        /// Versions after this command exceed this one.
        version_floor: u64,
        /// Only if there is no config yet (bootstrap: a node replaying its
        /// log after a restart must not reset later changes).
        #[serde(default)]
        only_if_empty: bool,
    },
}

impl Command {
    /// A new one-time SE join token labelled `label`: its secret (given to
    /// the SE once) and the command that records its hash.
    pub fn new_join_token(label: &str) -> (String, Command) {
        let secret = crate::pki::new_secret();
        let cmd = Command::AddJoinToken {
            token_sha256: crate::pki::sha256_hex(secret.as_bytes()),
            label: label.to_string(),
        };
        (secret, cmd)
    }

    /// A new API token: its secret (shown once), its id, and the command
    /// that records its hash.
    pub fn new_api_token(token: ApiToken) -> (String, String, Command) {
        let secret = crate::pki::new_secret();
        let token_sha256 = crate::pki::sha256_hex(secret.as_bytes());
        let id = token_id(&token_sha256).to_string();
        (
            secret,
            id,
            Command::AddApiToken {
                token_sha256,
                token,
            },
        )
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "error")]
pub enum Refusal {
    /// A leader-only write computed in an earlier term than the one that
    /// committed it (its writer was deposed meanwhile).
    #[error("computed by the leader of term {computed_in} (node {computed_by:?}), committed by the leader of term {committed_in} (node {committed_by})")]
    StaleTerm {
        /// The term the write was computed in.
        computed_in: u64,
        /// The node that computed it, if the write says.
        computed_by: Option<u64>,
        /// The term of the entry.
        committed_in: u64,
        /// The node that led when it was committed.
        committed_by: u64,
    },
    /// If-Match failed.
    #[error("version conflict: the object is at version {current:?}")]
    Conflict {
        /// Its version now (None: absent).
        current: Option<u64>,
    },
    /// No such object.
    #[error("no such object")]
    NotFound,
    /// The object belongs to another tenant.
    #[error("the object belongs to another tenant")]
    OtherTenant,
    /// The resulting config would not validate.
    #[error("{}", ConfigErrors(errors.iter().map(|(path, reason)| ConfigError { path: path.clone(), reason: reason.clone() }).collect()))]
    Invalid {
        /// (path, reason) pairs.
        errors: Vec<(String, String)>,
    },
}

/// What applying one log entry returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Applied; the new version.
    Applied(u64),
    /// Refused; nothing changed.
    Refused(Refusal),
    /// A Raft-internal entry (blank, membership).
    None,
}

/// The desired state as one config, at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Version of the latest applied change (0: nothing yet).
    pub version: u64,
    /// The config (None before the cluster was given one).
    pub config: Option<Arc<Config>>,
    /// Where the virtual services of elastic groups run.
    pub placement: Arc<crate::placement::Placement>,
    /// Version of the latest placement change (0: none yet).
    pub placement_version: u64,
    /// SEs an operator is draining.
    pub draining: Arc<std::collections::BTreeSet<String>>,
}

impl Desired {
    /// The version of what SEs are sent: moves with the config and with the
    /// placement (both come from log indexes, so they compare).
    pub fn se_version(&self) -> u64 {
        self.version.max(self.placement_version)
    }
}

/// The state machine's data: what snapshots hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objects {
    /// kind -> name -> object.
    pub objects: BTreeMap<String, BTreeMap<String, Stored>>,
    /// Version of the latest applied change.
    pub version: u64,
    /// See the module doc.
    pub version_floor: u64,
    /// The cluster's certificate authority (set once, at bootstrap).
    #[serde(default)]
    pub ca: Option<CaMaterial>,
    /// One-time SE join tokens by the SHA-256 (hex) of their secret.
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// SE client certificates: SHA-256 (hex) of the certificate -> SE name.
    #[serde(default)]
    pub se_certs: BTreeMap<String, String>,
    /// API tokens by the SHA-256 (hex) of their secret.
    #[serde(default)]
    pub api_tokens: BTreeMap<String, ApiToken>,
    /// Where the virtual services of elastic groups run.
    #[serde(default)]
    pub placement: crate::placement::Placement,
    /// Version of the latest placement change.
    #[serde(default)]
    pub placement_version: u64,
    /// SEs an operator is draining.
    #[serde(default)]
    pub draining: std::collections::BTreeSet<String>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, in every tenant: objects, tenants, tokens, backups.
    Admin,
    /// Read and change the objects of its tenant.
    Operator,
    /// Read the objects of its tenant (or of all, without one).
    ReadOnly,
}

/// An API token; the secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// What the operator called it.
    pub label: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it acts in (None: admin-wide; an operator needs one).
    pub tenant: Option<String>,
}

/// The id of a token: the first 16 hex digits of its secret's SHA-256
/// (safe to show; the secret cannot be recovered from it).
pub fn token_id(token_sha256: &str) -> &str {
    &token_sha256[..token_sha256.len().min(16)]
}

/// The desired state as a backup file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// Version of the desired state when the backup was taken.
    pub version: u64,
    /// kind -> name -> object, with versions and owners.
    pub objects: BTreeMap<String, BTreeMap<String, Stored>>,
    /// The CA (so SEs registered before keep working).
    pub ca: Option<CaMaterial>,
    /// SE client certificates.
    #[serde(default)]
    pub se_certs: BTreeMap<String, String>,
    /// API tokens.
    #[serde(default)]
    pub api_tokens: BTreeMap<String, ApiToken>,
}

/// The `format` of backups this code writes and reads.
pub const BACKUP_FORMAT: &str = "fabric-backup/1";

/// A one-time token an SE registers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// What the operator called it.
    pub label: String,
    /// The SE that used it, once used.
    pub used_by: Option<String>,
}

/// The key field of objects in a list section (`name`, `fqdn` for GSLB services).
pub fn key_of(body: &Value) -> Option<&str> {
    body.get("name")
        .or_else(|| body.get("fqdn"))
        .and_then(Value::as_str)
}

/// Split a config into sections of named objects.
pub fn objects_of(config: &Config) -> BTreeMap<String, BTreeMap<String, Value>> {
    let Ok(Value::Object(top)) = serde_json::to_value(config) else {
        unreachable!("a Config serializes to a JSON object")
    };
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (kind, v) in top {
        let section = out.entry(kind).or_default();
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    let name = key_of(&item).unwrap_or_default().to_string();
                    section.insert(name, item);
                }
            }
            other => {
                section.insert(String::new(), other);
            }
        }
    }
    out
}

/// Whether `kind` is a list section of [`Config`] (as opposed to a singleton).
pub fn is_list_kind(kind: &str) -> Option<bool> {
    static KINDS: std::sync::OnceLock<BTreeMap<String, bool>> = std::sync::OnceLock::new();
    let kinds = KINDS.get_or_init(|| {
        let Ok(Value::Object(top)) = serde_json::to_value(Config::example()) else {
            unreachable!("a Config serializes to a JSON object")
        };
        top.into_iter()
            .map(|(k, v)| (k, matches!(v, Value::Array(_))))
            .collect()
    });
    kinds.get(kind).copied()
}

impl Objects {
    /// The config these objects make, validated.
    pub fn config(&self) -> Result<Config, ConfigErrors> {
        config_of(&self.objects)
    }

    /// Apply the command of the log entry at `index`, committed by the
    /// leader `node` of `term`: a write fenced to another leader is refused.
    pub fn apply_in_term(&mut self, term: u64, node: u64, index: u64, cmd: &Command) -> Reply {
        if let Command::SetPlacement {
            term: Some(computed_in),
            leader,
            ..
        } = cmd
        {
            if *computed_in != term || leader.is_some_and(|l| l != node) {
                return Reply::Refused(Refusal::StaleTerm {
                    computed_in: *computed_in,
                    computed_by: *leader,
                    committed_in: term,
                    committed_by: node,
                });
            }
        }
        self.apply(index, cmd)
    }

    /// Apply the command of the log entry at `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Reply {
        let version = self.version_floor + index;
        match cmd {
            Command::Probe => Reply::Applied(self.version),
            // Not part of the config (no object version moves), but SEs
            // must be sent what changed: it gets a version of its own.
            Command::SetDraining { se, draining } => {
                let changed = if *draining {
                    self.draining.insert(se.clone())
                } else {
                    self.draining.remove(se)
                };
                if changed {
                    // Placement reads it: a version of its own, like placement.
                    self.placement_version = version.max(self.version);
                }
                Reply::Applied(self.placement_version)
            }
            Command::SetPlacement { placement, .. } => {
                self.placement = (**placement).clone();
                self.placement_version = version.max(self.version);
                Reply::Applied(self.placement_version)
            }
            // Not part of the config: the config version does not move.
            Command::InitCa { ca } => {
                if self.ca.is_some() {
                    return Reply::Refused(Refusal::Conflict {
                        current: Some(self.version),
                    });
                }
                self.ca = Some(ca.clone());
                Reply::Applied(self.version)
            }
            Command::AddJoinToken {
                token_sha256,
                label,
            } => {
                if self.join_tokens.contains_key(token_sha256) {
                    return Reply::Refused(Refusal::Conflict { current: None });
                }
                let token = JoinToken {
                    label: label.clone(),
                    used_by: None,
                };
                self.join_tokens.insert(token_sha256.clone(), token);
                Reply::Applied(self.version)
            }
            Command::RegisterSe {
                token_sha256,
                se_name,
                cert_sha256,
            } => {
                let Some(token) = self.join_tokens.get_mut(token_sha256) else {
                    return Reply::Refused(Refusal::NotFound);
                };
                if token.used_by.is_some() {
                    return Reply::Refused(Refusal::Conflict { current: None });
                }
                token.used_by = Some(se_name.clone());
                self.se_certs.insert(cert_sha256.clone(), se_name.clone());
                Reply::Applied(self.version)
            }
            Command::AddApiToken {
                token_sha256,
                token,
            } => {
                if self.api_tokens.contains_key(token_sha256) {
                    return Reply::Refused(Refusal::Conflict { current: None });
                }
                let tenant_ok = match (&token.role, &token.tenant) {
                    (Role::Operator, None) => false,
                    (_, Some(t)) => t == ADMIN_TENANT || self.get("tenants", t).is_some(),
                    _ => true,
                };
                if !tenant_ok {
                    let reason = match &token.tenant {
                        None => "an operator token needs a tenant".to_string(),
                        Some(t) => format!("no tenant named `{t}`"),
                    };
                    return Reply::Refused(Refusal::Invalid {
                        errors: vec![("tenant".into(), reason)],
                    });
                }
                self.api_tokens.insert(token_sha256.clone(), token.clone());
                Reply::Applied(self.version)
            }
            Command::RevokeApiToken { id } => {
                let before = self.api_tokens.len();
                self.api_tokens.retain(|sha, _| token_id(sha) != id);
                if self.api_tokens.len() == before {
                    return Reply::Refused(Refusal::NotFound);
                }
                Reply::Applied(self.version)
            }
            Command::Restore { backup } => {
                if backup.format != BACKUP_FORMAT {
                    return Reply::Refused(Refusal::Invalid {
                        errors: vec![(
                            "format".into(),
                            format!("`{}` is not `{BACKUP_FORMAT}`", backup.format),
                        )],
                    });
                }
                let floor = backup.version.max(self.version_floor);
                let version = floor + index;
                let objects = backup
                    .objects
                    .iter()
                    .map(|(kind, objs)| {
                        let objs = objs
                            .iter()
                            .map(|(name, s)| {
                                (
                                    name.clone(),
                                    Stored {
                                        version,
                                        ..s.clone()
                                    },
                                )
                            })
                            .collect();
                        (kind.clone(), objs)
                    })
                    .collect();
                if let Err(e) = config_of(&objects).and_then(|_| owners_exist(&objects)) {
                    return Reply::Refused(invalid(e));
                }
                self.objects = objects;
                self.version_floor = floor;
                self.version = version;
                if backup.ca.is_some() {
                    self.ca = backup.ca.clone();
                }
                self.se_certs.extend(backup.se_certs.clone());
                self.api_tokens.extend(backup.api_tokens.clone());
                Reply::Applied(version)
            }
            Command::Replace {
                config,
                version_floor,
                only_if_empty,
            } => {
                if *only_if_empty && !self.objects.is_empty() {
                    return Reply::Refused(Refusal::Conflict {
                        current: Some(self.version),
                    });
                }
                if let Err(e) = config.validate() {
                    return Reply::Refused(invalid(e));
                }
                let floor = (*version_floor).max(self.version_floor);
                let version = floor + index;
                self.objects = objects_of(config)
                    .into_iter()
                    .map(|(kind, objs)| {
                        let objs = objs
                            .into_iter()
                            .map(|(name, body)| {
                                let s = Stored {
                                    version,
                                    tenant: ADMIN_TENANT.into(),
                                    body,
                                };
                                (name, s)
                            })
                            .collect();
                        (kind, objs)
                    })
                    .collect();
                self.version_floor = floor;
                self.version = version;
                Reply::Applied(version)
            }
            Command::Put {
                kind,
                name,
                tenant,
                body,
                if_version,
            } => {
                let existing = self.get(kind, name);
                if existing.is_some_and(|s| s.tenant != *tenant) {
                    return Reply::Refused(Refusal::OtherTenant);
                }
                let current = existing.map(|s| s.version);
                if let Some(want) = if_version {
                    if current.unwrap_or(0) != *want {
                        return Reply::Refused(Refusal::Conflict { current });
                    }
                }
                let mut next = self.objects.clone();
                next.entry(kind.clone()).or_default().insert(
                    name.clone(),
                    Stored {
                        version,
                        tenant: tenant.clone(),
                        body: body.clone(),
                    },
                );
                self.commit(next, version)
            }
            Command::Delete {
                kind,
                name,
                if_version,
                tenant,
            } => {
                let Some(stored) = self.get(kind, name) else {
                    return Reply::Refused(Refusal::NotFound);
                };
                if tenant.as_ref().is_some_and(|t| *t != stored.tenant) {
                    return Reply::Refused(Refusal::OtherTenant);
                }
                let current = stored.version;
                if if_version.is_some_and(|want| want != current) {
                    return Reply::Refused(Refusal::Conflict {
                        current: Some(current),
                    });
                }
                let mut next = self.objects.clone();
                if let Some(section) = next.get_mut(kind) {
                    section.remove(name);
                }
                self.commit(next, version)
            }
        }
    }

    /// One object.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Stored> {
        self.objects.get(kind)?.get(name)
    }

    /// The whole state as a backup.
    pub fn backup(&self) -> Backup {
        Backup {
            format: BACKUP_FORMAT.into(),
            version: self.version,
            objects: self.objects.clone(),
            ca: self.ca.clone(),
            se_certs: self.se_certs.clone(),
            api_tokens: self.api_tokens.clone(),
        }
    }

    fn commit(&mut self, next: BTreeMap<String, BTreeMap<String, Stored>>, version: u64) -> Reply {
        if let Err(e) = config_of(&next).and_then(|_| owners_exist(&next)) {
            return Reply::Refused(invalid(e));
        }
        self.objects = next;
        self.version = version;
        Reply::Applied(version)
    }
}

fn invalid(e: ConfigErrors) -> Refusal {
    Refusal::Invalid {
        errors: e.0.into_iter().map(|e| (e.path, e.reason)).collect(),
    }
}

/// Every object's owner is the admin tenant or a listed one, a tenant that
/// still owns objects is not removed, and no object refers to another
/// tenant's (see [`REFERENCES`]).
fn owners_exist(objects: &BTreeMap<String, BTreeMap<String, Stored>>) -> Result<(), ConfigErrors> {
    let tenants = objects.get("tenants");
    let mut errors = Vec::new();
    for (kind, objs) in objects {
        for (name, s) in objs {
            if s.tenant != ADMIN_TENANT && !tenants.is_some_and(|t| t.contains_key(&s.tenant)) {
                errors.push(ConfigError {
                    path: format!("{kind}[{name}]"),
                    reason: format!("its tenant `{}` does not exist", s.tenant),
                });
            }
        }
    }
    for (kind, field, target) in REFERENCES {
        for (name, s) in objects.get(*kind).into_iter().flatten() {
            for r in refs_at(&s.body, field) {
                let owner = objects
                    .get(*target)
                    .and_then(|o| o.get(r))
                    .map(|t| &t.tenant);
                if owner.is_some_and(|t| *t != s.tenant && t != ADMIN_TENANT) {
                    errors.push(ConfigError {
                        path: format!("{kind}[{name}]{}", field.replace('/', ".")),
                        reason: format!("`{r}` belongs to another tenant"),
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// References between objects: (kind, JSON pointer to the field, kind
/// referred to); a list field refers to each of its items. An object may refer to objects of
/// its own tenant and to the admin tenant's (shared), not to another
/// tenant's.
const REFERENCES: &[(&str, &str, &str)] = &[
    ("virtual_services", "/pool", "pools"),
    ("virtual_services", "/se_group", "se_groups"),
    ("virtual_services", "/tls/certificates", "certificates"),
    ("pools", "/health_monitor", "health_monitors"),
    ("gslb_services", "/members/*/vs", "virtual_services"),
    ("gslb_services", "/health/monitor", "health_monitors"),
];

/// The strings at `field` of `body`: a JSON pointer where a `*` segment
/// stands for every item of an array; an array at the end gives its strings.
fn refs_at<'v>(body: &'v Value, field: &str) -> Vec<&'v str> {
    let mut at = vec![body];
    for segment in field.split('/').skip(1) {
        at = at
            .into_iter()
            .flat_map(|v| match (segment, v) {
                ("*", Value::Array(items)) => items.iter().collect::<Vec<_>>(),
                (key, v) => v.get(key).into_iter().collect(),
            })
            .collect();
    }
    at.into_iter()
        .flat_map(|v| match v {
            Value::String(n) => vec![n.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Build and validate a config from stored objects.
pub fn config_of(
    objects: &BTreeMap<String, BTreeMap<String, Stored>>,
) -> Result<Config, ConfigErrors> {
    let mut top = serde_json::Map::new();
    for (kind, objs) in objects {
        match is_list_kind(kind) {
            Some(true) => {
                let items = objs.values().map(|s| s.body.clone()).collect();
                top.insert(kind.clone(), Value::Array(items));
            }
            Some(false) => {
                if let Some(s) = objs.get("") {
                    top.insert(kind.clone(), s.body.clone());
                }
            }
            None => {
                return Err(ConfigErrors(vec![ConfigError {
                    path: kind.clone(),
                    reason: "unknown kind of object".into(),
                }]))
            }
        }
    }
    let config: Config = serde_path_to_error::deserialize(Value::Object(top)).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: e.path().to_string(),
            reason: e.into_inner().to_string(),
        }])
    })?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_applies_only_in_the_term_that_computed_it() {
        let mut o = boot();
        let mut placement = crate::placement::Placement::default();
        placement
            .virtual_services
            .insert("vs-1".into(), vec!["se-1".into()]);
        let set = |placement: &crate::placement::Placement, term| Command::SetPlacement {
            placement: Box::new(placement.clone()),
            term,
            leader: Some(1),
        };
        // Computed by the leader of term 1, committed by the leader of term 2.
        assert_eq!(
            o.apply_in_term(2, 1, 3, &set(&placement, Some(1))),
            Reply::Refused(Refusal::StaleTerm {
                computed_in: 1,
                computed_by: Some(1),
                committed_in: 2,
                committed_by: 1,
            })
        );
        // Computed by node 1 leading term 2, committed by node 3 that
        // became leader of the same term after it.
        assert!(matches!(
            o.apply_in_term(2, 3, 3, &set(&placement, Some(2))),
            Reply::Refused(Refusal::StaleTerm { .. })
        ));
        assert!(o.placement.virtual_services.is_empty());
        assert!(matches!(
            o.apply_in_term(2, 1, 4, &set(&placement, Some(2))),
            Reply::Applied(_)
        ));
        assert_eq!(o.placement.of("vs-1"), ["se-1".to_string()]);
        // An entry from before the field existed always applies.
        placement.virtual_services.clear();
        assert!(matches!(
            o.apply_in_term(3, 2, 5, &set(&placement, None)),
            Reply::Applied(_)
        ));
        assert!(o.placement.virtual_services.is_empty());
    }

    fn boot() -> Objects {
        let mut o = Objects::default();
        let r = o.apply(
            1,
            &Command::Replace {
                config: Box::new(Config::example()),
                version_floor: 0,
                only_if_empty: true,
            },
        );
        assert_eq!(r, Reply::Applied(1));
        let again = Command::Replace {
            config: Box::new(Config::example()),
            version_floor: 0,
            only_if_empty: true,
        };
        assert!(matches!(
            o.apply(2, &again),
            Reply::Refused(Refusal::Conflict { .. })
        ));
        o
    }

    #[test]
    fn objects_round_trip_to_the_same_config() {
        let o = boot();
        assert_eq!(o.config().unwrap(), Config::example());
        assert!(o.get("pools", "web").is_some() || !o.objects["pools"].is_empty());
        assert!(o.get("controller", "").is_some());
    }

    #[test]
    fn conditional_writes_and_validation_are_checked_in_apply() {
        let mut o = boot();
        let (name, pool) = o.objects["pools"]
            .iter()
            .next()
            .map(|(n, s)| (n.clone(), s.clone()))
            .unwrap();
        let mut body = pool.body.clone();
        body["servers"] = serde_json::json!(["10.9.9.9:80"]);
        let put = |if_version| Command::Put {
            kind: "pools".into(),
            name: name.clone(),
            tenant: ADMIN_TENANT.into(),
            body: body.clone(),
            if_version,
        };
        assert_eq!(
            o.apply(2, &put(Some(7))),
            Reply::Refused(Refusal::Conflict { current: Some(1) })
        );
        assert_eq!(o.apply(3, &put(Some(1))), Reply::Applied(3));
        assert_eq!(o.get("pools", &name).unwrap().version, 3);
        // Create-only fails on an existing object.
        assert!(matches!(
            o.apply(4, &put(Some(0))),
            Reply::Refused(Refusal::Conflict { .. })
        ));
        // Deleting a pool a virtual service uses leaves the config invalid: refused whole.
        let del = Command::Delete {
            kind: "pools".into(),
            name: name.clone(),
            if_version: None,
            tenant: None,
        };
        let Reply::Refused(Refusal::Invalid { errors }) = o.apply(5, &del) else {
            panic!("dangling pool reference accepted")
        };
        assert!(!errors.is_empty());
        assert_eq!(o.version, 3);
        assert_eq!(o.get("pools", &name).unwrap().version, 3);
        // A malformed body names the field.
        let mut bad = body.clone();
        bad["servers"] = serde_json::json!("nope");
        let r = o.apply(
            6,
            &Command::Put {
                kind: "pools".into(),
                name: name.clone(),
                tenant: ADMIN_TENANT.into(),
                body: bad,
                if_version: None,
            },
        );
        let Reply::Refused(Refusal::Invalid { errors }) = r else {
            panic!("{r:?}")
        };
        assert!(errors[0].0.contains("servers"), "{errors:?}");
    }

    #[test]
    fn restore_raises_the_version_floor() {
        let mut o = Objects::default();
        let r = o.apply(
            2,
            &Command::Replace {
                config: Box::new(Config::example()),
                version_floor: 1000,
                only_if_empty: false,
            },
        );
        assert_eq!(r, Reply::Applied(1002));
        let r = o.apply(
            3,
            &Command::Delete {
                kind: "demo_origins".into(),
                name: "nope".into(),
                if_version: None,
                tenant: None,
            },
        );
        assert_eq!(r, Reply::Refused(Refusal::NotFound));
    }
}
