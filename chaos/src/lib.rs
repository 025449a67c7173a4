//! The chaos suite of the fabric.
//!
//! - The scenarios the seed runner drives ([`scenario`], simulation builds
//!   only), each returning what it observed so a report can be written.
//! - The failover plot of a run ([`plot`], pure, both worlds).
//! - The `#![cfg(madsim)]` integration tests under `chaos/tests/`.
//!
//! Run the seed runner with `./scripts/chaos.sh run --seeds 500`; every
//! failure prints `./scripts/chaos.sh replay SEED`, which runs that seed
//! again with a full trace. Run the tests with `./scripts/test.sh`.
#![deny(missing_docs)]

pub mod plot;
#[cfg(madsim)]
pub mod scenario;
