//! `fabric`: the one binary of the fabric.
//!
//! `fabric up` runs an all-in-one fabric on loopback from the embedded
//! example config (or `--config FILE`): a Controller, the demo origin
//! servers and the DNS listener in this process, and one Service Engine per
//! SE group as a child process that gets its config from the Controller over
//! the network protocol. The other subcommands run one role each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fabric::controller::Controller;
use fabric::model::Config;
use fabric::platform::{CloudConnector, LocalProcesses, LoopbackL2, SeSpec};
use fabric::rt;

#[derive(Parser)]
#[command(name = "fabric", version, about = "Load-balancing and GSLB DNS fabric")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an all-in-one fabric on loopback (embedded example config unless --config).
    Up {
        /// Config file (TOML); the embedded example when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a Controller.
    Controller {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
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
    },
    /// Run the authoritative DNS server of a config.
    Dns {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::Controller { config } => {
            let config = load(&config)?;
            let listener = bind(config.controller.listen, "controller").await?;
            Controller::new(config)?.serve(listener).await?;
            Ok(())
        }
        Command::Se {
            name,
            group,
            controller,
            parent_pid,
        } => {
            if let Some(pid) = parent_pid {
                rt::spawn(exit_with_parent(pid));
            }
            let opts = se::agent::SeOptions {
                name,
                group,
                controllers: controller,
            };
            se::agent::run(opts, Arc::new(LoopbackL2), None).await;
            Ok(())
        }
        Command::Dns { config } => {
            let config = load(&config)?;
            start_dns(&config).await?;
            shutdown_signal().await;
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

fn load(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Config::parse(&text).with_context(|| format!("in {}", path.display()))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<rt::TcpListener> {
    rt::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} cannot listen on {addr}"))
}

async fn start_dns(config: &Config) -> Result<Option<SocketAddr>> {
    let Some(dns) = &config.dns else {
        return Ok(None);
    };
    let engine = gslb::EngineHandle::new(gslb::Engine::from_config(config, 1));
    let addr = gslb::run(dns.listen, engine)
        .await
        .with_context(|| format!("DNS cannot listen on {}", dns.listen))?;
    Ok(Some(addr))
}

async fn up(path: Option<&Path>) -> Result<()> {
    let config = match path {
        Some(p) => load(p)?,
        None => Config::example(),
    };
    for origin in &config.demo_origins {
        let listener = bind(origin.listen, "demo origin").await?;
        rt::spawn(se::origin::serve(origin.name.clone(), listener));
    }
    let controller_addr = config.controller.listen;
    let listener = bind(controller_addr, "controller").await?;
    let controller = Controller::new(config.clone())?;
    rt::spawn({
        let controller = controller.clone();
        async move { controller.serve(listener).await }
    });
    let dns = start_dns(&config).await?;

    let cloud = LocalProcesses::new(std::env::current_exe().context("finding the fabric binary")?);
    let mut groups: Vec<&str> = config
        .virtual_services
        .iter()
        .map(|v| v.se_group.as_str())
        .collect();
    groups.sort();
    groups.dedup();
    for (i, group) in groups.iter().enumerate() {
        let spec = SeSpec {
            name: format!("se-{}", i + 1),
            group: group.to_string(),
            controllers: vec![controller_addr],
        };
        cloud.create_se(spec).await?;
    }

    let ready = rt::timeout(Duration::from_secs(15), wait_until_serving(&config)).await;
    if ready.is_err() {
        bail!("the virtual services did not start serving within 15 s (see the SE's log above)");
    }
    print_next_steps(&config, dns, groups.len());
    shutdown_signal().await;
    eprintln!("fabric: stopping");
    drop(cloud);
    Ok(())
}

async fn wait_until_serving(config: &Config) {
    for vs in &config.virtual_services {
        let addr = SocketAddr::new(vs.vip, vs.port);
        while se::proxy::get(addr, &vs.name, "/").await.is_err() {
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
        println!("  curl -i http://{}/", SocketAddr::new(vs.vip, vs.port));
    }
    if let Some(dns) = dns {
        for s in &config.gslb_services {
            println!("  dig @{} -p {} {} A", dns.ip(), dns.port(), s.fqdn);
        }
    }
    println!("Ctrl-C stops everything.");
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
