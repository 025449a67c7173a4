//! A cloud connector whose SE hosts are simulated nodes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fabric::platform::{CloudConnector, CloudError, L2Fabric, SeHost, SeSpec};
use madsim::runtime::Handle;
use madsim::task::NodeId;

use crate::l2::{HostPort, Segment};

/// SE hosts as madsim nodes on the world's L2 segment, addressed
/// `10.0.1.N` in creation order.
#[derive(Debug, Clone)]
pub struct SimCloud {
    segment: Segment,
    hosts: Arc<Mutex<BTreeMap<String, SimHost>>>,
    /// Each SE host's attachment to the segment, from its latest boot.
    ports: Arc<Mutex<BTreeMap<String, Arc<HostPort>>>>,
    created: Arc<Mutex<u8>>,
    applied: Arc<Mutex<Applied>>,
    /// The CPU figure each SE reports, by name.
    cpus: Arc<Mutex<BTreeMap<String, Arc<std::sync::atomic::AtomicU32>>>>,
}

/// What the SEs' data planes started serving, per SE and boot.
#[derive(Debug, Default)]
struct Applied {
    /// SE name -> (boot number, latest version served in that boot).
    latest: BTreeMap<String, (u64, u64)>,
    /// Every time a version went backwards within one boot.
    regressions: Vec<String>,
}

impl SimCloud {
    /// A connector creating SEs attached to `segment`.
    pub fn new(segment: Segment) -> Self {
        Self {
            segment,
            hosts: Arc::default(),
            ports: Arc::default(),
            created: Arc::default(),
            applied: Arc::default(),
            cpus: Arc::default(),
        }
    }

    /// The running SE hosts that hold `vip` on the segment now (answer ARP
    /// for it and take its traffic), by name.
    pub fn holders(&self, vip: IpAddr) -> Vec<String> {
        let mut held_by = Vec::new();
        self.update_holders(vip, &mut held_by);
        held_by
    }

    /// [`holders`](Self::holders) into `last`, and whether that changed it:
    /// without allocating when it did not (a checker looks every few ms).
    pub fn update_holders(&self, vip: IpAddr, last: &mut Vec<String>) -> bool {
        let hosts = lock(&self.hosts);
        let ports = lock(&self.ports);
        let now = ports
            .iter()
            .filter(|(name, port)| hosts.get(*name).is_some_and(|h| h.running) && port.holds(vip))
            .map(|(name, _)| name);
        if now.clone().eq(last.iter()) {
            return false;
        }
        last.clear();
        last.extend(now.cloned());
        true
    }

    /// Make SE `name` report `percent` CPU from now on (its next stats
    /// report; every SE starts at 0).
    pub fn set_cpu(&self, name: &str, percent: u32) {
        self.cpu_of(name)
            .store(percent, std::sync::atomic::Ordering::Relaxed);
    }

    fn cpu_of(&self, name: &str) -> Arc<std::sync::atomic::AtomicU32> {
        lock(&self.cpus)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Lose (`true`) or deliver again every gratuitous ARP frame on the segment.
    pub fn set_garp_loss(&self, lost: bool) {
        self.segment.set_garp_loss(lost);
    }

    /// The config version SE `name` serves now (0: none yet), if it exists.
    pub fn applied_version(&self, name: &str) -> Option<u64> {
        lock(&self.applied).latest.get(name).map(|(_, v)| *v)
    }

    /// Every observed case of an SE's served version going backwards
    /// within one boot (must stay empty).
    pub fn applied_regressions(&self) -> Vec<String> {
        lock(&self.applied).regressions.clone()
    }

    /// Crash an SE host (its memory is lost; its node can restart). Its
    /// port goes with it: a restarted host holds no VIP until its SE claims
    /// one (before, the old port's VIPs counted again from the restart until
    /// the new boot attached: a dual hold that was not there).
    pub fn kill(&self, name: &str) -> Result<(), CloudError> {
        let id = self.mark(name, false)?;
        lock(&self.ports).remove(name);
        Handle::current().kill(id);
        Ok(())
    }

    /// Restart a killed SE host: it boots and registers again.
    pub fn restart(&self, name: &str) -> Result<(), CloudError> {
        let id = self.mark(name, true)?;
        Handle::current().restart(id);
        Ok(())
    }

    /// The names of every SE host, running or not.
    pub fn names(&self) -> Vec<String> {
        lock(&self.hosts).keys().cloned().collect()
    }

    /// The address of an SE host.
    pub fn ip_of(&self, name: &str) -> Option<IpAddr> {
        lock(&self.hosts).get(name).map(|h| h.ip)
    }

    /// The simulator's node id of an SE host.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        lock(&self.hosts).get(name).map(|h| h.node)
    }

    fn mark(&self, name: &str, running: bool) -> Result<NodeId, CloudError> {
        let mut hosts = lock(&self.hosts);
        let entry = hosts
            .get_mut(name)
            .ok_or_else(|| CloudError::NotFound(name.to_string()))?;
        entry.running = running;
        Ok(entry.node)
    }
}

#[derive(Debug, Clone, Copy)]
struct SimHost {
    node: NodeId,
    ip: IpAddr,
    running: bool,
}

#[async_trait]
impl CloudConnector for SimCloud {
    async fn create_se(&self, spec: SeSpec) -> Result<SeHost, CloudError> {
        if lock(&self.hosts).contains_key(&spec.name) {
            return Err(CloudError::Exists(spec.name));
        }
        let n = {
            let mut created = lock(&self.created);
            *created = created
                .checked_add(1)
                .ok_or_else(|| CloudError::Failed("out of SE addresses".into()))?;
            *created
        };
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
        let segment = self.segment.clone();
        let applied = self.applied.clone();
        let ports = self.ports.clone();
        let port_name = spec.name.clone();
        // The SE's disk (its credentials) outlives restarts of its node.
        let credentials: Arc<dyn fabric::platform::Storage> =
            Arc::new(fabric::platform::MemStorage::new());
        let opts = se::agent::SeOptions {
            name: spec.name.clone(),
            group: spec.group,
            controllers: spec.controllers,
            credentials,
            join: spec.join,
            ha: spec.ha,
            relay: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                se::scaleout::DEFAULT_RELAY_PORT,
            )),
            cpu: se::cpu::CpuMeter::Fixed(self.cpu_of(&spec.name)),
        };
        let node = Handle::current()
            .create_node()
            .name(spec.name.clone())
            .ip(ip)
            .init(move || {
                let segment = segment.clone();
                let opts = opts.clone();
                let applied = applied.clone();
                let (ports, port_name) = (ports.clone(), port_name.clone());
                async move {
                    let port = segment
                        .attach(ip)
                        .await
                        .expect("the ARP port is free on a new node");
                    lock(&ports).insert(port_name, port.clone());
                    let (tx, rx) = tokio::sync::watch::channel(0u64);
                    fabric::rt::spawn(watch_applied(opts.name.clone(), rx, applied));
                    se::agent::run(opts, port as Arc<dyn L2Fabric>, Some(tx)).await;
                }
            })
            .build();
        lock(&self.hosts).insert(
            spec.name.clone(),
            SimHost {
                node: node.id(),
                ip,
                running: true,
            },
        );
        Ok(SeHost {
            name: spec.name,
            addr: Some(ip),
            running: true,
        })
    }

    async fn delete_se(&self, name: &str) -> Result<(), CloudError> {
        let host = lock(&self.hosts)
            .remove(name)
            .ok_or_else(|| CloudError::NotFound(name.to_string()))?;
        Handle::current().kill(host.node);
        Ok(())
    }

    async fn list_ses(&self) -> Vec<SeHost> {
        lock(&self.hosts)
            .iter()
            .map(|(name, h)| SeHost {
                name: name.clone(),
                addr: Some(h.ip),
                running: h.running,
            })
            .collect()
    }
}

/// Record every version one boot of an SE serves.
async fn watch_applied(
    name: String,
    mut rx: tokio::sync::watch::Receiver<u64>,
    applied: Arc<Mutex<Applied>>,
) {
    let boot = {
        let mut a = lock(&applied);
        let boot = a.latest.get(&name).map_or(0, |(b, _)| b + 1);
        a.latest.insert(name.clone(), (boot, 0));
        boot
    };
    while rx.changed().await.is_ok() {
        let v = *rx.borrow_and_update();
        let mut a = lock(&applied);
        let prev = a.latest.get(&name).map_or(0, |(_, v)| *v);
        if v < prev {
            a.regressions.push(format!(
                "{name} boot {boot}: served version {v} after {prev}"
            ));
        }
        a.latest.insert(name.clone(), (boot, v));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
