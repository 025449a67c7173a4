//! The SE agent: its session with the Controller.
//!
//! The agent connects, says hello with the version it serves, and then
//! applies every config the Controller pushes, acknowledging each. When the
//! Controller is unreachable (headless cluster, partition) the data plane
//! keeps serving its last applied config; the agent reconnects with capped,
//! jittered backoff and resyncs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fabric::pki::{self, JoinTicket};
use fabric::platform::{L2Fabric, Storage};
use fabric::proto::{self, ControllerMessage, SeMessage, PROTO_VERSION};
use fabric::rt;
use tokio::sync::watch;

use crate::dataplane::DataPlane;
use crate::health::HealthEvents;

/// Time allowed for a registration: connect, TLS, and the answer (each of
/// the two within it).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// Heartbeats the Controller may miss before the session is dropped.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Longest wait between reconnection attempts (plus up to half again of
/// jitter). Short, because an SE that restarted while the Controller was away
/// has no config until it reconnects: its outage lasts until then. It and
/// the dial and welcome timeouts are in `proto`, because a leader's patience
/// with SEs looking for it is built from them ([`proto::se_rejoin_bound`]).
pub const MAX_BACKOFF: Duration = proto::SE_MAX_BACKOFF;
/// First pause before trying the Controller again.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Heartbeats awaiting their ack that an SE remembers (more: the session
/// is dying of silence anyway).
const MAX_UNACKED: usize = 8;
/// Pause before the next Controller address after one that does not lead.
const NOT_LEADER_PAUSE: Duration = Duration::from_millis(20);

/// Who this SE is and where its Controller is.
#[derive(Debug, Clone)]
pub struct SeOptions {
    /// Unique SE name.
    pub name: String,
    /// SE group.
    pub group: String,
    /// Controller node addresses (at least one); any node serves, and the
    /// agent moves to the next when a session fails.
    pub controllers: Vec<SocketAddr>,
    /// Where the SE keeps its key and certificates (`se-key.pem`,
    /// `se-cert.pem`, `se-ca.pem`).
    pub credentials: Arc<dyn Storage>,
    /// How to register when there are no credentials yet.
    pub join: Option<JoinTicket>,
    /// Legacy active/standby: the pair peer and this SE's priority (`None`:
    /// not in a pair). The pair's driver runs beside the agent, its
    /// messages to the Controller travel on the session, and the data
    /// plane's VIPs reach the L2 fabric only while this SE is active.
    pub ha: Option<fabric::ha::PairPeer>,
    /// Where to take scale-out hand-offs from primaries (None: none; this
    /// SE then never serves as a secondary). Port 0: any free port.
    pub relay: Option<SocketAddr>,
    /// Where the CPU figure it reports comes from.
    pub cpu: crate::cpu::CpuMeter,
}

/// What the session shares with a pair's driver.
struct HaSide {
    link: Arc<crate::ha::ControllerLink>,
    settings: watch::Sender<Option<fabric::ha::PairSettings>>,
}

/// What a session feeds besides the data plane: a pair's driver (legacy
/// active/standby) or the group's data-path beats and lease (elastic).
#[derive(Clone, Copy)]
struct Sides<'a> {
    ha: Option<&'a HaSide>,
    peers: Option<&'a crate::peers::PeerLink>,
}

const KEY_FILE: &str = "se-key.pem";
const CERT_FILE: &str = "se-cert.pem";
const CA_FILE: &str = "se-ca.pem";

/// The SE's TLS identity.
struct Credentials {
    tls: Arc<rustls::ClientConfig>,
}

fn read_text(storage: &dyn Storage, file: &str) -> Option<String> {
    storage
        .read(file)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
}

fn write_text(storage: &dyn Storage, file: &str, text: &str) -> Result<(), String> {
    let io = |e: std::io::Error| format!("saving {file}: {e}");
    storage.remove(file).map_err(io)?;
    storage.append(file, text.as_bytes()).map_err(io)?;
    storage.sync(file).map_err(io)
}

fn load_credentials(storage: &dyn Storage) -> Option<Credentials> {
    let key = read_text(storage, KEY_FILE)?;
    let cert = read_text(storage, CERT_FILE)?;
    let ca = read_text(storage, CA_FILE)?;
    match pki::se_client_config(&ca, &cert, &key) {
        Ok(tls) => Some(Credentials { tls }),
        Err(e) => {
            tracing::warn!(error = %e, "stored SE credentials are unusable");
            None
        }
    }
}

/// Register with `controller` using the join ticket: get a certificate for
/// a new key, and keep both.
async fn register(opts: &SeOptions, controller: SocketAddr) -> Result<Credentials, String> {
    let join = opts
        .join
        .as_ref()
        .ok_or("no credentials and no join token: give the SE a join token")?;
    let key = pki::SeKey::generate().map_err(|e| e.to_string())?;
    let config = pki::registration_client_config(&join.ca_sha256).map_err(|e| e.to_string())?;
    let stream = connect_tls(controller, config, REGISTER_TIMEOUT).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let req = SeMessage::Register {
        proto_version: PROTO_VERSION,
        se_name: opts.name.clone(),
        join_token: join.token.clone(),
        public_key: key.public_key(),
    };
    proto::write_frame(&mut wr, &req)
        .await
        .map_err(|e| e.to_string())?;
    let reply = rt::timeout(
        REGISTER_TIMEOUT,
        proto::read_frame::<_, ControllerMessage>(&mut rd),
    )
    .await
    .map_err(|_| "no answer to the registration in time".to_string())?
    .map_err(|e| e.to_string())?;
    let (cert_pem, ca_pem) = match reply {
        Some(ControllerMessage::Registered { cert_pem, ca_pem }) => (cert_pem, ca_pem),
        Some(ControllerMessage::Refused { reason }) => {
            return Err(format!("registration refused: {reason}"))
        }
        other => return Err(format!("unexpected answer to the registration: {other:?}")),
    };
    if pki::fingerprint(&ca_pem).map_err(|e| e.to_string())? != join.ca_sha256.to_ascii_lowercase()
    {
        return Err("the Controller sent a CA that does not match the pinned fingerprint".into());
    }
    let tls =
        pki::se_client_config(&ca_pem, &cert_pem, &key.to_pem()).map_err(|e| e.to_string())?;
    let storage = &*opts.credentials;
    write_text(storage, KEY_FILE, &key.to_pem())?;
    write_text(storage, CA_FILE, &ca_pem)?;
    write_text(storage, CERT_FILE, &cert_pem)?;
    tracing::info!(se = %opts.name, %controller, "registered: client certificate issued");
    Ok(Credentials { tls })
}

async fn connect_tls(
    controller: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<rt::TcpStream>, String> {
    let connect = async {
        let tcp = rt::connect(controller).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(config)
            .connect(pki::server_name(controller.ip()), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    };
    rt::timeout(limit, connect)
        .await
        .map_err(|e| format!("connecting to {controller}: {e}"))?
        .map_err(|e| format!("connecting to {controller}: {e}"))
}

/// Run the SE forever: sessions with the Controller, and the data plane.
/// `applied` (if given) is told every version the data plane starts serving.
pub async fn run(opts: SeOptions, l2: Arc<dyn L2Fabric>, applied: Option<watch::Sender<u64>>) {
    let mut fence = None;
    let (l2, ha) = match opts.ha {
        Some(peer) => {
            let link = Arc::new(crate::ha::ControllerLink::new());
            let gate = Arc::new(crate::ha::HaL2::new(l2));
            let (settings, settings_rx) = watch::channel(None);
            let pair = crate::ha::PairOptions {
                name: opts.name.clone(),
                group: opts.group.clone(),
                peer,
            };
            rt::spawn(crate::ha::run(
                pair,
                link.clone(),
                gate.clone(),
                settings_rx,
            ));
            (gate as Arc<dyn L2Fabric>, Some(HaSide { link, settings }))
        }
        None => {
            // Elastic: the gate closes when the SE's lease runs out
            // (`peers`), open until then.
            let gate = Arc::new(crate::ha::HaL2::new(l2));
            gate.activate().await;
            fence = Some(gate.clone());
            (gate as Arc<dyn L2Fabric>, None)
        }
    };
    let mut plane = DataPlane::new(&opts.name, l2);
    let relay = match opts.relay {
        Some(addr) => match rt::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().ok();
                rt::spawn(crate::scaleout::serve_relay(listener, plane.relays()));
                tracing::info!(se = %opts.name, relay = ?bound, "taking scale-out hand-offs");
                bound
            }
            Err(e) => {
                tracing::error!(se = %opts.name, %addr, error = %e, "no relay listener: this SE takes no hand-offs");
                None
            }
        },
        None => None,
    };
    plane.set_relay_addr(relay);
    // The group's data-path beats go to the relay's port, over UDP.
    let peers = match (relay, fence) {
        (Some(addr), Some(gate)) => match rt::UdpSocket::bind(addr).await {
            Ok(socket) => {
                let link = Arc::new(crate::peers::PeerLink::new(&opts.name, &opts.group, gate));
                rt::spawn(crate::peers::run(link.clone(), socket, plane.relays()));
                Some(link)
            }
            Err(e) => {
                tracing::error!(se = %opts.name, %addr, error = %e, "no data-path beats (UDP on the relay's port): the Controller judges this SE by its session alone");
                None
            }
        },
        _ => None,
    };
    let incarnation = rt::random_u64();
    let mut credentials = load_credentials(&*opts.credentials);
    let mut backoff = INITIAL_BACKOFF;
    let mut next = 0usize;
    loop {
        let Some(&controller) = opts.controllers.get(next % opts.controllers.len().max(1)) else {
            tracing::error!(se = %opts.name, "no controller address given");
            return;
        };
        next += 1;
        if credentials.is_none() {
            match register(&opts, controller).await {
                Ok(c) => credentials = Some(c),
                Err(e) => tracing::warn!(se = %opts.name, error = %e, "registration failed"),
            }
        }
        let Some(creds) = &credentials else {
            let jitter =
                Duration::from_millis(rt::random_u64() % (backoff.as_millis() as u64 / 2 + 1));
            rt::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        let started = rt::now();
        let (welcomed, result) = session(
            &opts,
            controller,
            creds,
            incarnation,
            &mut plane,
            applied.as_ref(),
            Sides {
                ha: ha.as_ref(),
                peers: peers.as_deref(),
            },
        )
        .await;
        if welcomed {
            backoff = INITIAL_BACKOFF;
        }
        // A session that was welcomed was with the leader a moment ago: dial
        // it again first, soon. The Controller may have moved this SE's
        // virtual services away while the session was dying; until the SE
        // hears so it keeps serving them, so every millisecond here is one
        // with two holders of a VIP (chaos seed 60 of `fabric_under_faults`).
        // Only after a session that lasted: one that keeps closing at once
        // backs off as usual.
        if welcomed && rt::now().saturating_duration_since(started) >= MAX_BACKOFF {
            next -= 1;
            match &result {
                Ok(()) => tracing::info!(se = %opts.name, "controller session closed"),
                Err(e) => tracing::warn!(se = %opts.name, error = %e, "controller session failed"),
            }
            rt::sleep(NOT_LEADER_PAUSE).await;
            continue;
        }
        match result {
            Ok(()) => tracing::info!(se = %opts.name, "controller session closed"),
            // Only the leader serves SE sessions: try the next address soon.
            Err(e) if e.ends_with(fabric::controller::NOT_LEADER) => {
                tracing::debug!(se = %opts.name, %controller, "not the leader");
                if !next.is_multiple_of(opts.controllers.len().max(1)) {
                    rt::sleep(NOT_LEADER_PAUSE).await;
                    continue;
                }
            }
            Err(e) => tracing::warn!(se = %opts.name, error = %e, "controller session failed"),
        }
        let jitter = Duration::from_millis(rt::random_u64() % (backoff.as_millis() as u64 / 2 + 1));
        rt::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    opts: &SeOptions,
    controller: SocketAddr,
    credentials: &Credentials,
    incarnation: u64,
    plane: &mut DataPlane,
    applied: Option<&watch::Sender<u64>>,
    sides: Sides<'_>,
) -> (bool, Result<(), String>) {
    let Sides { ha, peers } = sides;
    let link = ha.map(|h| &*h.link);
    let stream =
        match connect_tls(controller, credentials.tls.clone(), proto::SE_DIAL_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => return (false, Err(e)),
        };
    let (rd, mut wr) = tokio::io::split(stream);
    let hello = SeMessage::Hello {
        proto_version: PROTO_VERSION,
        se_name: opts.name.clone(),
        se_group: opts.group.clone(),
        incarnation,
        applied_version: plane.applied_version(),
        relay: plane.relay_addr(),
    };
    let hello_sent = rt::now();
    if let Err(e) = proto::write_frame(&mut wr, &hello).await {
        return (false, Err(e.to_string()));
    }
    let (mut incoming, reader) = proto::spawn_reader::<_, ControllerMessage>(rd, 16);
    let mut takes_stats = false;
    let mut welcomed = false;
    let result = async {
        let (heartbeat, takes_health) = match rt::timeout(proto::SE_WELCOME_TIMEOUT, incoming.recv()).await {
            Ok(Some(Ok(ControllerMessage::Welcome { proto_version, heartbeat_ms, health_events, stats }))) if proto_version == PROTO_VERSION => {
                takes_stats = stats;
                (Duration::from_millis(heartbeat_ms.clamp(10, 60_000)), health_events)
            }
            Ok(Some(Ok(ControllerMessage::Refused { reason }))) => return Err(format!("refused: {reason}")),
            Ok(Some(Ok(other))) => return Err(format!("expected a welcome, got {other:?}")),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("controller closed the session".into()),
            Err(_) => return Err("no welcome in time".into()),
        };
        tracing::info!(se = %opts.name, controller = %controller, "controller session up");
        welcomed = true;
        if let Some(p) = peers {
            p.session_up(hello_sent, heartbeat, MISSED_HEARTBEATS);
        }
        // Send times of the heartbeats not acknowledged yet, oldest first
        // (acks come in order on the stream).
        let mut unacked = std::collections::VecDeque::with_capacity(MAX_UNACKED);
        let liveness = heartbeat * MISSED_HEARTBEATS;
        let mut last_heard = rt::now();
        let mut next_beat = rt::now() + heartbeat;
        let mut next_stats = rt::now() + proto::STATS_INTERVAL;
        let health = plane.health_events();
        // Changes from while the session was down first.
        report_health(&mut wr, &health, takes_health).await?;
        loop {
            let until_beat = next_beat
                .min(next_stats)
                .saturating_duration_since(rt::now());
            tokio::select! {
                // Fixed poll order: tokio picks a random one otherwise, from a
                // generator madsim does not seed (docs/runtime.md).
                biased;
                _ = health.pushed() => report_health(&mut wr, &health, takes_health).await?,
                _ = ha_outgoing(link) => {
                    for msg in link.map(|l| l.take_outgoing()).unwrap_or_default() {
                        proto::write_frame(&mut wr, &msg).await.map_err(|e| e.to_string())?;
                    }
                }
                msg = incoming.recv() => {
                    last_heard = rt::now();
                    match msg {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(ControllerMessage::Config(cfg))) => {
                            let reply = match plane.apply(&cfg).await {
                                Ok(()) => {
                                    if let Some(tx) = applied {
                                        tx.send_replace(cfg.version);
                                    }
                                    if let Some(p) = peers {
                                        p.config_applied(&cfg.peers).await;
                                    }
                                    if let Some(ha) = ha {
                                        ha.settings.send_if_modified(|s| {
                                            let changed = *s != cfg.ha;
                                            *s = cfg.ha;
                                            changed
                                        });
                                    }
                                    SeMessage::Ack { version: cfg.version }
                                }
                                Err(e) => {
                                    tracing::warn!(se = %opts.name, version = cfg.version, error = %e, "config refused");
                                    SeMessage::Nack { version: cfg.version, reason: e.to_string() }
                                }
                            };
                            proto::write_frame(&mut wr, &reply).await.map_err(|e| e.to_string())?;
                        }
                        Some(Ok(ControllerMessage::HeartbeatAck { .. })) => {
                            if let (Some(p), Some(sent)) = (peers, unacked.pop_front()) {
                                p.controller_heard(sent);
                            }
                        }
                        Some(Ok(msg @ (ControllerMessage::HaAck { .. } | ControllerMessage::HaVerdict { .. }))) => {
                            if let Some(link) = link {
                                link.deliver(msg);
                            }
                        }
                        Some(Ok(ControllerMessage::Refused { reason })) => return Err(format!("refused: {reason}")),
                        Some(Ok(ControllerMessage::Welcome { .. } | ControllerMessage::Registered { .. })) => {
                            return Err("unexpected welcome or registration inside a session".into())
                        }
                    }
                }
                _ = rt::sleep(until_beat) => {
                    if rt::now().duration_since(last_heard) > liveness {
                        return Err("controller silent for too long".into());
                    }
                    if rt::now() >= next_stats {
                        next_stats += proto::STATS_INTERVAL;
                        if takes_stats {
                            let mut stats = plane.stats();
                            stats.cpu_percent = opts.cpu.percent();
                            let report = SeMessage::Stats { stats };
                            proto::write_frame(&mut wr, &report).await.map_err(|e| e.to_string())?;
                        }
                    }
                    if rt::now() >= next_beat {
                        let beat = SeMessage::Heartbeat {
                            applied_version: plane.applied_version(),
                            peers: peers.map(|p| p.heard(liveness)).unwrap_or_default(),
                        };
                        // Full, the newest goes unrecorded: later acks then
                        // count older send times, which only shortens the lease.
                        if unacked.len() < MAX_UNACKED {
                            unacked.push_back(rt::now());
                        }
                        proto::write_frame(&mut wr, &beat).await.map_err(|e| e.to_string())?;
                        next_beat += heartbeat;
                    }
                }
            }
        }
    }
    .await;
    reader.abort();
    (welcomed, result)
}

/// Until the HA driver queues a message; never without a driver.
async fn ha_outgoing(link: Option<&crate::ha::ControllerLink>) {
    match link {
        Some(link) => link.outgoing().await,
        None => std::future::pending().await,
    }
}

/// Send the Controller every queued health change (dropping them if it
/// predates health messages); what could not be sent waits for the next session.
async fn report_health<W>(
    wr: &mut W,
    health: &HealthEvents,
    takes_health: bool,
) -> Result<(), String>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let pending = health.drain();
    if !takes_health {
        return Ok(());
    }
    for (i, change) in pending.iter().enumerate() {
        let msg = SeMessage::Health {
            pool: change.pool.clone(),
            server: change.server,
            up: change.up,
            reason: change.reason.clone(),
            outlier: change.outlier,
        };
        if let Err(e) = proto::write_frame(wr, &msg).await {
            health.requeue(pending[i..].to_vec());
            return Err(e.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthChange;

    fn change(up: bool) -> HealthChange {
        HealthChange {
            pool: "web".into(),
            server: "10.0.2.2:80".parse().unwrap(),
            up,
            reason: "check".into(),
            outlier: false,
        }
    }

    #[tokio::test]
    async fn health_changes_go_only_to_a_controller_that_takes_them() {
        let health = HealthEvents::new(8);
        health.push(change(false));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        report_health(&mut a, &health, false).await.unwrap();
        assert!(health.drain().is_empty(), "an older Controller: dropped");

        health.push(change(false));
        health.push(change(true));
        report_health(&mut a, &health, true).await.unwrap();
        drop(a);
        let mut got = Vec::new();
        while let Some(m) = proto::read_frame::<_, SeMessage>(&mut b).await.unwrap() {
            got.push(m);
        }
        let ups: Vec<bool> = got
            .iter()
            .map(|m| match m {
                SeMessage::Health { up, .. } => *up,
                other => panic!("not a health message: {other:?}"),
            })
            .collect();
        assert_eq!(ups, [false, true]);

        // A broken session keeps what it could not send for the next one.
        health.push(change(false));
        let (mut a, b) = tokio::io::duplex(1 << 16);
        drop(b);
        assert!(report_health(&mut a, &health, true).await.is_err());
        assert_eq!(health.drain(), [change(false)]);
    }
}
