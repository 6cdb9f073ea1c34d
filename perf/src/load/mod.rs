//! The load harness: drives `events-router serve` as a black box over HTTP and as a child
//! process, against the strict mock destinations, and reports throughput, accept latency,
//! delivery (by id), memory and CPU.
//!
//! [`run`] does one run: start the mocks (ids-only retention) with the chosen latency, start
//! the router with a fresh data directory pointed at them (unless [`Options::target`] names a
//! running one), wait for `GET /ready`, drive the load ([`drive`]), wait until every confirmed
//! event has reached every destination the routing table names ([`verify`]), SIGTERM the
//! router and report ([`Report`]). With [`Options::backlog`] both destinations answer 503
//! while the load runs; the harness then measures the router holding the backlog, clears the
//! faults and measures the drain.
//!
//! ```no_run
//! # async fn demo() -> Result<(), perf::load::Error> {
//! use perf::load::{Options, run};
//! let report = run(Options { events: Some(2000), batch: 50, no_latency: true, ..Options::default() }).await?;
//! assert_eq!(report.lost, 0);
//! println!("{}", report.table());
//! # Ok(()) }
//! ```

pub mod client;
pub mod drive;
pub mod events;
pub mod procfs;
mod report;
pub mod router;
pub mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;

pub use events::Mix;
pub use report::{
    BacklogFigures, DestinationFigures, LatencyFigures, LoadFigures, MachineFigures, Report,
    RouterFigures, SustainedFigures, TimelineRow,
};
pub use router::ExitInfo;

use crate::mock::{Destination, Fault, MockConfig, MockDestinations, MockHandle, Retention};
use drive::{Plan, Progress};
use procfs::ProcSample;

/// Options of a run (also the `perf` command line).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "perf",
    version,
    about = "Load harness for the events router: starts mock PostHog/Mixpanel and `events-router serve`, drives load, verifies delivery by id, reports throughput, latency, memory and CPU."
)]
pub struct Options {
    /// Events to send [default: 10000; unlimited with --duration].
    #[arg(long)]
    pub events: Option<u64>,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    /// Events per request (1: a bare event object; more: a JSON array).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Latency the mock destinations add to every request, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub latency_ms: u64,
    /// No added downstream latency (raw mode); overrides --latency-ms.
    #[arg(long)]
    pub no_latency: bool,
    /// Offered rate in events/s (open loop, latency measured from each request's intended
    /// send time); without it the load is closed-loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run for this many seconds (with --events too: whichever ends first).
    #[arg(long)]
    pub duration: Option<f64>,
    /// A running router's base URL (e.g. http://127.0.0.1:8080); no child process is started.
    /// Delivery is checked against this run's mocks, so that router must point at them
    /// (see --mock-posthog-listen, --mock-mixpanel-listen) unless --no-verify.
    #[arg(long)]
    pub target: Option<String>,
    /// The events-router binary [default: <workspace>/target/release/events-router].
    #[arg(long)]
    pub router: Option<PathBuf>,
    /// A config file passed to the router as --config.
    #[arg(long)]
    pub router_config: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Which events to send.
    #[arg(long, value_enum, default_value_t = Mix::Default)]
    pub mix: Mix,
    /// Backlog mode: both destinations answer 503 while the events are loaded; then the
    /// router's memory and disk are measured with the whole backlog held, the faults are
    /// cleared and the drain is measured (with --target: the drain only).
    #[arg(long)]
    pub backlog: bool,
    /// Backlog mode: how long to hold the full backlog before clearing the faults, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub backlog_hold: f64,
    /// How long to wait for delivery after the load, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub verify_timeout: f64,
    /// Do not check delivery (with --target pointing at a router not wired to these mocks).
    #[arg(long)]
    pub no_verify: bool,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Where the mock PostHog listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_posthog_listen: SocketAddr,
    /// Where the mock Mixpanel listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_mixpanel_listen: SocketAddr,
    /// Keep the run directory (router data and log) instead of deleting it.
    #[arg(long)]
    pub keep_data: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self::parse_from(["perf"])
    }
}

impl Options {
    /// The downstream latency of the mocks.
    pub fn latency(&self) -> Duration {
        if self.no_latency {
            Duration::ZERO
        } else {
            Duration::from_millis(self.latency_ms)
        }
    }

    /// The event limit in force.
    pub fn event_limit(&self) -> Option<u64> {
        match (self.events, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(10_000),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Options(m.to_owned()));
        if self.workers == 0 {
            return bad("--workers must be at least 1");
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1");
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return bad("--rate must be a positive number of events/s");
        }
        if self
            .duration
            .is_some_and(|d| !(d.is_finite() && d > 0.0 && d < 1e7))
        {
            return bad("--duration must be a positive number of seconds");
        }
        for (name, v) in [
            ("--verify-timeout", self.verify_timeout),
            ("--request-timeout", self.request_timeout),
            ("--backlog-hold", self.backlog_hold),
        ] {
            if !(v.is_finite() && (0.0..1e7).contains(&v)) {
                return Err(Error::Options(format!(
                    "{name} must be a number of seconds"
                )));
            }
        }
        Ok(())
    }
}

/// Why a run could not be done (a run that loses events is a [`Report`] with `lost > 0`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The router binary does not exist.
    #[error(
        "events-router binary not found at {}: build it with `cargo build --release -p router-bin` \
         (or `cargo build -p router-bin` for target/debug), or pass --router PATH",
        .0.display()
    )]
    RouterMissing(PathBuf),
    /// The router did not start or did not become ready.
    #[error("{0}")]
    RouterStart(String),
    /// The target URL is unusable.
    #[error("--target: {0}")]
    Target(String),
    /// An I/O error of the harness itself (temp dir, sockets).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A reading of the router and its data directory.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    proc: Option<ProcSample>,
    data_bytes: u64,
}

fn snapshot(pid: Option<u32>, data_dir: Option<&Path>) -> Snapshot {
    Snapshot {
        proc: pid.and_then(procfs::sample),
        data_bytes: data_dir.map(procfs::dir_bytes).unwrap_or(0),
    }
}

#[derive(Debug, Default)]
struct SamplerState {
    peak_rss_kib: u64,
    peak_data_bytes: u64,
    timeline: Vec<TimelineRow>,
}

/// Samples the router every 100 ms (peaks) and records a timeline row every second.
struct Sampler {
    state: Arc<Mutex<SamplerState>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn spawn(
        pid: Option<u32>,
        data_dir: Option<PathBuf>,
        mock: Arc<MockHandle>,
        progress: Arc<Progress>,
        start: Instant,
    ) -> Self {
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_row = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let s = snapshot(pid, data_dir.as_deref());
                let mut st = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(p) = s.proc {
                    st.peak_rss_kib = st.peak_rss_kib.max(p.rss_kib).max(p.hwm_kib);
                }
                st.peak_data_bytes = st.peak_data_bytes.max(s.data_bytes);
                let now = start.elapsed();
                if now >= next_row {
                    next_row += Duration::from_secs(1);
                    let stats = mock.stats();
                    st.timeline.push(TimelineRow {
                        t: now.as_secs_f64(),
                        sent: progress.sent.load(Ordering::Relaxed),
                        accepted: progress.accepted.load(Ordering::Relaxed),
                        delivered_posthog: stats.posthog.unique_events,
                        delivered_mixpanel: stats.mixpanel.unique_events,
                        backlog: progress
                            .accepted_posthog
                            .load(Ordering::Relaxed)
                            .saturating_sub(stats.posthog.unique_events)
                            + progress
                                .accepted_mixpanel
                                .load(Ordering::Relaxed)
                                .saturating_sub(stats.mixpanel.unique_events),
                        rss_mib: s.proc.map(|p| kib_to_mib(p.rss_kib)),
                        cpu_seconds: s.proc.map(|p| p.cpu_secs),
                        data_bytes: s.data_bytes,
                    });
                }
            }
        });
        Self { state, stop, task }
    }

    async fn finish(self) -> SamplerState {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *state)
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn say(opts: &Options, message: impl AsRef<str>) {
    if !opts.quiet {
        eprintln!("perf: {}", message.as_ref());
    }
}

/// Does one run; see the module docs.
pub async fn run(opts: Options) -> Result<Report, Error> {
    opts.validate()?;
    let mock = MockDestinations::start(MockConfig {
        posthog_listen: opts.mock_posthog_listen,
        mixpanel_listen: opts.mock_mixpanel_listen,
        latency: opts.latency(),
        retention: Retention::IdsOnly,
        ..MockConfig::default()
    })
    .await?;
    let mock = Arc::new(mock);
    say(
        &opts,
        format!(
            "mock PostHog at {}, mock Mixpanel at {}, latency {:?}",
            mock.posthog_url(),
            mock.mixpanel_url(),
            opts.latency()
        ),
    );
    if opts.backlog {
        mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
        mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
    }
    let run_dir = tempfile::Builder::new().prefix("perf-run-").tempdir()?;
    let mut router = None;
    let mut binary = None;
    let (addr, path) = match &opts.target {
        Some(url) => {
            let (addr, base) = client::resolve(url).await.map_err(Error::Target)?;
            (addr, format!("{base}/collect"))
        }
        None => {
            let bin = opts
                .router
                .clone()
                .unwrap_or_else(|| router::default_binary("release"));
            let started = router::RouterProcess::start(
                &bin,
                opts.router_config.as_deref(),
                run_dir.path(),
                &mock,
                Duration::from_secs(60),
            )
            .await?;
            say(
                &opts,
                format!(
                    "router {} (pid {}) ready on {}, data in {}",
                    bin.display(),
                    started.pid,
                    started.addr,
                    started.data_dir.display()
                ),
            );
            let addr = started.addr;
            binary = Some(bin);
            router = Some(started);
            (addr, "/collect".to_owned())
        }
    };
    let pid = router.as_ref().map(|r| r.pid);
    let data_dir = router.as_ref().map(|r| r.data_dir.clone());
    let at_ready = snapshot(pid, data_dir.as_deref());

    let plan = Plan {
        addr,
        path,
        workers: opts.workers,
        batch: opts.batch,
        events: opts.event_limit(),
        duration: opts.duration.map(Duration::from_secs_f64),
        rate: opts.rate,
        timeout: Duration::from_secs_f64(opts.request_timeout),
    };
    say(
        &opts,
        format!(
            "driving {} events ({} workers, batch {}, {})",
            plan.events
                .map_or("unlimited".to_owned(), |n| n.to_string()),
            plan.workers,
            plan.batch,
            match (plan.rate, plan.duration) {
                (Some(r), _) => format!("open loop at {r} events/s"),
                (None, Some(d)) => format!("closed loop for {d:?}"),
                (None, None) => "closed loop".to_owned(),
            }
        ),
    );
    let progress = Arc::new(Progress::default());
    let harness_cpu_start = procfs::sample(std::process::id()).map_or(0.0, |p| p.cpu_secs);
    let loadavg_start = procfs::loadavg();
    let busy_start = procfs::machine_busy_secs();
    let load_start = Instant::now();
    let sampler = Sampler::spawn(
        pid,
        data_dir.clone(),
        mock.clone(),
        progress.clone(),
        load_start,
    );
    let outcome = drive::drive(plan, events::Generator::new(opts.mix), progress.clone()).await;
    let at_load_end = snapshot(pid, data_dir.as_deref());
    let stats_at_load_end = mock.stats();
    let load_wall = load_start.elapsed().as_secs_f64();
    let busy_cores = busy_start
        .zip(procfs::machine_busy_secs())
        .map(|(a, b)| (b - a) / load_wall.max(1e-9));
    let harness_load_cpu =
        procfs::sample(std::process::id()).map_or(0.0, |p| p.cpu_secs) - harness_cpu_start;
    let router_load_cpu =
        at_load_end.proc.map_or(0.0, |p| p.cpu_secs) - at_ready.proc.map_or(0.0, |p| p.cpu_secs);
    let machine = MachineFigures {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        loadavg_start,
        loadavg_end: procfs::loadavg(),
        busy_cores,
        other_cores: busy_cores
            .map(|b| (b - (harness_load_cpu + router_load_cpu) / load_wall.max(1e-9)).max(0.0)),
    };
    say(
        &opts,
        format!(
            "load done: {} of {} events accepted in {:.2} s; errors {:?}",
            outcome.events_accepted,
            outcome.events_sent,
            outcome
                .finished
                .saturating_duration_since(outcome.started)
                .as_secs_f64(),
            outcome.errors
        ),
    );

    let mut backlog = None;
    let mut drain_start = None;
    if opts.backlog {
        tokio::time::sleep(Duration::from_secs_f64(opts.backlog_hold)).await;
        let held = snapshot(pid, data_dir.as_deref());
        let cleared_at = Instant::now();
        mock.clear_faults();
        say(&opts, "backlog held; faults cleared, draining");
        drain_start = Some(cleared_at);
        backlog = Some((held, cleared_at));
    }

    let delivery = if opts.no_verify {
        None
    } else {
        say(&opts, "waiting for delivery");
        Some(
            verify::wait(
                &mock,
                &outcome.accepted,
                &outcome.unconfirmed,
                Duration::from_secs_f64(opts.verify_timeout),
            )
            .await,
        )
    };
    let at_end = snapshot(pid, data_dir.as_deref());
    let sampled = sampler.finish().await;
    let harness_cpu =
        procfs::sample(std::process::id()).map_or(0.0, |p| p.cpu_secs) - harness_cpu_start;
    let exit = match router {
        Some(r) => Some(r.terminate(Duration::from_secs(60)).await),
        None => None,
    };
    let log_tail = if exit.as_ref().is_some_and(|e| !e.clean)
        || delivery.as_ref().is_some_and(|d| !d.complete)
    {
        router::tail(&run_dir.path().join("router.log"), 20)
    } else {
        String::new()
    };
    let final_stats = mock.stats();
    if let Ok(mock) = Arc::try_unwrap(mock) {
        mock.shutdown().await;
    }
    let run_dir_path = if opts.keep_data {
        let kept = run_dir.keep();
        say(&opts, format!("run directory kept at {}", kept.display()));
        Some(kept)
    } else {
        None
    };

    let report = report::build(report::Inputs {
        opts: &opts,
        binary,
        pid,
        outcome: &outcome,
        load_start,
        delivery: delivery.as_ref(),
        drain_start,
        at_ready,
        at_load_end,
        at_end,
        backlog,
        stats_at_load_end: &stats_at_load_end,
        final_stats: &final_stats,
        sampled,
        exit,
        harness_cpu,
        machine,
        log_tail,
        run_dir: run_dir_path,
    });
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")?;
    }
    Ok(report)
}
