//! The Service Engine: carries virtual services' traffic.
//!
//! - [`agent`]: the session with the Controller; applies each pushed config
//!   and keeps serving the last one while the Controller is unreachable.
//! - [`counters`]: per virtual service traffic counters.
//! - [`dataplane`]: listeners per virtual service, swapped atomically.
//! - [`proxy`]: the HTTP reverse proxy of one virtual service.
//! - [`relay`], [`h1`]: its HTTP/1.x side, heads parsed and bodies relayed
//!   byte for byte to pooled server connections.
//! - [`l4`]: TCP and UDP virtual services.
//! - [`tls`]: TLS termination settings (certificates by SNI, ALPN).
//! - [`upstream`]: connections to servers, plain or TLS.
//! - [`lb`]: load-balancing selection over a server set.
//! - [`health`]: active and passive health monitoring, reported to the Controller.
//! - [`outlier`]: outlier detection, ejecting servers that keep failing.
//! - [`peers`]: data-path beats between the SEs of a group, and the lease
//!   an SE holds its VIPs on.
//! - [`origin`]: a small built-in HTTP server for examples and drills.
#![deny(missing_docs)]

pub mod agent;
pub mod counters;
pub mod cpu;
pub mod dataplane;
pub mod h1;
pub mod h2relay;
pub mod h2up;
pub mod ha;
pub mod health;
pub mod l4;
pub mod lb;
pub mod origin;
pub mod outlier;
pub mod peers;
pub mod proxy;
pub mod relay;
pub mod scaleout;
pub mod tls;
pub mod upstream;

/// Response header naming the SE that served a request, so clients and the
/// chaos suite can tell which SE answered for a VIP.
pub const SE_HEADER: &str = "x-fabric-se";
