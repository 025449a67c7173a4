//! Layer 2: who answers ARP for a VIP.
//!
//! A Service Engine claims a VIP before serving it and releases it when it
//! stops; claiming announces the move with gratuitous ARP so neighbours'
//! caches follow. The real implementation for LAN segments (netlink address
//! plus AF_PACKET GARP) is `platform::netlink`; [`LoopbackL2`] serves VIPs
//! in 127.0.0.0/8, which Linux routes to `lo` with no setup and no ARP. The
//! simulated segment with per-host ARP caches lives in the `sim` crate.

use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;

/// Why a VIP could not be claimed or released.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// This fabric cannot carry the address.
    #[error("VIP {vip} cannot be served here: {reason}")]
    Unsupported {
        /// The VIP.
        vip: IpAddr,
        /// Why.
        reason: String,
    },
    /// The OS or the segment refused.
    #[error("L2 operation on {vip} failed: {source}")]
    Io {
        /// The VIP.
        vip: IpAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Claim, release and announce VIPs on the segment this host is attached to.
#[async_trait]
pub trait L2Fabric: Send + Sync + std::fmt::Debug {
    /// Take `vip`: from now on this host answers for it, and neighbours are
    /// told so (gratuitous ARP, repeated per the fabric's settings).
    async fn claim_vip(&self, vip: IpAddr) -> Result<(), L2Error>;
    /// Stop answering for `vip`.
    async fn release_vip(&self, vip: IpAddr) -> Result<(), L2Error>;
    /// Repeat the announcement for a VIP already claimed.
    async fn announce(&self, vip: IpAddr) -> Result<(), L2Error>;
    /// The local address a listener for `vip` binds to.
    fn bind_addr(&self, vip: IpAddr) -> IpAddr;
    /// Whether traffic for `vip` reaches this host now. On a real host the
    /// kernel drops packets for an address it does not have, so this is
    /// always true; the simulation (one address per node) and the HA gate
    /// (a standby binds but must not answer) say no for a VIP they do not
    /// hold, and the data plane then drops the connection.
    fn serves(&self, _vip: IpAddr) -> bool {
        true
    }
    /// Whether this host gave `vip` up because another host announced it
    /// after this host's own announcements ended (docs/placement.md, "Two
    /// holders"): the newer claim wins. Claiming it again clears this; the
    /// data plane does so when a config still makes this SE its holder.
    fn lost(&self, _vip: IpAddr) -> bool {
        false
    }
}

/// VIPs on the loopback range: nothing to claim, nobody to tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopbackL2;

impl LoopbackL2 {
    fn check(vip: IpAddr) -> Result<(), L2Error> {
        if vip.is_loopback() {
            Ok(())
        } else {
            Err(L2Error::Unsupported {
                vip,
                reason: "the loopback fabric serves 127.0.0.0/8 and ::1 only".into(),
            })
        }
    }
}

#[async_trait]
impl L2Fabric for LoopbackL2 {
    async fn claim_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)
    }

    async fn release_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)
    }

    async fn announce(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)
    }

    fn bind_addr(&self, vip: IpAddr) -> IpAddr {
        if vip.is_loopback() {
            vip
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}
