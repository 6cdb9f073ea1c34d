//! The report of a run: figures, the table printed on stdout, and (via serde) the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::drive::Outcome;
use super::router::ExitInfo;
use super::verify::{Delivery, IdCheck};
use super::{Options, SamplerState, Snapshot, kib_to_mib};
use crate::mock::Stats;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The options of the run.
    pub options: Options,
    /// `closed-loop` or `open-loop`.
    pub mode: String,
    /// Load figures.
    pub load: LoadFigures,
    /// Accept latency of the 200 answers (request sent, or intended, to answer read).
    pub latency_ms: LatencyFigures,
    /// Failed requests by HTTP status or error kind.
    pub errors: BTreeMap<String, u64>,
    /// Delivery per destination (absent with `--no-verify`).
    pub delivery: BTreeMap<String, DestinationFigures>,
    /// Whether delivery was checked.
    pub verified: bool,
    /// Whether every confirmed event reached every destination it was routed to.
    pub delivery_complete: bool,
    /// Confirmed events missing at a destination (summed over destinations).
    pub lost: u64,
    /// The router process (absent with `--target`).
    pub router: Option<RouterFigures>,
    /// Backlog mode figures.
    pub backlog: Option<BacklogFigures>,
    /// Delivery keeping up while the load ran (from the timeline; loads of 3 s or more).
    pub sustained: Option<SustainedFigures>,
    /// CPU seconds the harness itself (load generator plus mocks) used during the run.
    pub harness_cpu_seconds: f64,
    /// The machine while the load ran: how quiet it was.
    pub machine: MachineFigures,
    /// One row a second from the start of the load.
    pub timeline: Vec<TimelineRow>,
    /// The last lines of the router's log when something went wrong.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub router_log_tail: String,
    /// The kept run directory (`--keep-data`).
    pub run_dir: Option<PathBuf>,
}

/// Load figures.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200 with every event accepted.
    pub requests_ok: u64,
    /// Events sent.
    pub events_sent: u64,
    /// Events confirmed.
    pub events_accepted: u64,
    /// From the first send to the last answer.
    pub seconds: f64,
    /// Confirmed events per second.
    pub accepted_per_sec: f64,
    /// Requests answered 200 per second.
    pub requests_per_sec: f64,
    /// Open loop: the offered rate.
    pub offered_per_sec: Option<f64>,
    /// Open loop: the most a request was sent after its intended time (generator saturation).
    pub max_schedule_lag_ms: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyFigures {
    /// Answers measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Delivery to one destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationFigures {
    /// The id check.
    #[serde(flatten)]
    pub ids: IdCheck,
    /// Seconds from the first send until every expected id had arrived.
    pub complete_after_seconds: Option<f64>,
    /// Expected events / `complete_after_seconds` (backlog mode: over the drain, from when
    /// the faults were cleared).
    pub delivered_per_sec: Option<f64>,
    /// Confirmed events not yet delivered when the load ended.
    pub backlog_at_load_end: u64,
    /// Requests the destination received (every status).
    pub requests: u64,
    /// Request bodies received, in bytes.
    pub bytes_received: u64,
    /// Requests by status.
    pub requests_by_status: BTreeMap<u16, u64>,
}

/// The router process.
#[derive(Debug, Clone, Serialize)]
pub struct RouterFigures {
    /// The binary.
    pub binary: Option<PathBuf>,
    /// Its pid.
    pub pid: Option<u32>,
    /// Peak resident memory (VmHWM, and the highest VmRSS sampled), MiB.
    pub peak_rss_mib: f64,
    /// Resident memory when ready, before any load, MiB.
    pub rss_ready_mib: Option<f64>,
    /// Resident memory when the load ended, MiB.
    pub rss_load_end_mib: Option<f64>,
    /// Resident memory after delivery, MiB.
    pub rss_end_mib: Option<f64>,
    /// CPU seconds (user + system) from ready to the end of delivery.
    pub cpu_seconds: f64,
    /// CPU seconds during the load alone.
    pub cpu_seconds_load: f64,
    /// Average cores used during the load (`cpu_seconds_load / load seconds`).
    pub cpu_cores_load: f64,
    /// Bytes under the data directory when the load ended.
    pub data_bytes_load_end: u64,
    /// Largest size of the data directory sampled.
    pub data_bytes_peak: u64,
    /// Bytes under the data directory at the end.
    pub data_bytes_end: u64,
    /// How it ended after SIGTERM.
    pub exit: Option<ExitInfo>,
}

/// Backlog mode: the router holding every event while both destinations answer 503.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogFigures {
    /// Events held (confirmed while the destinations were down).
    pub events: u64,
    /// Resident memory with the whole backlog held, MiB.
    pub rss_held_mib: Option<f64>,
    /// Peak resident memory up to then, MiB.
    pub peak_rss_held_mib: Option<f64>,
    /// Bytes under the data directory with the backlog held.
    pub data_bytes_held: u64,
    /// Seconds from clearing the faults until every destination had everything.
    pub drain_seconds: Option<f64>,
    /// Delivered events (summed over destinations) per second of drain.
    pub drain_per_sec: Option<f64>,
    /// Seconds from clearing the faults to the first delivery: the router's retry backoff
    /// (it grows over a long outage, up to `delivery.backoff_cap_ms`).
    pub first_delivery_after_seconds: Option<f64>,
    /// Delivered events per second from the first delivery to the last.
    pub drain_per_sec_after_first: Option<f64>,
}

/// The machine during the load, to tell a quiet run from a contended one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineFigures {
    /// Logical CPUs.
    pub cpus: usize,
    /// 1-minute load average before the load.
    pub loadavg_start: Option<f64>,
    /// 1-minute load average after the load.
    pub loadavg_end: Option<f64>,
    /// Cores all processes kept busy during the load.
    pub busy_cores: Option<f64>,
    /// Cores kept busy by processes other than the router and this harness during the load
    /// (other work on the machine competing with the run).
    pub other_cores: Option<f64>,
}

/// Whether delivery kept up during the load: rates over the timeline rows from 1 s into
/// the load to its end, counting (event, destination) pairs.
#[derive(Debug, Clone, Serialize)]
pub struct SustainedFigures {
    /// The window, in seconds.
    pub window_seconds: f64,
    /// Confirmed (event, destination) pairs per second in the window.
    pub accepted_pairs_per_sec: f64,
    /// Delivered pairs per second in the window.
    pub delivered_pairs_per_sec: f64,
    /// Undelivered pairs at the start of the window.
    pub backlog_start: u64,
    /// Undelivered pairs at the end of the window.
    pub backlog_end: u64,
    /// The largest backlog sampled in the window.
    pub backlog_max: u64,
}

fn sustained(timeline: &[TimelineRow], load_secs: f64) -> Option<SustainedFigures> {
    let rows: Vec<&TimelineRow> = timeline
        .iter()
        .filter(|r| r.t >= 0.9 && r.t <= load_secs + 0.05)
        .collect();
    let (first, last) = (rows.first()?, rows.last()?);
    let window = last.t - first.t;
    if window < 1.5 {
        return None;
    }
    let delivered = |r: &TimelineRow| r.delivered_posthog + r.delivered_mixpanel;
    let accepted = |r: &TimelineRow| r.backlog + delivered(r);
    Some(SustainedFigures {
        window_seconds: window,
        accepted_pairs_per_sec: accepted(last).saturating_sub(accepted(first)) as f64 / window,
        delivered_pairs_per_sec: delivered(last).saturating_sub(delivered(first)) as f64 / window,
        backlog_start: first.backlog,
        backlog_end: last.backlog,
        backlog_max: rows.iter().map(|r| r.backlog).max().unwrap_or(0),
    })
}

/// One timeline row.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    /// Seconds from the start of the load.
    pub t: f64,
    /// Events sent.
    pub sent: u64,
    /// Events confirmed.
    pub accepted: u64,
    /// Distinct events PostHog has.
    pub delivered_posthog: u64,
    /// Distinct events Mixpanel has.
    pub delivered_mixpanel: u64,
    /// Confirmed (event, destination) pairs not yet delivered.
    pub backlog: u64,
    /// Router resident memory, MiB.
    pub rss_mib: Option<f64>,
    /// Router CPU seconds so far.
    pub cpu_seconds: Option<f64>,
    /// Bytes under the data directory.
    pub data_bytes: u64,
}

pub(super) struct Inputs<'a> {
    pub(super) opts: &'a Options,
    pub(super) binary: Option<PathBuf>,
    pub(super) pid: Option<u32>,
    pub(super) outcome: &'a Outcome,
    pub(super) load_start: Instant,
    pub(super) delivery: Option<&'a Delivery>,
    pub(super) drain_start: Option<Instant>,
    pub(super) at_ready: Snapshot,
    pub(super) at_load_end: Snapshot,
    pub(super) at_end: Snapshot,
    pub(super) backlog: Option<(Snapshot, Instant)>,
    pub(super) stats_at_load_end: &'a Stats,
    pub(super) final_stats: &'a Stats,
    pub(super) sampled: SamplerState,
    pub(super) exit: Option<ExitInfo>,
    pub(super) harness_cpu: f64,
    pub(super) machine: MachineFigures,
    pub(super) log_tail: String,
    pub(super) run_dir: Option<PathBuf>,
}

fn latency(h: &Histogram<u64>) -> LatencyFigures {
    if h.is_empty() {
        return LatencyFigures::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencyFigures {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

pub(super) fn build(i: Inputs<'_>) -> Report {
    let o = i.outcome;
    let load_secs = o
        .finished
        .saturating_duration_since(o.started)
        .as_secs_f64();
    let per_sec = |n: u64| {
        if load_secs > 0.0 {
            n as f64 / load_secs
        } else {
            0.0
        }
    };
    let load = LoadFigures {
        requests: o.requests,
        requests_ok: o.requests_ok,
        events_sent: o.events_sent,
        events_accepted: o.events_accepted,
        seconds: load_secs,
        accepted_per_sec: per_sec(o.events_accepted),
        requests_per_sec: per_sec(o.requests_ok),
        offered_per_sec: i.opts.rate,
        max_schedule_lag_ms: o.max_schedule_lag.as_secs_f64() * 1000.0,
    };
    let mut delivery = BTreeMap::new();
    let mut lost = 0;
    if let Some(d) = i.delivery {
        for (k, name) in super::verify::DESTINATIONS.iter().enumerate() {
            let ids = d.checks[k].clone();
            lost += ids.missing;
            let stats_end = i.final_stats.of(dest(k));
            let complete_after =
                d.complete_at[k].map(|t| t.saturating_duration_since(i.load_start).as_secs_f64());
            let rate_base = match i.drain_start {
                Some(start) => {
                    d.complete_at[k].map(|t| t.saturating_duration_since(start).as_secs_f64())
                }
                None => complete_after,
            };
            let delivered_per_sec = rate_base
                .filter(|s| *s > 0.0)
                .map(|s| ids.expected as f64 / s);
            let delivered_at_end = i.stats_at_load_end.of(dest(k)).unique_events;
            delivery.insert(
                (*name).to_owned(),
                DestinationFigures {
                    backlog_at_load_end: (o.accepted[k].len() as u64)
                        .saturating_sub(delivered_at_end),
                    ids,
                    complete_after_seconds: complete_after,
                    delivered_per_sec,
                    requests: stats_end.requests,
                    bytes_received: stats_end.bytes_received,
                    requests_by_status: stats_end.requests_by_status.clone(),
                },
            );
        }
    }
    let delivery_complete = i.delivery.is_some_and(|d| d.complete);
    let cpu = |s: &Snapshot| s.proc.map_or(0.0, |p| p.cpu_secs);
    let rss = |s: &Snapshot| s.proc.map(|p| kib_to_mib(p.rss_kib));
    let router = i.pid.map(|_| {
        let load_cpu = cpu(&i.at_load_end) - cpu(&i.at_ready);
        let peak_kib = [i.at_end, i.at_load_end]
            .iter()
            .filter_map(|s| s.proc.map(|p| p.hwm_kib.max(p.rss_kib)))
            .chain([i.sampled.peak_rss_kib])
            .max()
            .unwrap_or(0);
        RouterFigures {
            binary: i.binary.clone(),
            pid: i.pid,
            peak_rss_mib: kib_to_mib(peak_kib),
            rss_ready_mib: rss(&i.at_ready),
            rss_load_end_mib: rss(&i.at_load_end),
            rss_end_mib: rss(&i.at_end),
            cpu_seconds: cpu(&i.at_end) - cpu(&i.at_ready),
            cpu_seconds_load: load_cpu,
            cpu_cores_load: if load_secs > 0.0 {
                load_cpu / load_secs
            } else {
                0.0
            },
            data_bytes_load_end: i.at_load_end.data_bytes,
            data_bytes_peak: i
                .sampled
                .peak_data_bytes
                .max(i.at_load_end.data_bytes)
                .max(i.at_end.data_bytes),
            data_bytes_end: i.at_end.data_bytes,
            exit: i.exit.clone(),
        }
    });
    let backlog = i.backlog.map(|(held, cleared)| {
        let drain = i.delivery.and_then(|d| {
            d.complete_at
                .iter()
                .map(|t| t.map(|t| t.saturating_duration_since(cleared).as_secs_f64()))
                .collect::<Option<Vec<f64>>>()
                .map(|v| v.into_iter().fold(0.0, f64::max))
        });
        let pairs = (o.accepted[0].len() + o.accepted[1].len()) as u64;
        let first = i
            .delivery
            .and_then(|d| d.first_progress)
            .map(|t| t.saturating_duration_since(cleared).as_secs_f64());
        BacklogFigures {
            events: o.events_accepted,
            rss_held_mib: rss(&held),
            peak_rss_held_mib: held.proc.map(|p| kib_to_mib(p.hwm_kib)),
            data_bytes_held: held.data_bytes,
            drain_seconds: drain,
            drain_per_sec: drain.filter(|s| *s > 0.0).map(|s| pairs as f64 / s),
            first_delivery_after_seconds: first,
            drain_per_sec_after_first: drain
                .zip(first)
                .map(|(d, f)| d - f)
                .filter(|s| *s > 0.0)
                .map(|s| pairs as f64 / s),
        }
    });
    Report {
        options: i.opts.clone(),
        mode: if i.opts.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        }
        .to_owned(),
        load,
        latency_ms: latency(&o.latency),
        errors: o.errors.clone(),
        delivery,
        verified: i.delivery.is_some(),
        delivery_complete,
        lost,
        router,
        backlog,
        harness_cpu_seconds: i.harness_cpu,
        machine: i.machine,
        sustained: sustained(&i.sampled.timeline, load_secs),
        timeline: i.sampled.timeline,
        router_log_tail: i.log_tail,
        run_dir: i.run_dir,
    }
}

fn dest(k: usize) -> crate::mock::Destination {
    if k == 0 {
        crate::mock::Destination::Posthog
    } else {
        crate::mock::Destination::Mixpanel
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// Whether the run passed: delivery checked (or skipped on purpose) and nothing lost.
    pub fn passed(&self) -> bool {
        self.lost == 0 && (!self.verified || self.delivery_complete)
    }

    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let o = &self.options;
        let _ = writeln!(
            t,
            "run           {} | {} workers | batch {} | mix {} | downstream latency {} ms{}",
            self.mode,
            o.workers,
            o.batch,
            o.mix
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned()),
            o.latency().as_millis(),
            if o.backlog {
                " | backlog (destinations down during load)"
            } else {
                ""
            }
        );
        let l = &self.load;
        let _ = writeln!(
            t,
            "load          {} events sent, {} accepted in {:.3} s ({} requests, {} ok)",
            l.events_sent, l.events_accepted, l.seconds, l.requests, l.requests_ok
        );
        let _ = writeln!(
            t,
            "accepted      {:.0} events/s ({:.0} requests/s){}",
            l.accepted_per_sec,
            l.requests_per_sec,
            l.offered_per_sec.map_or(String::new(), |r| format!(
                " | offered {r:.0} events/s, max schedule lag {:.2} ms",
                l.max_schedule_lag_ms
            ))
        );
        let m = &self.latency_ms;
        let _ = writeln!(
            t,
            "latency (ms)  p50 {:.3} | p95 {:.3} | p99 {:.3} | p99.9 {:.3} | max {:.3} | mean {:.3} (n={})",
            m.p50, m.p95, m.p99, m.p999, m.max, m.mean, m.count
        );
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(t, "errors        {errors}");
        if self.verified {
            for (name, d) in &self.delivery {
                let _ = writeln!(
                    t,
                    "{:<13} expected {} | delivered {} | missing {} | duplicates {} | unexpected {} | complete after {} s | {} events/s | backlog at load end {} | {} requests",
                    name,
                    d.ids.expected,
                    d.ids.delivered,
                    d.ids.missing,
                    d.ids.duplicates,
                    d.ids.unexpected,
                    opt(d.complete_after_seconds, 3),
                    opt(d.delivered_per_sec, 0),
                    d.backlog_at_load_end,
                    d.requests
                );
            }
        } else {
            let _ = writeln!(t, "delivery      not checked (--no-verify)");
        }
        if let Some(r) = &self.router {
            let _ = writeln!(
                t,
                "router RSS    peak {:.1} MiB | ready {} | load end {} | end {} (MiB)",
                r.peak_rss_mib,
                opt(r.rss_ready_mib, 1),
                opt(r.rss_load_end_mib, 1),
                opt(r.rss_end_mib, 1)
            );
            let _ = writeln!(
                t,
                "router CPU    {:.2} s total | {:.2} s during load = {:.2} cores",
                r.cpu_seconds, r.cpu_seconds_load, r.cpu_cores_load
            );
            let _ = writeln!(
                t,
                "data dir      {} at load end | peak {} | end {}",
                mib(r.data_bytes_load_end),
                mib(r.data_bytes_peak),
                mib(r.data_bytes_end)
            );
            let exit = match &r.exit {
                Some(e) if e.clean => format!("exited 0 {:.2} s after SIGTERM", e.seconds),
                Some(e) => format!(
                    "NOT clean: code {:?}, signal {:?}, {:.2} s after SIGTERM",
                    e.code, e.signal, e.seconds
                ),
                None => "-".to_owned(),
            };
            let _ = writeln!(t, "shutdown      {exit}");
        }
        if let Some(b) = &self.backlog {
            let _ = writeln!(
                t,
                "backlog       {} events held | RSS {} MiB (peak {}) | data {} | drain {} s = {} deliveries/s (first delivery {} s after the faults cleared; {} deliveries/s from then)",
                b.events,
                opt(b.rss_held_mib, 1),
                opt(b.peak_rss_held_mib, 1),
                mib(b.data_bytes_held),
                opt(b.drain_seconds, 2),
                opt(b.drain_per_sec, 0),
                opt(b.first_delivery_after_seconds, 2),
                opt(b.drain_per_sec_after_first, 0)
            );
        }
        if let Some(s) = &self.sustained {
            let _ = writeln!(
                t,
                "sustained     over {:.1} s of load: accepted {:.0} | delivered {:.0} (event, destination) pairs/s | backlog {} -> {} (max {})",
                s.window_seconds,
                s.accepted_pairs_per_sec,
                s.delivered_pairs_per_sec,
                s.backlog_start,
                s.backlog_end,
                s.backlog_max
            );
        }
        let _ = writeln!(
            t,
            "harness CPU   {:.2} s (load generator + mocks)",
            self.harness_cpu_seconds
        );
        let m = &self.machine;
        let _ = writeln!(
            t,
            "machine       {} CPUs | load average {} -> {} | busy {} cores during the load, {} of them other processes{}",
            m.cpus,
            opt(m.loadavg_start, 2),
            opt(m.loadavg_end, 2),
            opt(m.busy_cores, 2),
            opt(m.other_cores, 2),
            if m.other_cores.is_some_and(|c| c > 0.25) {
                " (CONTENDED: figures understate the router)"
            } else {
                ""
            }
        );
        let verdict = if !self.verified {
            "NOT VERIFIED".to_owned()
        } else if self.passed() {
            "PASS: every accepted event delivered".to_owned()
        } else {
            format!("FAIL: {} accepted events lost", self.lost)
        };
        let _ = writeln!(t, "result        {verdict}");
        if !self.router_log_tail.is_empty() {
            let _ = writeln!(t, "router log (tail):\n{}", self.router_log_tail);
        }
        t
    }
}
