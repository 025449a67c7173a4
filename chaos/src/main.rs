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

    use chaos::scenario::{self, Outcome};
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
        },
        /// Run one seed again with a full trace on stderr.
        Replay {
            /// The seed.
            seed: u64,
        },
    }

    #[derive(Debug, Clone, Serialize)]
    struct SeedResult {
        seed: u64,
        wall_secs: f64,
        #[serde(flatten)]
        result: Result<Outcome, String>,
    }

    #[derive(Debug, Serialize)]
    struct Report {
        scenario: &'static str,
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
        /// Longest time two SEs of a pair both held the VIP, over the seeds.
        dual_hold_ms_max: u64,
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
            } => {
                let jobs = jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                run(
                    first,
                    seeds,
                    jobs.max(1),
                    Duration::from_secs(time_limit_secs),
                    &report,
                    check_determinism,
                )
            }
            Command::Replay { seed } => replay(seed),
        }
    }

    fn replay_command(seed: u64) -> String {
        format!("./scripts/chaos.sh replay {seed}")
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
    fn run_seed(seed: u64, limit: Duration) -> SeedResult {
        thread::spawn(move || run_seed_here(seed, limit))
            .join()
            .unwrap_or_else(|_| SeedResult {
                seed,
                wall_secs: 0.0,
                result: Err("the seed's thread died".into()),
            })
    }

    fn run_seed_here(seed: u64, limit: Duration) -> SeedResult {
        let wall = fabric::rt::now();
        let result = std::panic::catch_unwind(|| {
            let mut rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(limit);
            // Odd seeds run the legacy active/standby pair, even ones the slice.
            if seed % 2 == 1 {
                rt.block_on(scenario::pair_under_faults())
            } else {
                rt.block_on(scenario::slice_under_crashes())
            }
        });
        let result = match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .map_or_else(|| "panic".to_string(), |m| format!("panic: {m}"))),
        };
        SeedResult {
            seed,
            wall_secs: wall.elapsed().as_secs_f64(),
            result,
        }
    }

    /// Run one seed, twice when `twice`: two runs whose outcomes differ are a failure.
    fn run_checked(seed: u64, limit: Duration, twice: bool) -> SeedResult {
        let first = run_seed(seed, limit);
        if !twice {
            return first;
        }
        let second = run_seed(seed, limit);
        let as_json = |r: &SeedResult| serde_json::to_string(&r.result).unwrap_or_default();
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
    ) -> ExitCode {
        // Panics are reported per seed; the default hook would print each one.
        std::panic::set_hook(Box::new(|_| {}));
        let started = fabric::rt::now();
        let next = Arc::new(AtomicU64::new(first));
        let end = first + seeds;
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                let (next, tx) = (next.clone(), tx.clone());
                // Each worker thread runs its own simulation runtime, one seed at a
                // time: threads sit outside every simulation, so this is deterministic.
                thread::spawn(move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || tx.send(run_checked(seed, limit, twice)).is_err() {
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
                    "\nFAILED seed {}: {reason}\n  replay: {}",
                    r.seed,
                    replay_command(r.seed)
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
        let report = summarize(results, started.elapsed().as_secs_f64());
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

    fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
        if sorted.is_empty() {
            return None;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        Some(sorted[i])
    }

    fn summarize(results: Vec<SeedResult>, wall_secs: f64) -> Report {
        let mut faults_by_type = BTreeMap::new();
        let mut outages = Vec::new();
        let mut sim_secs = 0.0;
        let mut failures = Vec::new();
        for r in &results {
            match &r.result {
                Ok(o) => {
                    sim_secs += o.sim_secs;
                    outages.extend(&o.outages_ms);
                    for f in &o.faults {
                        *faults_by_type.entry(f.name().to_string()).or_insert(0) += 1;
                    }
                }
                Err(reason) => failures.push(Failure {
                    seed: r.seed,
                    reason: reason.clone(),
                    replay: replay_command(r.seed),
                }),
            }
        }
        outages.sort_unstable();
        let worker_wall_secs: f64 = results.iter().map(|r| r.wall_secs).sum();
        Report {
            scenario: "slice_under_crashes (even seeds), pair_under_faults (odd seeds)",
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
            results,
        }
    }

    fn markdown(r: &Report) -> String {
        let mut s = format!(
            "# Chaos run: {}\n\n| | |\n|---|---|\n| seeds run | {} |\n| seeds failed | {} |\n| simulated time | {:.0} s |\n| wall time | {:.1} s ({:.1} s of worker time) |\n| sim / wall (per worker) | {:.0}x |\n",
            r.scenario, r.seeds_run, r.seeds_failed, r.sim_secs, r.wall_secs, r.worker_wall_secs, r.sim_per_wall
        );
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
            "| pair: longest time two SEs held the VIP | {} ms (at most {} ms allowed) |\n",
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

    fn replay(seed: u64) -> ExitCode {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_writer(std::io::stderr)
            .init();
        let r = run_seed(seed, Duration::from_secs(300));
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
