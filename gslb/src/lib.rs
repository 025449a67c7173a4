//! Authoritative DNS for GSLB services.
//!
//! [`Engine`] turns a validated [`fabric::model::Config`] into answers: a pure
//! function from query bytes to response bytes, with no I/O, time or
//! randomness. [`server`] runs it behind UDP and TCP sockets from
//! [`fabric::rt`], so the same code serves on a real host and in the madsim
//! simulation. A config change builds a new engine and swaps it into the
//! [`EngineHandle`] the servers read from.
#![deny(missing_docs)]

pub mod engine;
pub mod server;

pub use engine::{Engine, Transport};
pub use server::{run, run_with, serve_tcp, serve_udp, EngineHandle};
