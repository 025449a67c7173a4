//! The simulated world the chaos suite runs.
//!
//! - [`l2`]: a layer-2 segment whose hosts keep ARP caches (with a TTL) and
//!   learn VIP owners from gratuitous ARP frames sent as datagrams, so the
//!   simulator can lose, delay or partition them. It implements
//!   [`fabric::platform::L2Fabric`] for SEs and resolves VIPs for clients.
//!   It uses only `fabric::rt`, so it also runs (and is unit-tested) on a
//!   real host over loopback.
//! - [`lincheck`]: a linearizability checker (porcupine's search) for
//!   histories of client operations, with a model of the Controller's
//!   object store. Pure: it runs in both worlds.
//! - `world` (simulation builds only): builds a fabric of simulated nodes
//!   (Controller, SEs through the simulated cloud connector, origins, DNS,
//!   a client) and acts on it as a drill would.
//! - `cloud` (simulation builds only): [`fabric::platform::CloudConnector`]
//!   over simulated nodes.
#![deny(missing_docs)]

pub mod l2;
pub mod lincheck;

#[cfg(madsim)]
pub mod cloud;
#[cfg(madsim)]
pub mod world;

/// Install a global tracing subscriber (filter from `RUST_LOG`, else
/// errors only, without openraft's, which expected faults fill), once per
/// process. `RUST_LOG=debug` with a replay shows the full trace.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
