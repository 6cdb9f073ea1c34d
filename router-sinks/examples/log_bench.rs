//! Benchmark of the durable buffer: durable appends/s and append latency (p50/p99) with 1, 16,
//! 64 and 256 concurrent producers of single ~300-byte records, plus the raw `fdatasync`
//! latency of the disk for reference.
//!
//! ```text
//! cargo run --release -p router-sinks --example log_bench -- [--seconds 3] [--runs 3] [--dir DIR]
//! ```
//!
//! Each configuration runs `--runs` times in a fresh log directory (under `--dir`, default the
//! system temp dir, which must be on the disk to measure); the medians are printed as a
//! Markdown table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use router_sinks::buffer::{Log, LogConfig, SyncPolicy};

const RECORD_BYTES: usize = 300;
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];

struct Args {
    seconds: f64,
    runs: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 3.0,
        runs: 3,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            "--dir" => a.dir = PathBuf::from(v),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Raw latency of `write` + `fdatasync` of 300 bytes at the end of a file.
fn raw_fdatasync(dir: &Path, n: usize) -> (Duration, Duration) {
    let tmp = tempfile::tempdir_in(dir).expect("tempdir");
    let mut f = std::fs::File::create(tmp.path().join("sync")).expect("create");
    let rec = vec![b'x'; RECORD_BYTES];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&rec).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

struct RunResult {
    rate: f64,
    p50: Duration,
    p99: Duration,
    group: f64,
    fsync_mean: Duration,
}

async fn run_once(dir: &Path, producers: usize, seconds: f64) -> RunResult {
    let tmp = tempfile::tempdir_in(dir).expect("tempdir");
    let config = LogConfig {
        dir: tmp.path().join("buffer"),
        segment_max_bytes: 64 * 1024 * 1024,
        max_total_bytes: 8 * 1024 * 1024 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["posthog".into(), "mixpanel".into()],
        ..LogConfig::default()
    };
    let (log, _) = Log::open(config).expect("open");
    let payload = Bytes::from(vec![b'e'; RECORD_BYTES]);
    let warmup = Duration::from_millis(300);
    let measure = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let before = Arc::new(tokio::sync::OnceCell::new());
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let log = log.clone();
        let payload = payload.clone();
        let before = before.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                if t >= measure_from {
                    before.get_or_init(|| async { log.metrics() }).await;
                }
                log.append(vec![payload.clone()]).await.expect("append");
                let done = Instant::now();
                if t >= measure_from && done <= end {
                    lat.push(done - t);
                    n += 1;
                }
            }
            (n, lat)
        }));
    }
    let mut total = 0u64;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await.expect("producer");
        total += n;
        lat.extend(l);
    }
    let after = log.metrics();
    let before = before.get().cloned().unwrap_or_default();
    log.close().await.expect("close");
    lat.sort();
    let fsyncs = after.fsyncs.saturating_sub(before.fsyncs).max(1);
    let groups = after
        .group_commits
        .saturating_sub(before.group_commits)
        .max(1);
    let records = after
        .records_appended
        .saturating_sub(before.records_appended);
    let fsync_time = after
        .fsync_duration_total
        .saturating_sub(before.fsync_duration_total);
    RunResult {
        rate: total as f64 / measure.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        group: records as f64 / groups as f64,
        fsync_mean: fsync_time / u32::try_from(fsyncs).unwrap_or(u32::MAX),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut raw50 = Vec::new();
    let mut raw99 = Vec::new();
    for _ in 0..a.runs {
        let (p50, p99) = raw_fdatasync(&a.dir, 2000);
        raw50.push(us(p50));
        raw99.push(us(p99));
    }
    println!(
        "raw write+fdatasync of {RECORD_BYTES} B in {}: p50 {:.0} us, p99 {:.0} us (median of {} runs of 2000)",
        a.dir.display(),
        median(raw50),
        median(raw99),
        a.runs
    );
    println!();
    println!(
        "| producers | durable appends/s | p50 latency | p99 latency | records per group commit | mean fdatasync |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &c in &CONCURRENCY {
        let mut rate = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut group = Vec::new();
        let mut fs = Vec::new();
        for _ in 0..a.runs {
            let r = rt.block_on(run_once(&a.dir, c, a.seconds));
            rate.push(r.rate);
            p50.push(us(r.p50));
            p99.push(us(r.p99));
            group.push(r.group);
            fs.push(us(r.fsync_mean));
        }
        println!(
            "| {c} | {:.0} | {:.0} us | {:.0} us | {:.1} | {:.0} us |",
            median(rate),
            median(p50),
            median(p99),
            median(group),
            median(fs)
        );
    }
}
