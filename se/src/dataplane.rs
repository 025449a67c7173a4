//! The SE's listeners, one per virtual service, changed atomically.
//!
//! [`DataPlane::apply`] takes a whole [`SeConfig`] in two phases: first it
//! claims every new VIP and binds every new listener; if any of that fails,
//! it undoes what it did and the previous config keeps serving untouched.
//! Only then does it commit: new listeners start, changed server sets are
//! swapped, removed listeners stop (their open connections finish).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use fabric::platform::{L2Error, L2Fabric};
use fabric::proto::{SeConfig, SeVirtualService};
use fabric::rt;

use crate::lb::ServerSet;
use crate::proxy::{self, VirtualService};

/// Most client connections one virtual service serves at once.
pub const MAX_CONNECTIONS_PER_VS: usize = 10_000;

/// Why a config could not be applied (the previous one still serves).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Older than what is applied: versions never go backwards.
    #[error("config version {version} is older than the applied version {applied}")]
    Stale {
        /// Offered version.
        version: u64,
        /// Applied version.
        applied: u64,
    },
    /// A listener could not bind.
    #[error("virtual service `{vs}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Virtual service.
        vs: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VIP could not be claimed.
    #[error("virtual service `{vs}`: {source}")]
    Vip {
        /// Virtual service.
        vs: String,
        /// Why.
        #[source]
        source: L2Error,
    },
    /// The config lists one VIP and port twice.
    #[error("virtual service `{0}`: VIP and port used twice in one config")]
    Duplicate(String),
}

struct Listener {
    vs: Arc<VirtualService>,
    vip: IpAddr,
    task: rt::JoinHandle<()>,
}

/// The listeners of one SE.
pub struct DataPlane {
    se_name: Arc<str>,
    l2: Arc<dyn L2Fabric>,
    listeners: BTreeMap<(IpAddr, u16), Listener>,
    applied: u64,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("se_name", &self.se_name)
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .field("applied", &self.applied)
            .finish()
    }
}

impl DataPlane {
    /// An empty data plane for SE `se_name` on the segment `l2`.
    pub fn new(se_name: &str, l2: Arc<dyn L2Fabric>) -> Self {
        Self {
            se_name: se_name.into(),
            l2,
            listeners: BTreeMap::new(),
            applied: 0,
        }
    }

    /// The config version serving now (0: none yet).
    pub fn applied_version(&self) -> u64 {
        self.applied
    }

    /// Virtual services serving now, by VIP and port.
    pub fn serving(&self) -> Vec<(String, IpAddr, u16)> {
        self.listeners
            .iter()
            .map(|((vip, port), l)| (l.vs.name.clone(), *vip, *port))
            .collect()
    }

    /// Make `config` the serving config, all of it or none of it.
    pub async fn apply(&mut self, config: &SeConfig) -> Result<(), ApplyError> {
        if config.version < self.applied {
            return Err(ApplyError::Stale {
                version: config.version,
                applied: self.applied,
            });
        }
        let mut wanted: BTreeMap<(IpAddr, u16), &SeVirtualService> = BTreeMap::new();
        for vs in &config.virtual_services {
            if wanted.insert((vs.vip, vs.port), vs).is_some() {
                return Err(ApplyError::Duplicate(vs.name.clone()));
            }
        }

        // Phase 1: everything that can fail, undone on failure.
        let mut prepared = Vec::new();
        for (key, vs) in &wanted {
            if self.listeners.contains_key(key) {
                continue;
            }
            match self.prepare(vs).await {
                Ok(listener) => prepared.push((*key, vs, listener)),
                Err(e) => {
                    for ((vip, _), _, _) in prepared {
                        self.release_if_unused(vip).await;
                    }
                    return Err(e);
                }
            }
        }

        // Phase 2: commit; nothing below fails.
        let removed: Vec<_> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in removed {
            if let Some(old) = self.listeners.remove(&key) {
                old.task.abort();
                self.release_if_unused(old.vip).await;
                tracing::info!(se = %self.se_name, vs = %old.vs.name, "virtual service stopped");
            }
        }
        for (key, listener) in self.listeners.iter() {
            let vs = wanted[key];
            if !listener.vs.servers().same_as(vs.algorithm, &vs.servers) {
                listener
                    .vs
                    .set_servers(ServerSet::new(vs.algorithm, vs.servers.clone()));
            }
        }
        for (key, vs, listener) in prepared {
            let service = Arc::new(VirtualService::new(
                vs.name.clone(),
                self.se_name.clone(),
                ServerSet::new(vs.algorithm, vs.servers.clone()),
            ));
            let for_task = service.clone();
            let task = rt::spawn(async move {
                let result =
                    rt::accept_loop(listener, MAX_CONNECTIONS_PER_VS, move |stream, peer| {
                        proxy::serve_connection(for_task.clone(), stream, peer)
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "listener failed");
                }
            });
            tracing::info!(se = %self.se_name, vs = %vs.name, vip = %vs.vip, port = vs.port, "virtual service serving");
            self.listeners.insert(
                key,
                Listener {
                    vs: service,
                    vip: vs.vip,
                    task,
                },
            );
        }
        self.applied = config.version;
        Ok(())
    }

    async fn prepare(&self, vs: &SeVirtualService) -> Result<rt::TcpListener, ApplyError> {
        self.l2
            .claim_vip(vs.vip)
            .await
            .map_err(|source| ApplyError::Vip {
                vs: vs.name.clone(),
                source,
            })?;
        let addr = SocketAddr::new(self.l2.bind_addr(vs.vip), vs.port);
        match rt::TcpListener::bind(addr).await {
            Ok(l) => Ok(l),
            Err(source) => {
                self.release_if_unused(vs.vip).await;
                Err(ApplyError::Bind {
                    vs: vs.name.clone(),
                    addr,
                    source,
                })
            }
        }
    }

    /// Release `vip` unless a running listener still uses it.
    async fn release_if_unused(&self, vip: IpAddr) {
        if !self.listeners.values().any(|l| l.vip == vip) {
            if let Err(e) = self.l2.release_vip(vip).await {
                tracing::warn!(%vip, error = %e, "releasing VIP failed");
            }
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::model::Algorithm;
    use fabric::platform::LoopbackL2;

    fn vs(name: &str, port: u16) -> SeVirtualService {
        SeVirtualService {
            name: name.into(),
            vip: "127.0.0.1".parse().unwrap(),
            port,
            algorithm: Algorithm::RoundRobin,
            servers: vec!["127.0.0.1:9".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn apply_is_all_or_nothing_and_never_goes_backwards() {
        let taken = rt::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .await
            .unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free = rt::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .await
            .unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);

        let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
        let v1 = SeConfig {
            version: 1,
            virtual_services: vec![vs("a", free_port)],
        };
        plane.apply(&v1).await.unwrap();
        assert_eq!(
            plane.serving(),
            vec![("a".to_string(), v1.virtual_services[0].vip, free_port)]
        );

        // v2 adds a VS whose port is taken: refused, v1 keeps serving untouched.
        let v2 = SeConfig {
            version: 2,
            virtual_services: vec![vs("a", free_port), vs("b", taken_port)],
        };
        let err = plane.apply(&v2).await.unwrap_err();
        assert!(
            matches!(err, ApplyError::Bind { ref vs, .. } if vs == "b"),
            "{err}"
        );
        assert_eq!(plane.applied_version(), 1);
        assert_eq!(plane.serving().len(), 1);
        assert!(
            rt::connect(SocketAddr::new(v1.virtual_services[0].vip, free_port))
                .await
                .is_ok()
        );

        let stale = SeConfig {
            version: 0,
            virtual_services: vec![],
        };
        assert!(matches!(
            plane.apply(&stale).await,
            Err(ApplyError::Stale { .. })
        ));

        let dup = SeConfig {
            version: 3,
            virtual_services: vec![vs("a", free_port), vs("c", free_port)],
        };
        assert!(matches!(
            plane.apply(&dup).await,
            Err(ApplyError::Duplicate(_))
        ));

        // v4 removes everything: the listener closes.
        plane
            .apply(&SeConfig {
                version: 4,
                virtual_services: vec![],
            })
            .await
            .unwrap();
        assert!(plane.serving().is_empty());
        rt::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            rt::connect(SocketAddr::new(v1.virtual_services[0].vip, free_port))
                .await
                .is_err()
        );
        drop(taken);
    }
}
