//! Cloud connectors: create and delete the hosts Service Engines run on.
//!
//! The Controller asks a connector for SE capacity (placement, auto-healing,
//! autoscale). [`LocalProcesses`] starts SEs as child processes of this host;
//! the simulated connector (`sim` crate) starts simulated nodes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;

use async_trait::async_trait;

/// What an SE host should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeSpec {
    /// Unique SE name.
    pub name: String,
    /// SE group it joins.
    pub group: String,
    /// Controller node addresses it may register with (any of them).
    pub controllers: Vec<SocketAddr>,
    /// How it registers the first time (a one-time join token).
    pub join: Option<crate::pki::JoinTicket>,
    /// Legacy active/standby: its pair peer and priority (`None`: not in a pair).
    pub ha: Option<crate::ha::PairPeer>,
}

/// An SE host as the connector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeHost {
    /// SE name.
    pub name: String,
    /// Its address, where known.
    pub addr: Option<IpAddr>,
    /// Whether it is running.
    pub running: bool,
}

/// Why a connector call failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// An SE of that name already exists.
    #[error("SE `{0}` already exists")]
    Exists(String),
    /// No SE of that name.
    #[error("no SE named `{0}`")]
    NotFound(String),
    /// The connector could not do it.
    #[error("cloud connector failed: {0}")]
    Failed(String),
}

/// Creates, deletes and lists SE hosts.
#[async_trait]
pub trait CloudConnector: Send + Sync + std::fmt::Debug {
    /// Start a new SE host.
    async fn create_se(&self, spec: SeSpec) -> Result<SeHost, CloudError>;
    /// Stop and remove an SE host.
    async fn delete_se(&self, name: &str) -> Result<(), CloudError>;
    /// All SE hosts this connector manages, sorted by name.
    async fn list_ses(&self) -> Vec<SeHost>;
}

/// SEs as child processes of this host, running `program se --name ... --group ...
/// --controller ... --parent-pid ...`. Children are killed when the connector is
/// dropped, and exit by themselves when this process dies.
#[derive(Debug)]
pub struct LocalProcesses {
    program: PathBuf,
    data_dir: PathBuf,
    children: Mutex<BTreeMap<String, Child>>,
}

impl LocalProcesses {
    /// Start SEs with `program` (usually `std::env::current_exe()`), each
    /// keeping its credentials in `data_dir/<name>`.
    pub fn new(program: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            program,
            data_dir,
            children: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl CloudConnector for LocalProcesses {
    async fn create_se(&self, spec: SeSpec) -> Result<SeHost, CloudError> {
        let mut children = self.lock();
        if let Some(child) = children.get_mut(&spec.name) {
            if matches!(child.try_wait(), Ok(None)) {
                return Err(CloudError::Exists(spec.name));
            }
        }
        let child = Command::new(&self.program)
            .args([
                "se",
                "--name",
                &spec.name,
                "--group",
                &spec.group,
                "--controller",
            ])
            .arg(
                spec.controllers
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .args(["--parent-pid", &std::process::id().to_string()])
            // Every SE on this host: a port of its own for hand-offs.
            .args(spec.controllers.first().map_or_else(Vec::new, |c| {
                vec![
                    "--relay-listen".to_string(),
                    std::net::SocketAddr::new(c.ip(), 0).to_string(),
                ]
            }))
            .arg("--data")
            .arg(self.data_dir.join(&spec.name))
            .args(
                spec.join
                    .iter()
                    .flat_map(|j| ["--join-token", &j.token, "--ca-sha256", &j.ca_sha256]),
            )
            .spawn()
            .map_err(|e| CloudError::Failed(format!("starting {}: {e}", self.program.display())))?;
        children.insert(spec.name.clone(), child);
        Ok(SeHost {
            name: spec.name,
            addr: spec.controllers.first().map(|a| a.ip()),
            running: true,
        })
    }

    async fn delete_se(&self, name: &str) -> Result<(), CloudError> {
        let mut child = self
            .lock()
            .remove(name)
            .ok_or_else(|| CloudError::NotFound(name.to_string()))?;
        let _ = child.kill();
        child
            .wait()
            .map_err(|e| CloudError::Failed(format!("reaping SE `{name}`: {e}")))?;
        Ok(())
    }

    async fn list_ses(&self) -> Vec<SeHost> {
        self.lock()
            .iter_mut()
            .map(|(name, child)| SeHost {
                name: name.clone(),
                addr: None,
                running: matches!(child.try_wait(), Ok(None)),
            })
            .collect()
    }
}

impl LocalProcesses {
    /// Kill and reap every SE this connector started.
    pub fn stop_all(&self) {
        for (_, mut child) in std::mem::take(&mut *self.lock()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalProcesses {
    fn drop(&mut self) {
        self.stop_all();
    }
}
