//! Authoritative DNS for GSLB services.
//!
//! [`Engine`] turns a validated [`fabric::model::Config`] into answers: a pure
//! function from query bytes to response bytes, with no I/O, time or
//! randomness. [`server`] runs it behind UDP and TCP sockets from
//! [`fabric::rt`], so the same code serves on a real host and in the madsim
//! simulation. A config change builds a new engine and swaps it into the
//! [`EngineHandle`] the servers read from.
//!
//! GSLB: [`policy`] decides which members answer (pure), [`health`] combines
//! the sources' reports into verdicts (pure), [`node::DnsNode`] runs it all
//! (config with serial, health tracker, engine swaps, explain, metrics),
//! [`node::run_probes`] is the DNS-side monitor, [`feed`] follows an
//! in-process Controller, [`api`] serves explain, health and metrics.
#![deny(missing_docs)]

pub mod api;
pub mod engine;
pub mod feed;
pub mod health;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod server;

pub use engine::{Engine, Transport};
pub use node::{DnsNode, Explanation, Prober};
pub use server::{run, run_with, serve_tcp, serve_udp, EngineHandle};
