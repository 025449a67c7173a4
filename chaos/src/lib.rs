//! The chaos suite of the fabric.
//!
//! The scenarios are the `#![cfg(madsim)]` integration tests under
//! `chaos/tests/`; run them with `./scripts/test.sh` or directly:
//!
//! ```text
//! RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim
//! ```
//!
//! Every failure prints its seed; `MADSIM_TEST_SEED=<seed>` replays it
//! exactly. The seed runner with swarm faults and reports is issue 8's.
#![deny(missing_docs)]
