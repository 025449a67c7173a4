//! An open-loop HTTP/1.1 load generator for latency at a fixed rate, the
//! way wrk2 measures: requests are scheduled at fixed intervals on each
//! keep-alive connection and latency is taken from the time a request was
//! due, not when it went out, so a stall counts against every request it
//! delayed (no coordinated omission). The service time (from send) is
//! reported beside it.
//!
//!   fabric-load --url http://127.0.0.1:18090/ --rate 10000 [--connections 32]
//!               [--duration-secs 10] [--warmup-secs 2]
//!
//! Bounded: stops after warmup + duration (and at most 2 s more for replies
//! in flight). One thread: pin it with `taskset`. Prints one JSON object.
//! Timers have millisecond resolution, so sends can be up to about 1 ms late
//! and every latency includes that; compare figures from the same tool.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: f64,
    connections: usize,
    duration: Duration,
    warmup: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: fabric-load --url http://IP:PORT/PATH --rate REQ_PER_S [--connections N] \
         [--duration-secs S] [--warmup-secs S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut url = None;
    let (mut rate, mut connections, mut duration, mut warmup) = (None, 32usize, 10.0f64, 2.0f64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => url = Some(value),
            "--rate" => rate = value.parse().ok(),
            "--connections" => connections = value.parse().unwrap_or_else(|_| usage()),
            "--duration-secs" => duration = value.parse().unwrap_or_else(|_| usage()),
            "--warmup-secs" => warmup = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority.parse().unwrap_or_else(|_| usage());
    let rate: f64 = rate
        .filter(|r| *r > 0.0 && *r <= 10_000_000.0)
        .unwrap_or_else(|| usage());
    if !(1..=10_000).contains(&connections)
        || !(0.1..=3600.0).contains(&duration)
        || !(0.0..=600.0).contains(&warmup)
    {
        usage();
    }
    Args {
        addr,
        host: authority.to_string(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    errors: u64,
    late_replies: u64,
}

/// Read one response (Content-Length framing) off `s`; returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(s, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(s, buf).await?;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn connection(
    args: &Args,
    index: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> (Histogram<u64>, Histogram<u64>, Tally) {
    let mut corrected = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut service = corrected.clone();
    let mut tally = Tally::default();
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.host).into_bytes();
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let offset = interval.mul_f64(index as f64 / args.connections as f64);
    let mut stream = None;
    let mut buf = Vec::new();
    let mut k: u32 = 0;
    loop {
        let due = start + offset + interval * k;
        k += 1;
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        if stream.is_none() {
            match TcpStream::connect(args.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    buf.clear();
                }
                Err(_) => {
                    tally.errors += 1;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let sent_at = Instant::now();
        let answered = async {
            s.write_all(&request).await?;
            read_response(s, &mut buf).await
        };
        let result = tokio::time::timeout_at(end + Duration::from_secs(2), answered).await;
        let done = Instant::now();
        let counted = due >= measure_from;
        if counted {
            tally.sent += 1;
        }
        match result {
            Ok(Ok(status)) if (200..400).contains(&status) => {
                if counted {
                    tally.ok += 1;
                    let us = |d: Duration| (d.as_micros() as u64).clamp(1, 60_000_000);
                    let _ = corrected.record(us(done - due));
                    let _ = service.record(us(done - sent_at));
                }
            }
            Ok(Ok(_)) | Ok(Err(_)) => {
                if counted {
                    tally.errors += 1;
                }
                stream = None;
            }
            Err(_) => {
                tally.late_replies += 1;
                break;
            }
        }
    }
    (corrected, service, tally)
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + args.warmup;
        let end = measure_from + args.duration;
        let args = std::sync::Arc::new(args);
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| {
                let args = args.clone();
                tokio::spawn(async move { connection(&args, i, start, measure_from, end).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("a connection task panicked"));
        }
        let mut corrected = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let mut service = corrected.clone();
        let mut tally = Tally::default();
        for (c, s, t) in results {
            corrected.add(&c).expect("same bounds");
            service.add(&s).expect("same bounds");
            tally.sent += t.sent;
            tally.ok += t.ok;
            tally.errors += t.errors;
            tally.late_replies += t.late_replies;
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{{\"target_rps\": {:.0}, \"achieved_rps\": {:.0}, \"sent\": {}, \"ok\": {}, \"errors\": {}, \"late_replies\": {}, \
             \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}, \
             \"service_p50_ms\": {:.3}, \"service_p99_ms\": {:.3}}}",
            args.rate,
            tally.ok as f64 / args.duration.as_secs_f64(),
            tally.sent,
            tally.ok,
            tally.errors,
            tally.late_replies,
            ms(&corrected, 0.5),
            ms(&corrected, 0.9),
            ms(&corrected, 0.99),
            ms(&corrected, 0.999),
            corrected.max() as f64 / 1000.0,
            ms(&service, 0.5),
            ms(&service, 0.99),
        );
    });
}
