//! Feed a DNS node from a Controller in the same process: the desired
//! config (each change bumps the serial, to the config version when that is
//! higher) and the SEs' view of every
//! virtual service that is a GSLB member.
//!
//! The SEs' view is one source, `controller`: a VS is up while at least one
//! connected SE with a recent report serves it with a healthy server in its
//! pool, and down when none does (not placed, every SE lost, every server
//! down). One source rather than one per SE, because in HA a standby that
//! does not serve a VS is not a vote against it.

use std::time::Duration;

use fabric::controller::Controller;
use fabric::model::Config;
use fabric::rt;

use crate::node::{DnsNode, TICK};

/// An SE report older than this does not count.
const REPORT_FRESH: Duration = Duration::from_secs(10);
/// The source name of the Controller's reports.
pub const SOURCE: &str = "controller";

/// Follow `controller` for ever, once per [`TICK`].
pub async fn follow_controller(controller: Controller, node: DnsNode) {
    loop {
        let desired = controller.desired();
        if let Some(config) = &desired.config {
            node.apply_config(
                (**config).clone(),
                desired.version.min(u32::MAX as u64) as u32,
            );
            report_ses(&controller, &node, config);
        }
        rt::sleep(TICK).await;
    }
}

fn report_ses(controller: &Controller, node: &DnsNode, config: &Config) {
    let ses = controller.ses();
    if !ses.iter().any(|s| s.stats.is_some()) {
        // No SE has reported yet (the fabric is starting): no view to give.
        return;
    }
    let now_ms = rt::unix_ms();
    let members = config
        .gslb_services
        .iter()
        .flat_map(|s| s.members.iter().filter_map(|m| m.vs.as_deref()));
    let mut seen = std::collections::BTreeSet::new();
    for vs_name in members {
        if !seen.insert(vs_name) {
            continue;
        }
        let Some(vs) = config.virtual_service(vs_name) else {
            continue;
        };
        let up = ses.iter().any(|se| {
            let Some(stats) = se.stats.as_ref().filter(|_| se.connected) else {
                return false;
            };
            if now_ms.saturating_sub(se.stats_unix_ms) > REPORT_FRESH.as_millis() as u64 {
                return false;
            }
            if !stats.virtual_services.iter().any(|v| v.name == vs.name) {
                return false;
            }
            match stats.pools.iter().find(|p| p.name == vs.pool) {
                Some(pool) => pool.servers.iter().any(|s| s.up && !s.ejected),
                // A VS without pool statistics (none reported yet): serving.
                None => true,
            }
        });
        node.report_vs(vs_name, SOURCE, up);
    }
}
