//! `fabric`: the one binary of the fabric.
//!
//! `fabric up` runs an all-in-one fabric on loopback from the embedded
//! example config (or `--config FILE`): a Controller, the demo origin
//! servers and the DNS listener in this process, and one Service Engine per
//! SE group as a child process that gets its config from the Controller over
//! the network protocol. The other subcommands run one role each.

mod drill;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use fabric::cluster::net::{
    ClusterStatus, Forwarded, MembershipChange, PeerClient, PeerRequest, PeerResponse,
};
use fabric::cluster::state::{ApiToken, Role};
use fabric::cluster::{ClusterNode, Command as ClusterCommandOp, NodeAddr, NodeOptions};
use fabric::controller::Controller;
use fabric::model::Config;
use fabric::pki::JoinTicket;
use fabric::platform::netlink::{
    DEFAULT_ADDRESS_LIFETIME, DEFAULT_GARP_COUNT, DEFAULT_GARP_INTERVAL, DEFAULT_PREFIX_LEN_V4,
    DEFAULT_PREFIX_LEN_V6,
};
use fabric::platform::{
    CloudConnector, FileStorage, L2Fabric, LocalProcesses, LoopbackL2, MemStorage, NetlinkL2,
    NetlinkL2Config, SeSpec, Storage,
};
use fabric::rt;

#[derive(Parser)]
#[command(name = "fabric", version, about = "Load-balancing and GSLB DNS fabric")]
struct Cli {
    /// Threads that run the work: 1 runs everything on one thread (one
    /// event loop, like HAProxy with nbthread 1: the cheapest per request
    /// on one core); absent or 0: one worker thread per core.
    #[arg(long, global = true, env = "FABRIC_THREADS", default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

/// How an SE holds its VIPs (docs/ha.md, "L2: VIPs and gratuitous ARP").
#[derive(clap::Args)]
struct L2Args {
    /// Serve VIPs on this LAN interface: each VIP is added to it (netlink)
    /// and announced with gratuitous ARP / unsolicited neighbour
    /// advertisements. Without it, VIPs must be loopback addresses.
    #[arg(long, value_name = "IFACE")]
    l2_interface: Option<String>,
    /// Prefix length IPv4 VIPs are added with.
    #[arg(long, default_value_t = DEFAULT_PREFIX_LEN_V4, requires = "l2_interface")]
    l2_prefix_len: u8,
    /// Prefix length IPv6 VIPs are added with.
    #[arg(long, default_value_t = DEFAULT_PREFIX_LEN_V6, requires = "l2_interface")]
    l2_prefix_len_v6: u8,
    /// Announcements per claim, the first at once.
    #[arg(long, default_value_t = DEFAULT_GARP_COUNT, requires = "l2_interface")]
    l2_garp_count: u32,
    /// Milliseconds between two announcements of a claim.
    #[arg(long, default_value_t = DEFAULT_GARP_INTERVAL.as_millis() as u64, requires = "l2_interface")]
    l2_garp_interval_ms: u64,
    /// Seconds a VIP's address lives on the interface unless renewed (every
    /// third of it, while this SE holds the VIP): how long it can outlive a
    /// crash of this process. 0: permanent addresses.
    #[arg(long, default_value_t = DEFAULT_ADDRESS_LIFETIME.as_secs(), requires = "l2_interface")]
    l2_address_lifetime_secs: u64,
}

impl L2Args {
    /// The L2 fabric these options ask for: [`NetlinkL2`] on the interface,
    /// or [`LoopbackL2`] without one.
    async fn open(self) -> Result<Arc<dyn L2Fabric>> {
        let Some(interface) = self.l2_interface else {
            return Ok(Arc::new(LoopbackL2));
        };
        let config = NetlinkL2Config {
            interface: interface.clone(),
            prefix_len_v4: self.l2_prefix_len,
            prefix_len_v6: self.l2_prefix_len_v6,
            garp_count: self.l2_garp_count,
            garp_interval: Duration::from_millis(self.l2_garp_interval_ms),
            address_lifetime: (self.l2_address_lifetime_secs > 0)
                .then(|| Duration::from_secs(self.l2_address_lifetime_secs)),
        };
        let l2 = NetlinkL2::open(config)
            .await
            .with_context(|| format!("--l2-interface {interface}"))?;
        Ok(Arc::new(l2))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run an all-in-one fabric on loopback (embedded example config unless --config).
    Up {
        /// Config file (TOML); the embedded example when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a Controller node (a one-node cluster unless it joins one).
    Controller {
        /// Config file (TOML): the first desired state of a new cluster.
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the cluster (1, 2, 3, ...).
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// Where the node keeps its Raft log and snapshots.
        #[arg(long, default_value = "fabric-data")]
        data: PathBuf,
        /// Address for SE sessions (default: the config's controller.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address for Raft and `fabric ctl` (default: the SE port + 1).
        #[arg(long)]
        raft: Option<SocketAddr>,
        /// Address of the REST API (default: the SE port + 2).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Wait to be added to an existing cluster (`fabric ctl cluster add`)
        /// instead of starting a new one.
        #[arg(long)]
        join: bool,
    },
    /// Operate a running Controller cluster.
    Ctl {
        /// Raft address of any Controller node (it forwards to the leader).
        #[arg(long, default_value = "127.0.0.1:7471")]
        controller: SocketAddr,
        /// REST API address of any Controller node (backup, restore).
        #[arg(long, default_value = "127.0.0.1:7472")]
        api: SocketAddr,
        /// API address of a DNS server (`dns.api_listen`), for `ctl dns`.
        #[arg(long, default_value = "127.0.0.1:8054")]
        dns_api: SocketAddr,
        /// API token (backup and restore need an admin one).
        #[arg(long, env = "FABRIC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Run a Service Engine that registers with a Controller.
    Se {
        /// Unique SE name.
        #[arg(long)]
        name: String,
        /// SE group.
        #[arg(long, default_value = "default")]
        group: String,
        /// Controller node addresses, ip:port[,ip:port...]; any node serves.
        #[arg(long, value_delimiter = ',', required = true)]
        controller: Vec<SocketAddr>,
        /// Exit when this process is gone (set by `fabric up` for its children).
        #[arg(long, hide = true)]
        parent_pid: Option<u32>,
        /// Where the SE keeps its key and certificates.
        #[arg(long, default_value = "fabric-se-data")]
        data: PathBuf,
        /// One-time join token (`fabric ctl se-token`), needed the first time.
        #[arg(long, env = "FABRIC_JOIN_TOKEN", requires = "ca_sha256")]
        join_token: Option<String>,
        /// SHA-256 of the Controller cluster's CA, printed with the join token.
        #[arg(long)]
        ca_sha256: Option<String>,
        #[command(flatten)]
        l2: L2Args,
        /// Legacy active/standby (the group's `ha_mode`): the pair peer's
        /// heartbeat address (ip:port); this SE listens on the same port.
        /// The group's `ha_profile` sets the timing (docs/ha.md).
        #[arg(long)]
        ha_peer: Option<SocketAddr>,
        /// This SE's priority in its pair: the higher one is preferred.
        #[arg(long, default_value_t = 100, requires = "ha_peer")]
        ha_priority: u8,
        /// Where to take scale-out hand-offs from primary SEs (ip:port; port
        /// 0: any free one). Without it this SE is never a working
        /// secondary: connections a primary would hand it stay there.
        #[arg(long)]
        relay_listen: Option<SocketAddr>,
    },
    /// Run the authoritative DNS server of a config.
    Dns {
        /// Config file (TOML); SIGHUP reloads it (a bad file changes nothing).
        #[arg(long)]
        config: PathBuf,
        /// The GSLB site this server is in: its health probes report as
        /// `dns:SITE` (docs/gslb.md).
        #[arg(long, default_value = "")]
        site: String,
        /// DNS APIs of the other sites' servers (ip:port[,...]): their
        /// probe reports count here, and health is shared.
        #[arg(long, value_delimiter = ',')]
        peer: Vec<SocketAddr>,
        /// The DNS API of the leader site's server: serve its config (kept
        /// when it cannot be reached). Implies `--peer` with it.
        #[arg(long)]
        follow: Option<SocketAddr>,
    },
    /// Failover drills on this host, in network namespaces of their own
    /// (needs root): docs/ha.md, "Failover drill".
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// Run a demo origin HTTP server.
    Origin {
        /// Name it answers with.
        #[arg(long)]
        name: String,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Check a config file and print every problem with its field path.
    Check {
        /// Config file (TOML).
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Cluster membership and status.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Commit an empty write through the leader; prints the time it took.
    Probe,
    /// Create a one-time join token for an SE; prints the flags to give it.
    SeToken {
        /// A label for the token (e.g. the SE's name).
        #[arg(long, default_value = "se")]
        label: String,
    },
    /// Create an API token; prints its secret (once) and id.
    ApiToken {
        /// `admin`, `operator` or `read_only`.
        #[arg(long)]
        role: String,
        /// The tenant it is confined to (an operator needs one).
        #[arg(long)]
        tenant: Option<String>,
        /// A label for operators.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Ask a DNS server (its API, --dns-api) why it answers as it does.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Write the whole desired state to FILE (through the REST API, admin token).
    Backup {
        /// Where to write it (created with mode 0600: it holds the CA key).
        file: PathBuf,
    },
    /// Load a backup FILE into the cluster (through the REST API, admin token).
    Restore {
        /// A file `fabric ctl backup` wrote.
        file: PathBuf,
    },
    /// Drain SE NAME: its virtual services move to other SEs, each place
    /// kept while its connections are open (REST API, admin token;
    /// docs/placement.md).
    Drain {
        /// The SE.
        name: String,
        /// Stop draining it instead.
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Subcommand)]
enum DnsCommand {
    /// The answer the server gives NAME for a client, and why: policy,
    /// members considered, their health, the deciding rule.
    Explain {
        /// The name asked.
        name: String,
        /// The record type.
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        /// The client's (resolver's) address.
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        /// EDNS Client Subnet, e.g. 10.1.2.0/24.
        #[arg(long)]
        ecs: Option<String>,
        /// Print the JSON the API returned.
        #[arg(long)]
        json: bool,
    },
    /// Every GSLB member's health and what each source last said (JSON).
    Health,
    /// Counters: queries, answers per member, decisions by rule (JSON).
    Metrics,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show what the node knows of the cluster.
    Status,
    /// Add a node (started with `--join`) as a voter, live.
    Add {
        /// Its id.
        #[arg(long)]
        id: u64,
        /// Its Raft address.
        #[arg(long)]
        raft: SocketAddr,
    },
    /// Remove a voter, live.
    Remove {
        /// Its id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// A legacy active/standby pair with the real binaries: kill the
    /// active SE again and again while a client asks the VIP every 20 ms;
    /// reports the outage, the GARPs and who answered.
    Failover {
        /// The group's `ha_profile`: fast or default.
        #[arg(long, default_value = "fast")]
        profile: String,
        /// How many times to kill the active SE (1 to 100).
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// node: the SE process is killed and its link goes down (a host
        /// that dies); crash: the process only.
        #[arg(long, default_value = "node")]
        scenario: String,
        /// Prefix of the namespaces it creates (and deletes).
        #[arg(long, default_value = "fdrill")]
        prefix: String,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The drill's client (run by the drill in its client namespace).
    #[command(hide = true)]
    Probe {
        /// How long to send requests.
        #[arg(long)]
        duration_ms: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut builder = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fabric: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Up { config } => up(config.as_deref()).await,
        Command::Controller {
            config,
            id,
            data,
            listen,
            raft,
            api,
            join,
        } => {
            let config = load(&config)?;
            let storage: Arc<dyn Storage> = Arc::new(
                FileStorage::open(&data).with_context(|| format!("opening {}", data.display()))?,
            );
            let listen = listen.unwrap_or(config.controller.listen);
            let raft = raft.unwrap_or(SocketAddr::new(listen.ip(), listen.port() + 1));
            let api = api.unwrap_or(SocketAddr::new(listen.ip(), listen.port() + 2));
            let bootstrap = (!join).then_some(config);
            let new_cluster = bootstrap.is_some();
            let controller = start_controller(id, storage, listen, raft, bootstrap).await?;
            let api = fabric::api::start(controller.clone(), api)
                .await
                .with_context(|| format!("binding the API on {api}"))?;
            eprintln!(
                "fabric: controller node {id}: SE sessions on {listen}, raft and ctl on {raft}, API on http://{api}, data in {}",
                data.display()
            );
            if new_cluster && controller.node().peek(|o| o.api_tokens.is_empty()) {
                let file = data.join("admin.token");
                let (secret, _) = admin_token(&controller, "bootstrap admin").await?;
                write_secret(&file, &secret)?;
                eprintln!("fabric: new cluster: admin API token in {}", file.display());
            }
            shutdown_signal().await;
            Ok(())
        }
        Command::Ctl {
            controller,
            api,
            dns_api,
            token,
            command,
        } => ctl(controller, api, dns_api, token, command).await,
        Command::Drill { command } => match command {
            DrillCommand::Failover {
                profile,
                kills,
                scenario,
                prefix,
                json,
            } => {
                let exe = std::env::current_exe().context("finding this binary")?;
                let opts = drill::Options {
                    profile,
                    kills,
                    scenario,
                    prefix,
                    json,
                };
                let report = drill::failover(&opts, &exe)?;
                println!("\n{}", report.markdown());
                Ok(())
            }
            DrillCommand::Probe { duration_ms } => {
                drill::probe(Duration::from_millis(duration_ms.min(600_000)))
            }
        },
        Command::Se {
            name,
            group,
            controller,
            parent_pid,
            data,
            join_token,
            ca_sha256,
            l2,
            ha_peer,
            ha_priority,
            relay_listen,
        } => {
            if let Some(pid) = parent_pid {
                rt::spawn(exit_with_parent(pid));
            }
            let l2 = l2.open().await?;
            let credentials: Arc<dyn Storage> = Arc::new(
                FileStorage::open(&data).with_context(|| format!("opening {}", data.display()))?,
            );
            let join = join_token
                .zip(ca_sha256)
                .map(|(token, ca_sha256)| JoinTicket { token, ca_sha256 });
            let opts = se::agent::SeOptions {
                name,
                group,
                controllers: controller,
                credentials,
                join,
                ha: ha_peer.map(|peer| fabric::ha::PairPeer {
                    peer,
                    priority: ha_priority,
                }),
                relay: relay_listen,
                cpu: se::cpu::CpuMeter::default(),
            };
            se::agent::run(opts, l2, None).await;
            Ok(())
        }
        Command::Dns {
            config: path,
            site,
            mut peer,
            follow,
        } => {
            let config = load(&path)?;
            let Some((node, addr)) = start_dns(&config, &site).await? else {
                bail!("{}: no `[dns]` section to serve", path.display());
            };
            if let Some(leader) = follow {
                if !peer.contains(&leader) {
                    peer.push(leader);
                }
            }
            if !peer.is_empty() {
                rt::spawn(gslb::node::follow_peers(node.clone(), peer, follow));
            }
            println!(
                "fabric: DNS on {addr} (UDP and TCP), serial {}; SIGHUP reloads {}",
                node.serial(),
                path.display()
            );
            reload_on_hangup(node, path).await;
            Ok(())
        }
        Command::Origin { name, listen } => {
            se::origin::serve(name, bind(listen, "origin").await?).await?;
            Ok(())
        }
        Command::Check { config } => {
            let c = load(&config)?;
            println!(
                "{}: ok ({} virtual services, {} pools, {} GSLB services)",
                config.display(),
                c.virtual_services.len(),
                c.pools.len(),
                c.gslb_services.len()
            );
            Ok(())
        }
    }
}

/// Read a config file (and the zone files it names, relative to it).
fn load(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("in {}", path.display()))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<rt::TcpListener> {
    rt::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} cannot listen on {addr}"))
}

/// Serial for a config loaded from a file: the Unix time, so it grows
/// across restarts and reloads.
fn file_serial() -> u32 {
    (rt::unix_ms() / 1000).min(u32::MAX as u64) as u32
}

/// Start the DNS node of `config` (if it has `[dns]`): UDP and TCP, its
/// DNS-side probes, and its API on `dns.api_listen`.
async fn start_dns(config: &Config, site: &str) -> Result<Option<(gslb::DnsNode, SocketAddr)>> {
    let Some(dns) = &config.dns else {
        return Ok(None);
    };
    let node = gslb::DnsNode::new(config.clone(), site, file_serial());
    let addr = gslb::run_with(dns.listen, node.engine(), dns.udp_workers)
        .await
        .with_context(|| format!("DNS cannot listen on {}", dns.listen))?;
    if let Some(api) = dns.api_listen {
        let bound = gslb::api::start(node.clone(), api)
            .await
            .with_context(|| format!("the DNS API cannot listen on {api}"))?;
        println!(
            "fabric: DNS API on http://{bound}/api/v1/dns/ (explain, health, changes, metrics)"
        );
    }
    // DNS-side probes with the SE's own monitors.
    let prober = |m: fabric::model::HealthMonitor, target| async move {
        se::health::probe(&m, target).await
    };
    rt::spawn(gslb::node::run_probes(node.clone(), Arc::new(prober)));
    Ok(Some((node, addr)))
}

/// Until SIGTERM or Ctrl-C: on SIGHUP, load `path` again and serve it (a
/// file that does not load or validate is reported and changes nothing).
async fn reload_on_hangup(node: gslb::DnsNode, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        shutdown_signal().await;
        return;
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = hup.recv() => match load(&path) {
                Ok(config) => {
                    let serial = node.apply_config(config, file_serial());
                    eprintln!("fabric: reloaded {}, serial {serial}", path.display());
                }
                Err(e) => eprintln!("fabric: {e:#}; still serving the previous config"),
            },
        }
    }
}

async fn up(path: Option<&Path>) -> Result<()> {
    let config = match path {
        Some(p) => load(p)?,
        None => example_with_tls()?,
    };
    for origin in &config.demo_origins {
        let listener = bind(origin.listen, "demo origin").await?;
        rt::spawn(se::origin::serve(origin.name.clone(), listener));
    }
    let controller_addr = config.controller.listen;
    let raft_addr = SocketAddr::new(controller_addr.ip(), controller_addr.port() + 1);
    // `up` is a demo: its Controller keeps its state in memory.
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let controller =
        start_controller(1, storage, controller_addr, raft_addr, Some(config.clone())).await?;
    let dns = match start_dns(&config, "").await? {
        Some((node, addr)) => {
            // The DNS follows the Controller: config changes (serial = the
            // config version) and the SEs' view of each member.
            rt::spawn(gslb::feed::follow_controller(controller.clone(), node));
            Some(addr)
        }
        None => None,
    };
    let api = fabric::api::start(
        controller.clone(),
        SocketAddr::new(controller_addr.ip(), controller_addr.port() + 2),
    )
    .await
    .context("binding the API")?;
    let (admin, _) = admin_token(&controller, "fabric up").await?;

    // The SEs keep their credentials for as long as this run: a fresh
    // directory each time, like the Controller's in-memory state.
    let se_data = std::env::temp_dir().join(format!("fabric-up-{}", std::process::id()));
    let cloud = Arc::new(LocalProcesses::new(
        std::env::current_exe().context("finding the fabric binary")?,
        se_data.clone(),
    ));
    // Auto-healing groups get their new SEs as more child processes.
    controller.set_cloud(cloud.clone(), vec![controller_addr]);
    let mut groups: Vec<&str> = config
        .virtual_services
        .iter()
        .map(|v| v.se_group.as_str())
        .collect();
    groups.sort();
    groups.dedup();
    for (i, group) in groups.iter().enumerate() {
        let name = format!("se-{}", i + 1);
        let join = controller
            .create_join_token(&name)
            .await
            .context("creating a join token")?;
        let spec = SeSpec {
            name,
            group: group.to_string(),
            controllers: vec![controller_addr],
            join: Some(join),
            ha: None,
        };
        cloud.create_se(spec).await?;
    }

    let ready = rt::timeout(Duration::from_secs(15), wait_until_serving(&config)).await;
    if ready.is_err() {
        bail!("the virtual services did not start serving within 15 s (see the SE's log above)");
    }
    print_next_steps(&config, dns, groups.len());
    println!("REST API on http://{api} (docs/api.md), admin token:");
    println!("  export FABRIC_TOKEN={admin}");
    println!(
        "  curl -H \"Authorization: Bearer $FABRIC_TOKEN\" http://{api}/api/v1/virtual_services"
    );
    println!("Ctrl-C stops everything.");
    shutdown_signal().await;
    eprintln!("fabric: stopping");
    cloud.stop_all();
    let _ = std::fs::remove_dir_all(&se_data);
    Ok(())
}

/// Start a Controller node: Raft on `raft`, SE sessions on `listen`; with
/// `bootstrap`, a new one-node cluster holding that config (a node with
/// data on disk keeps its state).
async fn start_controller(
    id: u64,
    storage: Arc<dyn Storage>,
    listen: SocketAddr,
    raft: SocketAddr,
    bootstrap: Option<Config>,
) -> Result<Controller> {
    let raft_listener = bind(raft, "controller raft").await?;
    let se_listener = bind(listen, "controller").await?;
    let addr = NodeAddr {
        raft: raft.to_string(),
        api: String::new(),
    };
    let node = ClusterNode::start(NodeOptions::new(id, addr, storage), raft_listener)
        .await
        .context("starting the controller node")?;
    for d in node.damage() {
        eprintln!("fabric: storage damage cut off: {d}");
    }
    if let Some(config) = bootstrap {
        node.bootstrap(config)
            .await
            .context("bootstrapping the cluster")?;
    }
    let controller = Controller::new(node);
    rt::spawn({
        let controller = controller.clone();
        async move { controller.serve(se_listener).await }
    });
    Ok(controller)
}

/// One request to a Controller node's Raft/ctl port, forwarded to the
/// leader where it must be; the leader's answer.
async fn forward(client: &mut PeerClient, req: PeerRequest) -> Result<Forwarded> {
    match client.call(&PeerRequest::Client(Box::new(req))).await? {
        PeerResponse::Forwarded(r) => Ok(r?),
        _ => bail!("unexpected answer from the controller"),
    }
}

async fn ctl(
    controller: SocketAddr,
    api: SocketAddr,
    dns_api: SocketAddr,
    token: Option<String>,
    command: CtlCommand,
) -> Result<()> {
    let command = match command {
        CtlCommand::Dns { command } => return dns_ctl(dns_api, command).await,
        other => other,
    };
    let mut client = PeerClient::new(0, controller.to_string());
    match command {
        CtlCommand::Cluster { command } => {
            let req = match command {
                ClusterCommand::Status => PeerRequest::Status,
                ClusterCommand::Add { id, raft } => {
                    PeerRequest::Membership(MembershipChange::Add {
                        id,
                        addr: NodeAddr {
                            raft: raft.to_string(),
                            api: String::new(),
                        },
                    })
                }
                ClusterCommand::Remove { id } => {
                    PeerRequest::Membership(MembershipChange::Remove { id })
                }
            };
            match forward(&mut client, req).await? {
                Forwarded::Status(s) => print_status(&s),
                Forwarded::Voters(v) => println!("voters: {v:?}"),
                other => println!("{other:?}"),
            }
        }
        CtlCommand::SeToken { label } => {
            let ca_sha256 = match forward(&mut client, PeerRequest::Status).await? {
                Forwarded::Status(s) => s.ca_sha256.context("the cluster has no CA yet")?,
                other => bail!("unexpected answer {other:?}"),
            };
            let (token, write) = ClusterCommandOp::new_join_token(&label);
            forward(&mut client, PeerRequest::Write(write)).await?;
            println!("--join-token {token} --ca-sha256 {ca_sha256}");
        }
        CtlCommand::ApiToken {
            role,
            tenant,
            label,
        } => {
            let role: Role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .map_err(|_| {
                    anyhow!("--role must be admin, operator or read_only, not `{role}`")
                })?;
            if role == Role::Operator && tenant.is_none() {
                bail!("an operator token needs --tenant");
            }
            let (secret, id, write) = ClusterCommandOp::new_api_token(ApiToken {
                label,
                role,
                tenant,
            });
            forward(&mut client, PeerRequest::Write(write)).await?;
            println!("token {secret}");
            println!("id {id}");
        }
        CtlCommand::Backup { file } => {
            let token = token.context("backup needs an admin token: --token or FABRIC_TOKEN")?;
            let body = api_call(api, "GET", "/api/v1/backup", &token, None).await?;
            write_secret(&file, &String::from_utf8_lossy(&body))?;
            let backup: serde_json::Value = serde_json::from_slice(&body)?;
            println!(
                "wrote {} (desired state version {})",
                file.display(),
                backup["version"]
            );
        }
        CtlCommand::Restore { file } => {
            let token = token.context("restore needs an admin token: --token or FABRIC_TOKEN")?;
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let body = api_call(api, "POST", "/api/v1/restore", &token, Some(text)).await?;
            println!("restored: {}", String::from_utf8_lossy(&body));
        }
        CtlCommand::Drain { name, stop } => {
            let token = token.context("drain needs an admin token: --token or FABRIC_TOKEN")?;
            let body = serde_json::json!({ "draining": !stop })
                .to_string()
                .into_bytes();
            let path = format!("/api/v1/ses/{name}/drain");
            let reply = api_call(api, "POST", &path, &token, Some(body)).await?;
            println!("{}", String::from_utf8_lossy(&reply));
        }
        CtlCommand::Dns { .. } => unreachable!("answered above"),
        CtlCommand::Probe => {
            let start = std::time::Instant::now();
            let r = forward(&mut client, PeerRequest::Write(ClusterCommandOp::Probe)).await?;
            println!("committed in {:?}: {r:?}", start.elapsed());
        }
    }
    Ok(())
}

/// `fabric ctl dns ...`: read-only calls to a DNS server's API.
async fn dns_ctl(api: SocketAddr, command: DnsCommand) -> Result<()> {
    let get = |path: String| async move {
        let req = hyper::Request::builder()
            .method("GET")
            .uri(&path)
            .header("host", api.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let resp = se::proxy::fetch(api, req)
            .await
            .with_context(|| format!("calling the DNS API at {api} (dns.api_listen; --dns-api)"))?;
        let status = resp.status();
        let body = resp.into_body();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: {status}: not JSON"))?;
        if !status.is_success() {
            bail!("{}", value["error"].as_str().unwrap_or("request failed"));
        }
        Ok::<_, anyhow::Error>(value)
    };
    match command {
        DnsCommand::Explain {
            name,
            qtype,
            client,
            ecs,
            json,
        } => {
            let mut query = vec![("name", name.as_str()), ("type", qtype.as_str())];
            let client = client.to_string();
            query.push(("client", &client));
            if let Some(ecs) = &ecs {
                query.push(("ecs", ecs));
            }
            let query = serde_urlencoded::to_string(&query)?;
            let x = get(format!("/api/v1/dns/explain?{query}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&x)?);
            } else {
                print!("{}", explain_text(&x));
            }
        }
        DnsCommand::Health => {
            let x = get("/api/v1/dns/health".into()).await?;
            println!("{}", serde_json::to_string_pretty(&x)?);
        }
        DnsCommand::Metrics => {
            let x = get("/api/v1/dns/metrics".into()).await?;
            println!("{}", serde_json::to_string_pretty(&x)?);
        }
    }
    Ok(())
}

/// An explanation as an operator reads it.
fn explain_text(x: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let ecs = x["ecs"]
        .as_str()
        .map(|e| format!(" ecs {e}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{} {} from {}{ecs}: {}{}, serial {}",
        s(&x["name"]),
        s(&x["qtype"]),
        s(&x["client"]),
        s(&x["rcode"]),
        if x["authoritative"].as_bool() == Some(true) {
            " (authoritative)"
        } else {
            ""
        },
        x["serial"]
    );
    for section in ["answers", "authority", "additional"] {
        for r in x[section].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {section:<10} {}", s(r));
        }
    }
    if let Some(scope) = x["ecs_scope"].as_u64() {
        let _ = writeln!(out, "  ECS scope /{scope}");
    }
    let g = &x["gslb"];
    if g.is_null() {
        let _ = writeln!(out, "not a GSLB name: static data or no such name");
        return out;
    }
    let _ = writeln!(
        out,
        "GSLB service {} (policy {})",
        s(&g["service"]),
        s(&g["policy"])
    );
    let site = match g["client_site"].as_object() {
        Some(cs) => format!(", in site {} by {}", s(&cs["site"]), s(&cs["subnet"])),
        None => ", in no site's client networks".into(),
    };
    let _ = writeln!(out, "  client network {}{site}", s(&g["client_network"]));
    for d in g["decisions"].as_array().into_iter().flatten() {
        let chosen: Vec<String> = d["chosen"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let _ = writeln!(
            out,
            "  {}: {} -> {} [{}], TTL {}",
            s(&d["family"]),
            s(&d["rule"]),
            s(&d["outcome"]),
            chosen.join(", "),
            d["ttl_secs"]
        );
    }
    let _ = writeln!(out, "  members:");
    for m in g["members"].as_array().into_iter().flatten() {
        let sources: Vec<String> = m["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} {} {} ms ago{}",
                    s(&r["source"]),
                    if r["up"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "down"
                    },
                    r["age_ms"],
                    if r["counted"].as_bool() == Some(true) {
                        ""
                    } else {
                        " (stale)"
                    }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "    {} {:<16} {:<8}{}{}{} weight {} priority {}{} ({})",
            if m["chosen"].as_bool() == Some(true) {
                "*"
            } else {
                " "
            },
            s(&m["member"]),
            s(&m["health"]),
            m["site"]
                .as_str()
                .map(|x| format!(" site {x}"))
                .unwrap_or_default(),
            if m["settling"].as_bool() == Some(true) {
                " settling"
            } else {
                ""
            },
            if m["last_good"].as_bool() == Some(true) {
                ""
            } else {
                " not-last-good"
            },
            m["weight"],
            m["priority"],
            if sources.is_empty() {
                String::new()
            } else {
                format!("; {}", sources.join("; "))
            },
            s(&m["address"]),
        );
    }
    out
}

/// One call to the REST API; the body of a 2xx answer, else its error.
async fn api_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Vec<u8>>,
) -> Result<bytes::Bytes> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", api.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))?;
    let resp = se::proxy::fetch(api, req)
        .await
        .with_context(|| format!("calling the API at {api}"))?;
    let status = resp.status();
    let bytes = resp.into_body();
    if !status.is_success() {
        bail!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes)
}

/// Write a secret to `path`, readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// A new admin API token for the cluster `controller` belongs to.
async fn admin_token(controller: &Controller, label: &str) -> Result<(String, String)> {
    let token = ApiToken {
        label: label.into(),
        role: Role::Admin,
        tenant: None,
    };
    fabric::api::create_api_token(controller, token)
        .await
        .context("creating an admin API token")
}

fn print_status(s: &ClusterStatus) {
    println!("node {} is {} in term {}", s.id, s.state, s.term);
    match s.leader {
        Some(l) => println!("leader: node {l}"),
        None => println!("leader: none known"),
    }
    for (id, addr) in &s.nodes {
        let role = if s.voters.contains(id) {
            "voter"
        } else {
            "learner"
        };
        println!("  node {id}: {role}, raft {}", addr.raft);
    }
    println!(
        "applied index {}, desired version {}, {} log entries, snapshot at {:?}",
        s.applied_index, s.version, s.log_entries, s.snapshot_index
    );
}

/// The embedded example plus a TLS virtual service beside its first one
/// (port + 363, so 8443), with a self-signed certificate made now.
fn example_with_tls() -> Result<Config> {
    let mut config = Config::example();
    let plain = config
        .virtual_services
        .first()
        .cloned()
        .context("the example has a virtual service")?;
    let name = format!("{}-tls", plain.name);
    let host = format!("{}.fabric.test", plain.name);
    let cert = fabric::pki::self_signed(&name, &[host.as_str()])
        .map_err(|e| anyhow!("making the example certificate: {e}"))?;
    config.certificates.push(cert);
    config.virtual_services.push(fabric::model::VirtualService {
        name: name.clone(),
        port: plain.port + 363,
        tls: Some(fabric::model::VsTls {
            certificates: vec![name],
            session_resumption: true,
        }),
        ..plain
    });
    config
        .validate()
        .map_err(|e| anyhow!("the example config: {e}"))?;
    Ok(config)
}

async fn wait_until_serving(config: &Config) {
    for vs in &config.virtual_services {
        let addr = SocketAddr::new(vs.vip, vs.port);
        loop {
            // A TLS or L4 listener that accepts is serving; HTTP must answer.
            let up = if vs.tls.is_some() || vs.protocol != fabric::model::VsProtocol::Http {
                vs.protocol == fabric::model::VsProtocol::Udp || rt::connect(addr).await.is_ok()
            } else {
                se::proxy::get(addr, &vs.name, "/").await.is_ok()
            };
            if up {
                break;
            }
            rt::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn print_next_steps(config: &Config, dns: Option<SocketAddr>, ses: usize) {
    println!(
        "fabric is up: controller {}, {} SE process(es), {} virtual service(s)",
        config.controller.listen,
        ses,
        config.virtual_services.len()
    );
    println!("try:");
    for vs in &config.virtual_services {
        let addr = SocketAddr::new(vs.vip, vs.port);
        match (vs.protocol, &vs.tls) {
            (fabric::model::VsProtocol::Http, None) => println!("  curl -i http://{addr}/"),
            // -k: the example's certificate is self-signed.
            (fabric::model::VsProtocol::Http, Some(_)) => {
                println!("  curl -ik --http2 https://{addr}/")
            }
            (protocol, _) => println!("  {protocol:?} virtual service `{}` on {addr}", vs.name),
        }
    }
    if let Some(dns) = dns {
        for s in &config.gslb_services {
            println!("  dig @{} -p {} {} A", dns.ip(), dns.port(), s.fqdn);
        }
        if let Some(api) = config.dns.as_ref().and_then(|d| d.api_listen) {
            for s in &config.gslb_services {
                println!("  fabric ctl --dns-api {api} dns explain {}", s.fqdn);
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn exit_with_parent(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    loop {
        rt::sleep(Duration::from_secs(1)).await;
        if !proc_dir.exists() {
            tracing::info!(pid, "parent is gone, SE exiting");
            std::process::exit(0);
        }
    }
}
