//! Controller <-> Service Engine protocol.
//!
//! One TCP connection per SE, opened by the SE. Each frame is a 4-byte
//! big-endian length followed by that many bytes of JSON; frames above
//! [`MAX_FRAME_BYTES`] are refused before any allocation. The first frame
//! each way is a hello carrying [`PROTO_VERSION`]; a peer speaking another
//! version is told so and disconnected.
//!
//! Config travels as a whole, versioned [`SeConfig`]: the SE swaps it in
//! atomically and acknowledges the version, so the Controller always knows
//! which version each SE serves.
//!
//! Compatibility within one [`PROTO_VERSION`]: fields added later carry serde
//! defaults, so a peer that omits them still parses; a message kind added later
//! is only sent to a peer that said it understands it (see
//! [`ControllerMessage::Welcome::health_events`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::rt;

use crate::model::{
    Algorithm, Certificate, Config, HealthMonitor, OutlierDetection, PoolTls, Server, VsHttp, VsL4,
    VsProtocol,
};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTO_VERSION: u32 = 2;

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Messages from an SE to the Controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SeMessage {
    /// First frame on a connection.
    Hello {
        /// Protocol version the SE speaks.
        proto_version: u32,
        /// Unique SE name.
        se_name: String,
        /// SE group it belongs to.
        se_group: String,
        /// Random id chosen at each SE boot: a new one means the SE restarted
        /// (and lost its config), not that its version went backwards.
        incarnation: u64,
        /// Config version it serves now (0: none).
        applied_version: u64,
        /// Where it takes scale-out hand-offs from primaries (an unspecified
        /// IP: the address its session comes from). None: it takes none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<SocketAddr>,
    },
    /// First frame of an SE that has no certificate yet (over TLS that
    /// checks the Controller against the pinned CA fingerprint).
    Register {
        /// Protocol version the SE speaks.
        proto_version: u32,
        /// The name the certificate will carry.
        se_name: String,
        /// The one-time join token's secret.
        join_token: String,
        /// The SE's P-256 public key (uncompressed point).
        public_key: Vec<u8>,
    },
    /// The SE now serves config `version`.
    Ack {
        /// The version applied.
        version: u64,
    },
    /// The SE could not apply config `version` and keeps serving the previous one.
    Nack {
        /// The version refused.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Periodic liveness.
    Heartbeat {
        /// Config version it serves.
        applied_version: u64,
        /// The SEs of its group whose data-path beats it heard lately, and
        /// how long ago (docs/placement.md, "Partitioned SEs"); absent from
        /// SEs that predate it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        peers: Vec<PeerHeard>,
    },
    /// A server of a pool went up or down on this SE (active or passive
    /// health), or was ejected or returned by outlier detection (`outlier`).
    /// Sent only to a Controller whose welcome set `health_events`.
    Health {
        /// The pool.
        pool: String,
        /// The server.
        server: SocketAddr,
        /// Whether it is up now (with `outlier`: false when ejected, true
        /// when it returned).
        up: bool,
        /// Why, in words (at most [`MAX_REASON_BYTES`]).
        reason: String,
        /// An ejection or return by outlier detection rather than a health
        /// change (absent from SEs that predate it; older Controllers
        /// ignore it and record a health change).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outlier: bool,
    },
    /// Traffic counters since the SE started (cumulative), sent every
    /// [`STATS_INTERVAL`] to a Controller whose welcome set `stats`.
    Stats {
        /// The counters.
        stats: crate::stats::SeStats,
    },
    /// Legacy active/standby: this SE's heartbeat (docs/ha.md); answered
    /// with [`ControllerMessage::HaAck`].
    HaBeat {
        /// The beat; `from` must be the session's SE and `pair` its group.
        beat: crate::ha::Beat,
    },
    /// Legacy active/standby: this SE asks for its pair's VIPs; answered
    /// with [`ControllerMessage::HaVerdict`].
    HaTakeover {
        /// The highest ownership epoch the SE knows.
        epoch: u64,
    },
}

/// How long an SE gives one Controller address to complete a TCP connect
/// and the TLS handshake.
pub const SE_DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long an SE waits for the welcome (or refusal) after its hello.
pub const SE_WELCOME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest pause of an SE between rounds over the Controller addresses
/// (plus up to half again of jitter).
pub const SE_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// What a Controller that answers gets for the whole exchange (connect, TLS,
/// hello, its welcome or refusal), in the bound below.
const SE_ANSWERED_DIAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How long an SE that was serving may take to find a new leader of
/// `controllers` nodes, counted from when that leader could first hear it:
/// it notices its old session is dead (`detect`, the heartbeat silence), may be
/// in its longest backoff, then tries each address once. Of those, up to the
/// nodes outside a quorum may not answer at all (each costs a dial and a
/// welcome timeout); the others answer within [`SE_ANSWERED_DIAL`]. A leader
/// must not judge an SE the previous placement names as gone before this
/// passes: it would move a virtual service off an SE that is serving it and
/// merely still looking for the leader (chaos seeds 145, 189 and 265 of
/// `fabric_under_faults`, with a leader cut one way or paused).
pub fn se_rejoin_bound(detect: std::time::Duration, controllers: usize) -> std::time::Duration {
    let controllers = controllers.max(1) as u32;
    let silent = controllers - (controllers / 2 + 1);
    detect
        + SE_MAX_BACKOFF * 3 / 2
        + (SE_DIAL_TIMEOUT + SE_WELCOME_TIMEOUT) * silent
        + SE_ANSWERED_DIAL * (controllers - silent)
}

/// An SE of the same group heard on the data path (its beats reached the
/// reporting SE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHeard {
    /// The SE heard.
    pub se: String,
    /// How long before the report its last beat came, ms.
    pub ms_ago: u64,
}

/// Most peers one heartbeat reports (more are ignored).
pub const MAX_PEERS_REPORTED: usize = 64;

/// How often an SE reports its counters.
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest reason text a health message carries.
pub const MAX_REASON_BYTES: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Messages from the Controller to an SE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    /// Reply to a registration: the SE's client certificate and the CA.
    Registered {
        /// The certificate, PEM.
        cert_pem: String,
        /// The CA certificate, PEM.
        ca_pem: String,
    },
    /// Reply to a hello.
    Welcome {
        /// Protocol version the Controller speaks.
        proto_version: u32,
        /// How often to send heartbeats, in milliseconds.
        heartbeat_ms: u64,
        /// Whether the Controller takes [`SeMessage::Health`] (false from
        /// Controllers that predate it).
        #[serde(default)]
        health_events: bool,
        /// Whether the Controller takes [`SeMessage::Stats`].
        #[serde(default)]
        stats: bool,
    },
    /// The SE's whole desired config.
    Config(SeConfig),
    /// Reply to a heartbeat: the Controller is alive.
    HeartbeatAck {
        /// Desired-state version the Controller holds.
        desired_version: u64,
    },
    /// The hello was refused; the connection closes after this.
    Refused {
        /// Why.
        reason: String,
    },
    /// The answer to an [`SeMessage::HaBeat`].
    HaAck {
        /// The ack.
        ack: crate::ha::HaAck,
    },
    /// The answer to an [`SeMessage::HaTakeover`].
    HaVerdict {
        /// Granted with an epoch, or refused with the reason.
        verdict: crate::ha::Verdict,
    },
}

/// Everything one SE needs to serve, at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeConfig {
    /// Desired-state version this was computed from.
    pub version: u64,
    /// Virtual services placed on this SE.
    pub virtual_services: Vec<SeVirtualService>,
    /// Its group's legacy active/standby settings (`None`: another HA mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::PairSettings>,
    /// Elastic groups: the other SEs of the group, whose relay addresses
    /// take the data-path beats too (docs/placement.md, "Partitioned SEs").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<ScaleoutPeer>,
}

/// A virtual service as an SE serves it: pool resolved inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeVirtualService {
    /// Name of the virtual service.
    pub name: String,
    /// The VIP.
    pub vip: IpAddr,
    /// The port on the VIP.
    pub port: u16,
    /// Name of its pool (health reports name it); empty from Controllers
    /// that predate it, and the SE then uses the virtual service's name.
    #[serde(default)]
    pub pool: String,
    /// Load-balancing algorithm.
    pub algorithm: Algorithm,
    /// With `consistent_hash`: the request header to hash on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Servers of its pool.
    pub servers: Vec<Server>,
    /// The pool's health monitor, resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_monitor: Option<HealthMonitor>,
    /// TLS termination: the certificates to offer, resolved, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Vec<Certificate>>,
    /// With `tls`: whether clients may resume sessions.
    #[serde(default = "resumption_default")]
    pub tls_resumption: bool,
    /// HTTP limits and added headers.
    #[serde(default)]
    pub http: VsHttp,
    /// TLS to the pool's servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls: Option<PoolTls>,
    /// Speak HTTP/2 to the pool's servers.
    #[serde(default)]
    pub server_http2: bool,
    /// What it carries.
    #[serde(default)]
    pub protocol: VsProtocol,
    /// Limits of `tcp` and `udp` virtual services.
    #[serde(default)]
    pub l4: VsL4,
    /// The pool's outlier detection (passive monitoring), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Placed here as a secondary (elastic active/active, scale-out): the
    /// primary SE holds the VIP, so this SE does not claim it, and serves
    /// the connections the primary hands it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secondary: bool,
    /// On the primary: the secondaries it hands a share of new connections
    /// to (docs/placement.md, "Scale-out").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaleout: Vec<ScaleoutPeer>,
}

fn resumption_default() -> bool {
    true
}

/// A secondary SE of a virtual service, as its primary knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleoutPeer {
    /// SE name (what flows hash on: stable across restarts of the SE).
    pub se: String,
    /// Its relay listener.
    pub relay: SocketAddr,
}

impl SeConfig {
    /// The config for SE `se` of `group`: in an elastic group, the virtual
    /// services `placement` puts on it (marked secondary where it is not
    /// the first); in a legacy active/standby group, all of the group's.
    /// On a primary, each secondary whose relay address is in `relays`
    /// (by SE name) is listed in `scaleout`. In an elastic group, `peers`
    /// (the group's SEs with a relay address) but `se` itself are its peers.
    pub fn for_se(
        config: &Config,
        group: &str,
        se: &str,
        placement: &crate::placement::Placement,
        relays: &BTreeMap<String, SocketAddr>,
        peers: &[ScaleoutPeer],
        version: u64,
    ) -> SeConfig {
        let mut cfg = SeConfig::for_group(config, group, version);
        if cfg.ha.is_none() {
            cfg.peers = peers.iter().filter(|p| p.se != se).cloned().collect();
            cfg.virtual_services.retain_mut(|vs| {
                let ses = placement.of(&vs.name);
                vs.secondary = ses.first().is_some_and(|p| p != se);
                if !vs.secondary {
                    vs.scaleout = ses
                        .iter()
                        .skip(1)
                        .filter_map(|s| {
                            relays.get(s).map(|&relay| ScaleoutPeer {
                                se: s.clone(),
                                relay,
                            })
                        })
                        .collect();
                }
                ses.iter().any(|s| s == se)
            });
        }
        cfg
    }

    /// Every virtual service of `group` (no placement), computed from the
    /// desired state at `version`.
    pub fn for_group(config: &Config, group: &str, version: u64) -> SeConfig {
        let virtual_services = config
            .virtual_services
            .iter()
            .filter(|vs| vs.se_group == group)
            .filter_map(|vs| {
                let pool = config.pool(&vs.pool)?;
                Some(SeVirtualService {
                    name: vs.name.clone(),
                    vip: vs.vip,
                    port: vs.port,
                    pool: pool.name.clone(),
                    algorithm: pool.algorithm,
                    hash_header: pool.hash_header.clone(),
                    servers: pool.servers.clone(),
                    health_monitor: pool
                        .health_monitor
                        .as_ref()
                        .and_then(|m| config.health_monitor(m))
                        .cloned(),
                    tls: vs.tls.as_ref().map(|t| {
                        t.certificates
                            .iter()
                            .filter_map(|name| config.certificates.iter().find(|c| c.name == *name))
                            .cloned()
                            .collect()
                    }),
                    tls_resumption: vs.tls.as_ref().is_none_or(|t| t.session_resumption),
                    http: vs.http,
                    server_tls: pool.tls.clone(),
                    server_http2: pool.http2,
                    protocol: vs.protocol,
                    l4: vs.l4,
                    outlier_detection: pool.outlier_detection,
                    secondary: false,
                    scaleout: Vec::new(),
                })
            })
            .collect();
        let ha = config
            .se_groups
            .iter()
            .find(|g| g.name == group && g.ha_mode == crate::model::HaMode::LegacyActiveStandby)
            .map(|g| crate::ha::PairSettings {
                profile: g.ha_profile,
                preempt: g.ha_preempt,
            });
        SeConfig {
            version,
            virtual_services,
            ha,
            peers: Vec::new(),
        }
    }
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than we accept.
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// The frame is not a message we understand.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Write one message and flush it (simulated TCP sends only on flush).
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_frame_limited(w, msg, MAX_FRAME_BYTES).await
}

/// [`write_frame`] with a size limit of `max` bytes.
pub async fn write_frame_limited<W, T>(w: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > max {
        return Err(FrameError::TooLarge(body.len(), max));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Read one message; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_limited(r, MAX_FRAME_BYTES).await
}

/// [`read_frame`] with a size limit of `max` bytes.
pub async fn read_frame_limited<R, T>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len, max));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Read frames on their own task into a bounded channel, so a `select!`
/// over the receiver never cancels a half-read frame. The channel ends after
/// the stream does; a bad frame arrives as an `Err` and ends it too. The
/// reader stops when the returned handle is aborted or the receiver dropped.
pub fn spawn_reader<R, T>(
    mut rd: R,
    capacity: usize,
) -> (mpsc::Receiver<Result<T, FrameError>>, rt::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    let task = rt::spawn(async move {
        loop {
            let frame = match read_frame::<_, T>(&mut rd).await {
                Ok(None) => return,
                Ok(Some(m)) => Ok(m),
                Err(e) => Err(e),
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejoin_bound_covers_one_silent_controller_of_three() {
        use std::time::Duration;
        let detect = Duration::from_millis(1500);
        // detect + longest backoff + one silent node + two that answer.
        assert_eq!(se_rejoin_bound(detect, 3), Duration::from_millis(6000));
        // One node: nobody outside the quorum, it answers.
        assert_eq!(se_rejoin_bound(detect, 1), Duration::from_millis(3500));
        // Five: two may be silent.
        assert_eq!(se_rejoin_bound(detect, 5), Duration::from_millis(8500));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = SeMessage::Hello {
            proto_version: PROTO_VERSION,
            se_name: "se-1".into(),
            se_group: "default".into(),
            incarnation: 7,
            applied_version: 0,
            relay: None,
        };
        write_frame(&mut a, &hello).await.unwrap();
        let cfg = ControllerMessage::Config(SeConfig::for_group(&Config::example(), "default", 7));
        write_frame(&mut a, &cfg).await.unwrap();
        drop(a);
        assert_eq!(
            read_frame::<_, SeMessage>(&mut b).await.unwrap(),
            Some(hello)
        );
        let got = read_frame::<_, ControllerMessage>(&mut b)
            .await
            .unwrap()
            .unwrap();
        let ControllerMessage::Config(c) = got else {
            panic!("expected config, got {got:?}")
        };
        assert_eq!(c.version, 7);
        assert_eq!(c.virtual_services[0].servers.len(), 2);
        assert_eq!(c.virtual_services[0].pool, "web");
        assert!(c.virtual_services[0].health_monitor.is_some());
        assert!(read_frame::<_, SeMessage>(&mut b).await.unwrap().is_none());
    }

    #[test]
    fn older_frames_still_parse() {
        // A welcome and a virtual service as sent before health events existed.
        let welcome = r#"{"type":"welcome","proto_version":1,"heartbeat_ms":500}"#;
        let ControllerMessage::Welcome { health_events, .. } =
            serde_json::from_str(welcome).unwrap()
        else {
            panic!("not a welcome")
        };
        assert!(!health_events);
        let vs = r#"{"name":"app","vip":"10.0.100.1","port":80,"algorithm":"round_robin",
                     "servers":["10.0.2.1:80","10.0.2.2:80"]}"#;
        let vs: SeVirtualService = serde_json::from_str(vs).unwrap();
        assert_eq!(
            vs.servers[1],
            Server::from("10.0.2.2:80".parse::<SocketAddr>().unwrap())
        );
        assert_eq!((vs.pool.as_str(), &vs.health_monitor), ("", &None));
        // Servers with default settings are still written as plain addresses.
        let json = serde_json::to_string(&vs).unwrap();
        assert!(
            json.contains(r#""servers":["10.0.2.1:80","10.0.2.2:80"]"#),
            "{json}"
        );
    }

    #[test]
    fn health_messages_round_trip_and_reasons_are_cut() {
        let m = SeMessage::Health {
            pool: "web".into(),
            server: "10.0.2.1:80".parse().unwrap(),
            up: false,
            reason: "connect: refused".into(),
            outlier: false,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("outlier"), "{json}");
        assert_eq!(serde_json::from_str::<SeMessage>(&json).unwrap(), m);
        let ejected = SeMessage::Health {
            pool: "web".into(),
            server: "10.0.2.1:80".parse().unwrap(),
            up: false,
            reason: "5 gateway failures in a row".into(),
            outlier: true,
        };
        let json = serde_json::to_string(&ejected).unwrap();
        assert_eq!(serde_json::from_str::<SeMessage>(&json).unwrap(), ejected);
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, SeMessage>(&mut b).await,
            Err(FrameError::TooLarge(..))
        ));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{nope").await.unwrap();
        assert!(matches!(
            read_frame::<_, SeMessage>(&mut b).await,
            Err(FrameError::Malformed(_))
        ));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{}").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, SeMessage>(&mut b).await,
            Err(FrameError::Io(_))
        ));
    }
}
