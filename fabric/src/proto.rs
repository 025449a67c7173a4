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

use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::rt;

use crate::model::{Algorithm, Config};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTO_VERSION: u32 = 1;

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
    },
}

/// Messages from the Controller to an SE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    /// Reply to a hello.
    Welcome {
        /// Protocol version the Controller speaks.
        proto_version: u32,
        /// How often to send heartbeats, in milliseconds.
        heartbeat_ms: u64,
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
}

/// Everything one SE needs to serve, at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeConfig {
    /// Desired-state version this was computed from.
    pub version: u64,
    /// Virtual services placed on this SE.
    pub virtual_services: Vec<SeVirtualService>,
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
    /// Load-balancing algorithm.
    pub algorithm: Algorithm,
    /// Servers of its pool.
    pub servers: Vec<SocketAddr>,
}

impl SeConfig {
    /// The config for an SE of `group`, computed from the desired state at `version`.
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
                    algorithm: pool.algorithm,
                    servers: pool.servers.clone(),
                })
            })
            .collect();
        SeConfig {
            version,
            virtual_services,
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

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = SeMessage::Hello {
            proto_version: PROTO_VERSION,
            se_name: "se-1".into(),
            se_group: "default".into(),
            incarnation: 7,
            applied_version: 0,
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
        assert!(read_frame::<_, SeMessage>(&mut b).await.unwrap().is_none());
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
