//! Shared vocabulary, platform edges and the Controller of the fabric.
//!
//! - [`rt`]: the only module that knows whether it runs on a real host or in
//!   the madsim simulation.
//! - [`platform`]: `Clock`, `Storage`, `L2Fabric`, `CloudConnector`.
//! - [`model`]: the desired state an operator writes, with validation.
//! - [`proto`]: Controller <-> SE messages over TCP.
//! - [`controller`]: holds the desired state and pushes it to SEs.
//! - [`placement`]: which SEs of an elastic group carry each virtual service.
//! - [`stats`]: traffic counters and latency histograms SEs report.
//! - [`zone`]: static DNS records from the config and from zone files.
#![deny(missing_docs)]

pub mod api;
pub mod cluster;
pub mod controller;
pub mod forecast;
pub mod ha;
pub mod model;
pub mod pki;
pub mod placement;
pub mod platform;
pub mod proto;
pub mod rt;
pub mod stats;
pub mod zone;
