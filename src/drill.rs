//! `fabric drill failover`: a legacy active/standby pair on a real Linux
//! host, in network namespaces the drill makes and removes itself, with the
//! real binaries: a Controller and an origin in one namespace, an SE in each
//! of two more, a client in a fourth, all on one bridge. The client sends a
//! bounded stream of requests to the VIP while the active SE is killed; the
//! report gives the outage the client saw, the GARP frames it received and
//! which SE answered before and after (docs/ha.md, "Failover drill").
//!
//! The topology is `benches/netns-pair.sh`'s (10.99.7.0/24, VIP 10.99.7.10),
//! so the keepalived side (`benches/ha-keepalived.sh`) runs in the same one.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fabric::rt;

/// The client's requests: one every this long...
const PACE: Duration = Duration::from_millis(20);
/// ...each given up after this (a failed request).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// Most kills one drill runs.
pub const MAX_KILLS: usize = 100;

const NET: &str = "10.99.7";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 10);
const CONTROLLER: &str = "10.99.7.20:7470";
const RAFT: &str = "10.99.7.20:7471";
const ORIGIN: &str = "10.99.7.20:8080";
const PAIR_PORT: u16 = fabric::ha::DEFAULT_PAIR_PORT;

/// What to drill.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fast` or `default` (the group's `ha_profile`).
    pub profile: String,
    /// Kills of the active SE.
    pub kills: usize,
    /// `node` (process killed and its link down, as a host that dies) or
    /// `crash` (the process only).
    pub scenario: String,
    /// Namespace prefix.
    pub prefix: String,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
}

/// One kill, as the client saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kill {
    /// The SE killed (it answered before).
    pub killed: String,
    /// The SE that answered after.
    pub after: Option<String>,
    /// First failed request after the kill to the first success after it.
    pub outage_ms: Option<u64>,
    /// Kill to the first success from the other SE.
    pub kill_to_serve_ms: Option<u64>,
    /// Gratuitous ARP frames for the VIP the client received after the kill.
    pub garps: u32,
    /// Requests that failed.
    pub failed: u32,
    /// Requests answered by the killed SE after the kill (must be 0).
    pub stale_answers: u32,
}

/// The drill's report.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// `fast` or `default`.
    pub profile: String,
    /// `node` or `crash`.
    pub scenario: String,
    /// Every kill.
    pub kills: Vec<Kill>,
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut outages: Vec<u64> = self.kills.iter().filter_map(|k| k.outage_ms).collect();
        outages.sort_unstable();
        let pct = |q: f64| -> String {
            if outages.is_empty() {
                return "-".into();
            }
            let i = ((outages.len() - 1) as f64 * q).round() as usize;
            format!("{} ms", outages[i])
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| profile | scenario | kills | outage p50 | outage max | GARPs per kill | answers from the killed SE after the kill |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        let garps: u32 = self.kills.iter().map(|k| k.garps).sum();
        let stale: u32 = self.kills.iter().map(|k| k.stale_answers).sum();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {} |",
            self.profile,
            self.scenario,
            self.kills.len(),
            pct(0.5),
            outages.last().map_or("-".into(), |m| format!("{m} ms")),
            f64::from(garps) / self.kills.len().max(1) as f64,
            stale
        );
        out
    }
}

/// Run the drill; the namespaces and processes are gone when it returns.
pub fn failover(opts: &Options, exe: &Path) -> Result<Report> {
    if !matches!(opts.profile.as_str(), "fast" | "default") {
        bail!("--profile must be fast or default, not {}", opts.profile);
    }
    if !matches!(opts.scenario.as_str(), "node" | "crash") {
        bail!("--scenario must be node or crash, not {}", opts.scenario);
    }
    if opts.kills == 0 || opts.kills > MAX_KILLS {
        bail!("--kills must be 1 to {MAX_KILLS}");
    }
    let dir = std::env::temp_dir().join(format!("fabric-drill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lab = Lab::new(&opts.prefix, exe, &dir);
    lab.up()?;
    let result = drill(&mut lab, opts);
    lab.down();
    result
}

fn drill(lab: &mut Lab, opts: &Options) -> Result<Report> {
    let dead_ms: u64 = if opts.profile == "fast" { 300 } else { 9_000 };
    let config = format!(
        r#"[controller]
listen = "{CONTROLLER}"
heartbeat_ms = 500

[[se_groups]]
name = "pair"
ha_mode = "legacy_active_standby"
ha_profile = "{profile}"

[[pools]]
name = "web"
servers = ["{ORIGIN}"]

[[virtual_services]]
name = "app"
vip = "{VIP}"
port = 80
pool = "web"
se_group = "pair"
"#,
        profile = opts.profile
    );
    let config_path = lab.dir.join("fabric.toml");
    std::fs::write(&config_path, config)?;
    let data = lab.dir.join("controller");
    lab.spawn(
        "controller",
        "s",
        &[
            "controller",
            "--config",
            path(&config_path),
            "--data",
            path(&data),
        ],
    )?;
    lab.spawn(
        "origin",
        "s",
        &["origin", "--name", "origin", "--listen", ORIGIN],
    )?;
    let flags = lab.join_flags("se-a")?;
    lab.start_se("se-a", "a", "b", 150, Some(&flags))?;
    let flags = lab.join_flags("se-b")?;
    lab.start_se("se-b", "b", "a", 100, Some(&flags))?;

    let mut kills = Vec::new();
    for i in 0..opts.kills {
        let active = lab.wait_for_active(Duration::from_secs(60))?;
        // The standby must be up and standby too (restarted after the last kill).
        std::thread::sleep(Duration::from_millis(dead_ms + 1_500));
        let node = if active == "se-a" { "a" } else { "b" };
        // The kill lands at a random point of a heartbeat interval (a
        // third of the dead interval): the outage depends on how long
        // before the kill the standby heard its last beat, and a fixed
        // delay from the restart would pin that phase for every kill.
        let jitter = Duration::from_millis(rt::random_u64() % (dead_ms / 3).max(1));
        let before = Duration::from_millis(1_500) + jitter;
        let window = before + Duration::from_millis(dead_ms * 2 + 3_000);
        let mut probe = lab.probe(window)?;
        std::thread::sleep(before);
        let killed_at = rt::now();
        lab.kill_se(&active, node, opts.scenario == "node")?;
        let lines = probe.finish()?;
        let kill = analyse(&lines, &active, probe.started, killed_at);
        println!(
            "kill {}/{}: {} killed; {} answered after; outage {}; kill to serving {}; {} GARPs; {} failed requests; {} stale answers",
            i + 1,
            opts.kills,
            kill.killed,
            kill.after.as_deref().unwrap_or("nobody"),
            kill.outage_ms.map_or("-".into(), |m| format!("{m} ms")),
            kill.kill_to_serve_ms.map_or("-".into(), |m| format!("{m} ms")),
            kill.garps,
            kill.failed,
            kill.stale_answers
        );
        kills.push(kill);
        // Bring the killed one back (it restarts as standby).
        lab.restore_se(&active, node)?;
    }
    let report = Report {
        profile: opts.profile.clone(),
        scenario: opts.scenario.clone(),
        kills,
    };
    if let Some(json) = &opts.json {
        if let Some(parent) = json.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(json, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// `child`'s output, killing it after `limit`.
fn wait_output(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    let start = rt::now();
    while child.try_wait()?.is_none() {
        if rt::now().duration_since(start) > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// What the probe printed: `R <ms> <se or ->` per request, `G <ms>` per
/// gratuitous ARP for the VIP.
fn analyse(
    lines: &[String],
    killed: &str,
    started: std::time::Instant,
    killed_at: std::time::Instant,
) -> Kill {
    let kill_ms = killed_at.duration_since(started).as_millis() as u64;
    let mut requests: Vec<(u64, Option<String>)> = Vec::new();
    let mut garps = 0;
    for line in lines {
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|m| m.parse::<u64>().ok()),
        ) {
            (Some("R"), Some(ms)) => {
                let se = parts.next().filter(|s| *s != "-").map(str::to_string);
                requests.push((ms, se));
            }
            (Some("G"), Some(ms)) if ms >= kill_ms => garps += 1,
            _ => {}
        }
    }
    let after: Vec<&(u64, Option<String>)> =
        requests.iter().filter(|(ms, _)| *ms >= kill_ms).collect();
    let first_fail = after.iter().find(|(_, se)| se.is_none()).map(|(ms, _)| *ms);
    let first_other = after
        .iter()
        .find(|(_, se)| se.as_deref().is_some_and(|s| s != killed));
    let outage_ms = match (first_fail, first_other) {
        (Some(f), Some((ok, _))) if *ok >= f => Some(ok - f + PACE.as_millis() as u64),
        (None, Some(_)) => Some(0),
        _ => None,
    };
    let stale_answers = after
        .iter()
        .filter(|(_, se)| se.as_deref() == Some(killed))
        .count() as u32;
    Kill {
        killed: killed.to_string(),
        after: first_other.and_then(|(_, se)| se.clone()),
        outage_ms,
        kill_to_serve_ms: first_other.map(|(ms, _)| ms.saturating_sub(kill_ms)),
        garps,
        failed: requests.iter().filter(|(_, se)| se.is_none()).count() as u32,
        stale_answers,
    }
}

/// The namespaces and the processes in them.
struct Lab {
    prefix: String,
    exe: PathBuf,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

struct Probe {
    child: Child,
    started: std::time::Instant,
}

impl Probe {
    fn finish(&mut self) -> Result<Vec<String>> {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the client probe failed ({status})");
        }
        Ok(out.lines().map(str::to_string).collect())
    }
}

impl Lab {
    fn new(prefix: &str, exe: &Path, dir: &Path) -> Self {
        Self {
            prefix: prefix.to_string(),
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .context("running ip (iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The topology of benches/netns-pair.sh.
    fn up(&mut self) -> Result<()> {
        self.down();
        let br = self.ns("br");
        self.ip(&["netns", "add", &br])
            .context("creating network namespaces (needs root)")?;
        self.ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        self.ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (node, host) in [("a", 11), ("b", 12), ("c", 100), ("s", 20)] {
            let ns = self.ns(node);
            self.ip(&["netns", "add", &ns])?;
            let port = format!("veth-{node}");
            self.ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            self.ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{NET}.{host}/24");
            self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // No ip_nonlocal_bind: a standby SE binds the VIP before it
            // holds it with IP_FREEBIND on its own sockets.
        }
        Ok(())
    }

    /// Kill every process and delete every namespace of the prefix.
    fn down(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        let list = String::from_utf8_lossy(&out.stdout).into_owned();
        let mine = format!("{}-", self.prefix);
        for ns in list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&mine))
        {
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }

    /// Start `args` of our binary in `node`'s namespace; output to a log.
    fn spawn(&mut self, name: &str, node: &str, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let ns = self.ns(node);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&self.exe)
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// A join token for `label` (the Controller may still be starting).
    fn join_flags(&self, label: &str) -> Result<Vec<String>> {
        let ns = self.ns("s");
        let mut last = String::new();
        for _ in 0..100 {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&self.exe)
                .args(["ctl", "--controller", RAFT, "se-token", "--label", label])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            // A Controller still electing itself may keep the call waiting.
            let out = wait_output(child, Duration::from_secs(5))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                if let Some(line) = text.lines().find(|l| l.starts_with("--join-token")) {
                    return Ok(line.split_whitespace().map(str::to_string).collect());
                }
            }
            last = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "no join token from the Controller after 20 s: {} (see {}/controller.log)",
            last.trim(),
            self.dir.display()
        )
    }

    fn start_se(
        &mut self,
        name: &str,
        node: &str,
        peer: &str,
        priority: u8,
        join: Option<&[String]>,
    ) -> Result<()> {
        let peer_ip = if peer == "a" { 11 } else { 12 };
        let peer_addr = format!("{NET}.{peer_ip}:{PAIR_PORT}");
        let data = self.dir.join(name);
        let priority = priority.to_string();
        let mut args = vec![
            "se",
            "--name",
            name,
            "--group",
            "pair",
            "--controller",
            CONTROLLER,
            "--data",
            path(&data),
            "--l2-interface",
            "eth0",
            "--ha-peer",
            &peer_addr,
            "--ha-priority",
            &priority,
        ];
        args.extend(join.unwrap_or_default().iter().map(String::as_str));
        self.spawn(name, node, &args)
    }

    fn kill_se(&mut self, name: &str, node: &str, link_down: bool) -> Result<()> {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            child.kill()?;
            child.wait()?;
        }
        self.children.retain(|(n, _)| n != name);
        if link_down {
            let ns = self.ns(node);
            self.ip(&["-n", &ns, "link", "set", "eth0", "down"])?;
        }
        Ok(())
    }

    fn restore_se(&mut self, name: &str, node: &str) -> Result<()> {
        let ns = self.ns(node);
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        let (peer, priority) = if node == "a" { ("b", 150) } else { ("a", 100) };
        // Its credentials are on disk: no token the second time.
        self.start_se(name, node, peer, priority, None)
    }

    /// Which SE serves the VIP, once one does.
    fn wait_for_active(&self, limit: Duration) -> Result<String> {
        let start = rt::now();
        while rt::now().duration_since(start) < limit {
            let mut probe = self.probe(Duration::from_millis(300))?;
            let lines = probe.finish()?;
            let answered: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("R "))
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|se| *se != "-")
                .collect();
            if let Some(se) = answered.last() {
                return Ok(se.to_string());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "no SE served the VIP within {limit:?} (logs in {})",
            self.dir.display()
        )
    }

    /// The client probe, in the client's namespace, for `window`.
    fn probe(&self, window: Duration) -> Result<Probe> {
        let ns = self.ns("c");
        let ms = window.as_millis().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&self.exe)
            .args(["drill", "probe", "--duration-ms", &ms])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the client probe")?;
        Ok(Probe {
            child,
            started: rt::now(),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
    }
}

/// `fabric drill probe`: requests to the VIP every [`PACE`] for
/// `duration`, printing `R <ms> <se or ->` for each, and `G <ms>` for each
/// gratuitous ARP for the VIP heard on eth0 meanwhile.
pub fn probe(duration: Duration) -> Result<()> {
    let start = rt::now();
    let capture = garp_capture(start, duration);
    let stdout = std::io::stdout();
    while rt::now().duration_since(start) < duration {
        let at = rt::now().duration_since(start).as_millis();
        let se = request().unwrap_or_else(|| "-".into());
        writeln!(stdout.lock(), "R {at} {se}")?;
        let spent = rt::now().duration_since(start).as_millis() - at;
        std::thread::sleep(PACE.saturating_sub(Duration::from_millis(spent as u64)));
    }
    if let Some(capture) = capture {
        for ms in capture.join().unwrap_or_default() {
            writeln!(stdout.lock(), "G {ms}")?;
        }
    }
    Ok(())
}

/// One `GET /` to the VIP: the SE that answered 200, or None.
fn request() -> Option<String> {
    let addr = SocketAddr::new(IpAddr::V4(VIP), 80);
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    if !status.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut se = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case(se::SE_HEADER) {
                se = Some(value.trim().to_string());
            }
        }
    }
    se
}

/// Gratuitous ARP frames for the VIP on eth0 (ms since `start`) for
/// `duration`, from a packet socket on a thread; None without permission.
fn garp_capture(
    start: std::time::Instant,
    duration: Duration,
) -> Option<std::thread::JoinHandle<Vec<u64>>> {
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a timeval option, given with its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Some(std::thread::spawn(move || {
        let _owned = owned;
        let mut seen = Vec::new();
        let mut frame = [0u8; 128];
        while rt::now().duration_since(start) < duration {
            // SAFETY: reading into a buffer of its length.
            let n = unsafe { libc::recv(fd, frame.as_mut_ptr().cast(), frame.len(), 0) };
            if n < 42 {
                continue;
            }
            let f = &frame[..n as usize];
            let arp = f[12..14] == ETH_P_ARP.to_be_bytes();
            let sender = &f[28..32];
            let target = &f[38..42];
            if arp && sender == VIP.octets() && target == VIP.octets() {
                seen.push(rt::now().duration_since(start).as_millis() as u64);
            }
        }
        seen
    }))
}
