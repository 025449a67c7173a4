//! `chaos`: the seed runner. It runs scenarios over many seeds on all cores,
//! stops each seed at a simulated-time limit, prints every failure with the
//! command that replays it, and writes a JSON report, a Markdown summary and
//! an SVG plot of the client-visible outages (`failover.svg`).
//!
//! It drives the simulation, so it exists only in simulation builds; use
//! `./scripts/chaos.sh run --seeds 500` and `./scripts/chaos.sh replay SEED`.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "chaos runs the simulation and must be built with --cfg madsim:\n  ./scripts/chaos.sh run --seeds 500\n  ./scripts/chaos.sh replay SEED"
    );
    std::process::ExitCode::from(2)
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    runner::main()
}

#[cfg(madsim)]
mod runner {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    use chaos::scenario::{self, Outcome, Params, Scenario};
    use clap::{Parser, Subcommand};
    use serde::Serialize;

    #[derive(Parser)]
    #[command(name = "chaos", about = "Deterministic chaos runs of the fabric")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Run many seeds.
        Run {
            /// How many seeds.
            #[arg(long, default_value_t = 100)]
            seeds: u64,
            /// First seed.
            #[arg(long, default_value_t = 1)]
            first: u64,
            /// Parallel workers (default: all cores).
            #[arg(long)]
            jobs: Option<usize>,
            /// Simulated-time limit per seed, seconds.
            #[arg(long, default_value_t = 300)]
            time_limit_secs: u64,
            /// Where to write report.json and summary.md.
            #[arg(long, default_value = "target/chaos")]
            report: PathBuf,
            /// Run every seed twice; a seed whose two runs differ fails.
            #[arg(long)]
            check_determinism: bool,
            #[command(flatten)]
            pick: Pick,
        },
        /// Run one seed again with a full trace on stderr.
        Replay {
            /// The seed.
            seed: u64,
            #[command(flatten)]
            pick: Pick,
        },
    }

    /// Which scenario a seed runs, and for how long.
    #[derive(clap::Args, Debug, Clone)]
    struct Pick {
        /// `mixed` (seeds take turns: seed % 3 = 0 slice, 1 pair, 2
        /// fabric), or one of `slice`, `pair`, `fabric`.
        #[arg(long, default_value = "mixed", value_parser = parse_scenario)]
        scenario: String,
        /// Length of each seed's safety phase, simulated seconds (a fault
        /// round per 30 s of it): 600 for ten-minute seeds.
        #[arg(long, default_value_t = 30)]
        phase_secs: u64,
    }

    fn parse_scenario(name: &str) -> Result<String, String> {
        if name == "mixed" || Scenario::parse(name).is_some() {
            return Ok(name.to_string());
        }
        Err(format!(
            "unknown scenario {name:?}: mixed, slice, pair or fabric"
        ))
    }

    impl Pick {
        /// The one scenario asked for, `None` for mixed.
        fn only(&self) -> Option<Scenario> {
            Scenario::parse(&self.scenario)
        }

        fn scenario_of(&self, seed: u64) -> Scenario {
            self.only().unwrap_or_else(|| Scenario::for_seed(seed))
        }

        fn params(&self) -> Params {
            Params {
                phase: Duration::from_secs(self.phase_secs.max(1)),
            }
        }

        /// The replay flags that reproduce this pick for one seed.
        fn flags(&self, seed: u64) -> String {
            let mut flags = String::new();
            if self.only().is_some() {
                let name = self.scenario_of(seed).name();
                flags += &format!(" --scenario {}", name.split('_').next().unwrap_or(name));
            }
            if self.phase_secs != 30 {
                flags += &format!(" --phase-secs {}", self.phase_secs);
            }
            flags
        }
    }

    #[derive(Debug, Clone, Serialize)]
    struct SeedResult {
        seed: u64,
        scenario: Scenario,
        wall_secs: f64,
        #[serde(flatten)]
        result: Result<Outcome, String>,
        /// The seed's trace, up to its failure if it failed.
        #[serde(skip)]
        trace: Vec<String>,
        /// FNV-1a of the trace (its lines joined by newlines), in hex: two
        /// runs, builds or machines that agree on it saw the same seed.
        trace_hash: String,
    }

    /// [`SeedResult::trace_hash`] of `lines`.
    fn trace_hash(lines: &[String]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, line) in lines.iter().enumerate() {
            let sep: &[u8] = if i == 0 { b"" } else { b"\n" };
            for b in sep.iter().chain(line.as_bytes()) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Speed and failures of one scenario in a run.
    #[derive(Debug, Default, Serialize)]
    struct ScenarioStats {
        seeds: usize,
        failed: usize,
        sim_secs: f64,
        worker_wall_secs: f64,
        sim_per_wall: f64,
        /// Seeds of this scenario's length one core runs per hour.
        seeds_per_core_hour: f64,
        /// The parts of its seeds that passed (boot, safety, liveness), in
        /// order, summed; and what the seeds spent outside them (building and
        /// dropping the runtime).
        laps: Vec<LapStats>,
        outside_wall_secs: f64,
    }

    #[derive(Debug, Default, Serialize)]
    struct LapStats {
        name: &'static str,
        sim_secs: f64,
        wall_secs: f64,
        sim_per_wall: f64,
    }

    #[derive(Debug, Serialize)]
    struct Report {
        scenario: String,
        phase_secs: u64,
        by_scenario: BTreeMap<&'static str, ScenarioStats>,
        seeds_run: usize,
        seeds_failed: usize,
        failures: Vec<Failure>,
        faults_by_type: BTreeMap<String, usize>,
        sim_secs: f64,
        worker_wall_secs: f64,
        wall_secs: f64,
        sim_per_wall: f64,
        outage_ms_p50: Option<u64>,
        outage_ms_p99: Option<u64>,
        outage_ms_max: Option<u64>,
        /// Stretches without a leader able to reach the SEs (full shape).
        election_ms_p50: Option<u64>,
        election_ms_p99: Option<u64>,
        election_ms_max: Option<u64>,
        /// How far into an origin's outage the DNS last handed it out, longest.
        stale_dns_ms_max: Option<u64>,
        /// From a config version's commit to every live SE applying it (full shape).
        config_lag_ms_p50: Option<u64>,
        config_lag_ms_p99: Option<u64>,
        config_lag_ms_max: Option<u64>,
        /// Longest time two SEs of a pair both held the VIP, over the seeds.
        dual_hold_ms_max: u64,
        /// [`host_reference_ms`]: how fast the host was.
        host_reference_ms: f64,
        results: Vec<SeedResult>,
    }

    #[derive(Debug, Serialize)]
    struct Failure {
        seed: u64,
        reason: String,
        replay: String,
    }

    pub fn main() -> ExitCode {
        match Cli::parse().command {
            Command::Run {
                seeds,
                first,
                jobs,
                time_limit_secs,
                report,
                check_determinism,
                pick,
            } => {
                let jobs = jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                run(
                    first,
                    seeds,
                    jobs.max(1),
                    // A longer safety phase gets its length on top.
                    Duration::from_secs(time_limit_secs.max(pick.phase_secs + 120)),
                    &report,
                    check_determinism,
                    &pick,
                )
            }
            Command::Replay { seed, pick } => replay(seed, &pick),
        }
    }

    fn replay_command(seed: u64, pick: &Pick) -> String {
        format!("./scripts/chaos.sh replay {seed}{}", pick.flags(seed))
    }

    /// Run one seed on a thread of its own; a panic or a time-out is a failure.
    /// Wall time comes from `rt::now()` called outside the simulation, i.e. the
    /// real clock.
    ///
    /// A fresh thread, because std seeds a thread's hash keys once, at its first
    /// `RandomState`: madsim sets them from the seed only if that happens in its
    /// runtime. A second run on the same thread would continue from the first
    /// run's keys (madsim warns "failed to initialize std random state"), and
    /// tokio's `FastRand`, which orders `watch` wake-ups, is seeded from them
    /// (vendor/README.md): the determinism check saw two runs of one seed wake
    /// the Controller's sessions in another order.
    fn run_seed(seed: u64, limit: Duration, scenario: Scenario, params: Params) -> SeedResult {
        thread::spawn(move || run_seed_here(seed, limit, scenario, params))
            .join()
            .unwrap_or_else(|_| SeedResult {
                seed,
                scenario,
                wall_secs: 0.0,
                result: Err("the seed's thread died".into()),
                trace: Vec::new(),
                trace_hash: trace_hash(&[]),
            })
    }

    fn run_seed_here(seed: u64, limit: Duration, scenario: Scenario, params: Params) -> SeedResult {
        let wall = fabric::rt::now();
        let result = std::panic::catch_unwind(|| {
            let mut rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(limit);
            rt.block_on(scenario.run(params))
        });
        let (result, trace) = match result {
            Ok((r, trace)) => (r.map_err(|e| format!("{e:#}")), trace.lines()),
            Err(panic) => (
                Err(panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .map_or_else(|| "panic".to_string(), |m| format!("panic: {m}"))),
                Vec::new(),
            ),
        };
        SeedResult {
            seed,
            scenario,
            wall_secs: wall.elapsed().as_secs_f64(),
            result,
            trace_hash: trace_hash(&trace),
            trace,
        }
    }

    /// Run one seed, twice when `twice`: two runs whose outcomes differ are a failure.
    fn run_checked(seed: u64, limit: Duration, twice: bool, pick: &Pick) -> SeedResult {
        let (scenario, params) = (pick.scenario_of(seed), pick.params());
        let first = run_seed(seed, limit, scenario, params);
        if !twice {
            return first;
        }
        let second = run_seed(seed, limit, scenario, params);
        // The outcome and the whole trace must be the same; not the wall
        // time the parts of the seed took.
        let as_json = |r: &SeedResult| {
            let result = r.result.as_ref().map(|o| Outcome {
                laps: Vec::new(),
                ..o.clone()
            });
            serde_json::to_string(&(&result, &r.trace)).unwrap_or_default()
        };
        if as_json(&first) == as_json(&second) {
            return first;
        }
        SeedResult {
            result: Err(format!(
                "nondeterministic: first run {}, second run {}",
                as_json(&first),
                as_json(&second)
            )),
            ..first
        }
    }

    fn run(
        first: u64,
        seeds: u64,
        jobs: usize,
        limit: Duration,
        dir: &PathBuf,
        twice: bool,
        pick: &Pick,
    ) -> ExitCode {
        // Panics are reported per seed; the default hook would print each one.
        std::panic::set_hook(Box::new(|_| {}));
        // No log subscriber unless RUST_LOG asks for one: madsim opens a span
        // for every task, and any subscriber, even one printing errors only,
        // pays for each (about a tenth of the runner's time). A failure's
        // replay command gives its full log.
        if std::env::var_os("RUST_LOG").is_none() {
            let _ = tracing::subscriber::set_global_default(
                tracing::subscriber::NoSubscriber::default(),
            );
        }
        let host_reference_ms = host_reference_ms();
        let started = fabric::rt::now();
        let next = Arc::new(AtomicU64::new(first));
        let end = first + seeds;
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                let (next, tx, pick) = (next.clone(), tx.clone(), pick.clone());
                // Each worker thread runs its own simulation runtime, one seed at a
                // time: threads sit outside every simulation, so this is deterministic.
                thread::spawn(move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || tx.send(run_checked(seed, limit, twice, &pick)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        drop(tx);

        let mut results = Vec::new();
        for r in rx {
            if let Err(reason) = &r.result {
                eprintln!(
                    "\nFAILED seed {} ({}): {reason}\n  replay: {}",
                    r.seed,
                    r.scenario.name(),
                    replay_command(r.seed, pick)
                );
            }
            results.push(r);
            let failed = results.iter().filter(|r| r.result.is_err()).count();
            eprint!("\r[{}/{}] seeds run, {failed} failed", results.len(), seeds);
        }
        eprintln!();
        for w in workers {
            let _ = w.join();
        }
        results.sort_by_key(|r| r.seed);
        let mut report = summarize(results, started.elapsed().as_secs_f64(), pick);
        report.host_reference_ms = host_reference_ms;
        if let Err(e) = write_report(&report, dir) {
            eprintln!("chaos: cannot write the report to {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        println!("{}", markdown(&report));
        println!(
            "report: {d}/report.json, {d}/summary.md, {d}/failover.svg",
            d = dir.display()
        );
        if report.seeds_failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Milliseconds this host takes for a fixed piece of work much like the
    /// simulation's (map inserts and lookups, small allocations, a sort), the
    /// best of three: the same seeds ran at 319x on one day and 635x on
    /// another on the same kind of VM, and this tells such hosts apart.
    fn host_reference_ms() -> f64 {
        use std::hint::black_box;
        let once = || {
            let t = fabric::rt::now();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut map = BTreeMap::new();
            for _ in 0..100_000 {
                let k = next() % 1_000_000;
                map.insert(k, vec![k as u8; (k % 64) as usize]);
            }
            let mut hits = 0usize;
            for _ in 0..100_000 {
                hits += map.get(&(next() % 1_000_000)).map_or(0, Vec::len);
            }
            let mut v: Vec<u64> = (0..500_000).map(|_| next()).collect();
            v.sort_unstable();
            black_box((hits, v[v.len() / 2], map.len()));
            t.elapsed().as_secs_f64() * 1000.0
        };
        (0..3).map(|_| once()).fold(f64::INFINITY, f64::min)
    }

    fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
        if sorted.is_empty() {
            return None;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        Some(sorted[i])
    }

    fn summarize(results: Vec<SeedResult>, wall_secs: f64, pick: &Pick) -> Report {
        let mut faults_by_type = BTreeMap::new();
        let mut outages = Vec::new();
        let mut elections = Vec::new();
        let mut stale_dns = Vec::new();
        let mut config_lags = Vec::new();
        let mut sim_secs = 0.0;
        let mut failures = Vec::new();
        for r in &results {
            match &r.result {
                Ok(o) => {
                    sim_secs += o.sim_secs;
                    outages.extend(&o.outages_ms);
                    elections.extend(&o.elections_ms);
                    stale_dns.extend(&o.stale_dns_ms);
                    config_lags.extend(&o.config_lag_ms);
                    for f in &o.faults {
                        *faults_by_type.entry(f.name().to_string()).or_insert(0) += 1;
                    }
                }
                Err(reason) => failures.push(Failure {
                    seed: r.seed,
                    reason: format!("{}: {reason}", r.scenario.name()),
                    replay: replay_command(r.seed, pick),
                }),
            }
        }
        let mut by_scenario: BTreeMap<&'static str, ScenarioStats> = BTreeMap::new();
        for r in &results {
            let stats = by_scenario.entry(r.scenario.name()).or_default();
            stats.seeds += 1;
            stats.worker_wall_secs += r.wall_secs;
            match &r.result {
                Ok(o) => {
                    stats.sim_secs += o.sim_secs;
                    stats.outside_wall_secs += r.wall_secs;
                    for lap in &o.laps {
                        let i = match stats.laps.iter().position(|l| l.name == lap.name) {
                            Some(i) => i,
                            None => {
                                stats.laps.push(LapStats {
                                    name: lap.name,
                                    ..LapStats::default()
                                });
                                stats.laps.len() - 1
                            }
                        };
                        stats.laps[i].sim_secs += lap.sim_secs;
                        stats.laps[i].wall_secs += lap.wall_secs;
                        stats.outside_wall_secs -= lap.wall_secs;
                    }
                }
                Err(_) => stats.failed += 1,
            }
        }
        for stats in by_scenario.values_mut() {
            if stats.worker_wall_secs > 0.0 {
                stats.sim_per_wall = stats.sim_secs / stats.worker_wall_secs;
                stats.seeds_per_core_hour = 3600.0 * stats.seeds as f64 / stats.worker_wall_secs;
            }
            for lap in &mut stats.laps {
                if lap.wall_secs > 0.0 {
                    lap.sim_per_wall = lap.sim_secs / lap.wall_secs;
                }
            }
        }
        outages.sort_unstable();
        elections.sort_unstable();
        stale_dns.sort_unstable();
        config_lags.sort_unstable();
        let worker_wall_secs: f64 = results.iter().map(|r| r.wall_secs).sum();
        Report {
            scenario: match pick.only() {
                Some(s) => s.name().to_string(),
                None => "mixed: seed % 3 = 0 slice_under_crashes, 1 pair_under_faults, 2 fabric_under_faults".into(),
            },
            phase_secs: pick.phase_secs,
            by_scenario,
            dual_hold_ms_max: results
                .iter()
                .filter_map(|r| r.result.as_ref().ok())
                .map(|o| o.dual_hold_ms)
                .max()
                .unwrap_or(0),
            seeds_run: results.len(),
            seeds_failed: failures.len(),
            failures,
            faults_by_type,
            sim_secs,
            worker_wall_secs,
            wall_secs,
            sim_per_wall: if worker_wall_secs > 0.0 {
                sim_secs / worker_wall_secs
            } else {
                0.0
            },
            outage_ms_p50: percentile(&outages, 0.5),
            outage_ms_p99: percentile(&outages, 0.99),
            outage_ms_max: outages.last().copied(),
            election_ms_p50: percentile(&elections, 0.5),
            election_ms_p99: percentile(&elections, 0.99),
            election_ms_max: elections.last().copied(),
            stale_dns_ms_max: stale_dns.last().copied(),
            config_lag_ms_p50: percentile(&config_lags, 0.5),
            config_lag_ms_p99: percentile(&config_lags, 0.99),
            config_lag_ms_max: config_lags.last().copied(),
            host_reference_ms: 0.0,
            results,
        }
    }

    fn markdown(r: &Report) -> String {
        let mut s = format!(
            "# Chaos run: {}\n\n| | |\n|---|---|\n| safety phase per seed | {} s |\n| seeds run | {} |\n| seeds failed | {} |\n| simulated time | {:.0} s |\n| wall time | {:.1} s ({:.1} s of worker time) |\n| sim / wall (per worker) | {:.0}x |\n| host reference (fixed work, best of 3; lower is a faster host) | {:.0} ms |\n",
            r.scenario, r.phase_secs, r.seeds_run, r.seeds_failed, r.sim_secs, r.wall_secs, r.worker_wall_secs, r.sim_per_wall, r.host_reference_ms
        );
        for (name, st) in &r.by_scenario {
            s += &format!(
                "| {name}: seeds / failed / sim s / sim per wall / seeds per core-hour | {} / {} / {:.0} / {:.0}x / {:.0} |\n",
                st.seeds, st.failed, st.sim_secs, st.sim_per_wall, st.seeds_per_core_hour
            );
            let wall: f64 = st.laps.iter().map(|l| l.wall_secs).sum::<f64>() + st.outside_wall_secs;
            if wall > 0.0 && !st.laps.is_empty() {
                let share = |w: f64| 100.0 * w / wall;
                let parts: Vec<String> = st
                    .laps
                    .iter()
                    .map(|l| {
                        format!(
                            "{} {:.0}x ({:.0}% of the wall time)",
                            l.name,
                            l.sim_per_wall,
                            share(l.wall_secs)
                        )
                    })
                    .collect();
                s += &format!(
                    "| {name}: sim per wall by part (passed seeds) | {}; outside the simulation {:.0}% |\n",
                    parts.join(", "),
                    share(st.outside_wall_secs)
                );
            }
        }
        for (fault, n) in &r.faults_by_type {
            s += &format!("| faults: {fault} | {n} |\n");
        }
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        s += &format!(
            "| SE-crash outage p50 / p99 / max | {} / {} / {} |\n",
            ms(r.outage_ms_p50),
            ms(r.outage_ms_p99),
            ms(r.outage_ms_max)
        );
        s += &format!(
            "| no reachable leader (full shape) p50 / p99 / max | {} / {} / {} |\n",
            ms(r.election_ms_p50),
            ms(r.election_ms_p99),
            ms(r.election_ms_max)
        );
        s += &format!(
            "| DNS handed out a crashed origin, latest into its outage | {} (detection window {} ms) |\n",
            ms(r.stale_dns_ms_max),
            scenario::DNS_DETECTION.as_millis()
        );
        s += &format!(
            "| config version committed to applied by every SE up (full shape; seen once a step, ~100 ms: 0 is within one) p50 / p99 / max | {} / {} / {} |\n",
            ms(r.config_lag_ms_p50),
            ms(r.config_lag_ms_p99),
            ms(r.config_lag_ms_max)
        );
        s += &format!(
            "| longest time two SEs held one VIP | {} ms (at most {} ms allowed) |\n",
            r.dual_hold_ms_max,
            scenario::DUAL_HOLD_GRACE.as_millis()
        );
        if !r.failures.is_empty() {
            s += "\n## Failures\n\n";
            for f in &r.failures {
                s += &format!(
                    "- seed {}: {}\n  replay: `{}`\n",
                    f.seed, f.reason, f.replay
                );
            }
        }
        s
    }

    fn write_report(report: &Report, dir: &PathBuf) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("summary.md"), markdown(report))?;
        let mut outages: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in &report.results {
            if let Ok(o) = &r.result {
                outages
                    .entry(o.scenario.to_string())
                    .or_default()
                    .extend(&o.outages_ms);
            }
        }
        let title = format!("{} seeds: client-visible outages", report.seeds_run);
        std::fs::write(
            dir.join("failover.svg"),
            chaos::plot::failover_svg(&title, &outages),
        )
    }

    fn replay(seed: u64, pick: &Pick) -> ExitCode {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_writer(std::io::stderr)
            .init();
        let scenario = pick.scenario_of(seed);
        println!("seed {seed}: {}", scenario.name());
        let r = run_seed(
            seed,
            Duration::from_secs(300 + pick.phase_secs),
            scenario,
            pick.params(),
        );
        for line in &r.trace {
            println!("{line}");
        }
        println!("trace hash {}", r.trace_hash);
        match &r.result {
            Ok(o) => {
                println!("seed {seed} passed: {o:?}");
                ExitCode::SUCCESS
            }
            Err(reason) => {
                println!("seed {seed} FAILED: {reason}");
                ExitCode::FAILURE
            }
        }
    }
}
