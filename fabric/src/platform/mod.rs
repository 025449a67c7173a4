//! Platform traits: the small edges where the two worlds differ.
//!
//! Each trait has a real implementation (here, or in the binary) and a
//! simulated one (`sim` crate, or [`storage::MemStorage`]). Everything above
//! them is the same code in both worlds.

pub mod clock;
pub mod cloud;
pub mod garp;
pub mod l2;
// Real hosts only: netlink and AF_PACKET do not exist in the simulation,
// whose segment is `sim::l2`.
#[cfg(not(madsim))]
pub mod netlink;
pub mod storage;

pub use clock::{Clock, RtClock};
pub use cloud::{CloudConnector, CloudError, LocalProcesses, SeHost, SeSpec};
pub use l2::{L2Error, L2Fabric, LoopbackL2};
#[cfg(not(madsim))]
pub use netlink::{NetlinkL2, NetlinkL2Config};
pub use storage::{FileStorage, MemStorage, Storage};
