//! Platform traits: the small edges where the two worlds differ.
//!
//! Each trait has a real implementation (here, or in the binary) and a
//! simulated one (`sim` crate, or [`storage::MemStorage`]). Everything above
//! them is the same code in both worlds.

pub mod clock;
pub mod cloud;
pub mod garp;
pub mod l2;
pub mod storage;

pub use clock::{Clock, RtClock};
pub use cloud::{CloudConnector, CloudError, LocalProcesses, SeHost, SeSpec};
pub use l2::{L2Error, L2Fabric, LoopbackL2};
pub use storage::{FileStorage, MemStorage, Storage};
