//! Shared helpers of the end-to-end tests: the `events-router serve` child process, the fast
//! delivery config, a load ledger (every id posted, every id answered 2xx, with its routing),
//! the delivery oracle against the strict mocks, a small seeded RNG, `/proc` readings.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use perf::mock::{Endpoint, MockHandle};
use serde_json::{Value, json};

/// The router binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_events-router");

/// Delivery settings that keep the tests short: small linger, millisecond backoffs, quick
/// probes of a paused destination. Append other tables after it.
pub const FAST_DELIVERY: &str = "\
[delivery]
linger_ms = 20
backoff_base_ms = 50
backoff_cap_ms = 400
pause_probe_ms = 100
pause_probe_max_ms = 400
connect_timeout_ms = 1000
request_timeout_ms = 5000
shutdown_grace_ms = 2000
";

/// Writes `toml` to `dir/router.toml` and returns the path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("router.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A running router; SIGKILLed on drop if still alive.
pub struct Router {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The listening address.
    pub addr: std::net::SocketAddr,
    stderr: Receiver<String>,
    /// Log lines up to "Listening".
    pub startup: Vec<String>,
    /// How long it took from spawn to "Listening".
    pub startup_time: Duration,
}

/// Why a router did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Every log line it wrote.
    pub lines: Vec<String>,
}

/// How to start a router.
pub struct Start<'a> {
    data_dir: &'a Path,
    mock: Option<&'a MockHandle>,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl<'a> Start<'a> {
    /// Uses the mock destinations (credentials and hosts by environment).
    pub fn mock(mut self, mock: &'a MockHandle) -> Self {
        self.mock = Some(mock);
        self
    }

    /// Uses this config file.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Bound on the time to "Listening" (default 20 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Starts it; panics with its log if it does not come up.
    pub fn start(self) -> Router {
        match self.try_start() {
            Ok(r) => r,
            Err(f) => panic!(
                "router did not start (exit {:?}):\n{}",
                f.code,
                f.lines.join("\n")
            ),
        }
    }

    /// Starts it, or says why it did not come up in time.
    // The child is waited for by `terminate`, `kill` or `Drop`.
    #[allow(clippy::zombie_processes)]
    pub fn try_start(self) -> Result<Router, StartFailure> {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(self.data_dir)
        .env("RUST_LOG", "info")
        .env_remove("ROUTER_CONFIG")
        .env_remove("ROUTER_DATA_DIR")
        .env_remove("ROUTER_LISTEN")
        .env_remove("POSTHOG_API_KEY")
        .env_remove("POSTHOG_HOST")
        .env_remove("MIXPANEL_TOKEN")
        .env_remove("MIXPANEL_API_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(m) = self.mock {
            cmd.env("POSTHOG_API_KEY", &m.config().posthog.api_key)
                .env("POSTHOG_HOST", m.posthog_url())
                .env("MIXPANEL_TOKEN", &m.config().mixpanel.token)
                .env("MIXPANEL_API_HOST", m.mixpanel_url());
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // If the test process is killed (a CI timeout), its routers die with it.
        #[allow(unsafe_code)]
        // SAFETY: prctl(2) only, between fork and exec; it allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = started + self.timeout;
        let mut startup = Vec::new();
        loop {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    startup.extend(rx.try_iter());
                    return Err(StartFailure {
                        code: status.and_then(|s| s.code()),
                        lines: startup,
                    });
                }
            };
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            startup.push(line);
            if let Some(addr) = v["fields"]["addr"].as_str() {
                if v["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("Listening")
                {
                    return Ok(Router {
                        child,
                        url: format!("http://{addr}"),
                        addr: addr.parse().unwrap(),
                        stderr: rx,
                        startup,
                        startup_time: started.elapsed(),
                    });
                }
            }
        }
    }
}

impl Router {
    /// Starts `serve` on an OS-chosen port and waits until it says where it listens.
    pub fn start(data_dir: &Path, mock: Option<&MockHandle>, extra_env: &[(&str, &str)]) -> Router {
        let mut b = Router::builder(data_dir);
        if let Some(m) = mock {
            b = b.mock(m);
        }
        for (k, v) in extra_env {
            b = b.env(k, v);
        }
        b.start()
    }

    /// A start description for `data_dir`.
    pub fn builder(data_dir: &Path) -> Start<'_> {
        Start {
            data_dir,
            mock: None,
            config: None,
            env: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, sig: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit (within `timeout`); the exit code and the log lines after start-up.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread sees EOF soon after the exit.
                std::thread::sleep(Duration::from_millis(50));
                let lines = self.stderr.try_iter().collect();
                return (status.code(), lines);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("router did not exit within {timeout:?}");
    }

    /// SIGTERM, then the exit code (within 30 s).
    pub fn terminate(self) -> (Option<i32>, Vec<String>) {
        self.sigterm();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Log lines written since start-up (or since the last call).
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Resident set size in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// Peak resident set size in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// `/metrics` text.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of /proc/PID/status in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A metric's value from Prometheus text (`name{labels}` exactly as written), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// Runs the CLI; (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env_remove("ROUTER_CONFIG")
        .env_remove("ROUTER_DATA_DIR")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A reqwest client without proxies, with a bound on every request.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

// === randomness ===

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `CHAOS_SEED` when set, else from the clock; the seed is printed.
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("{what}: CHAOS_SEED={seed}");
        Rng::new(seed)
    }

    /// A generator with this seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

// === events and their routing ===

/// Where the default routing table sends an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dests {
    /// PostHog only.
    Posthog,
    /// Mixpanel only.
    Mixpanel,
    /// Both.
    Both,
}

impl Dests {
    /// Whether PostHog gets it.
    pub fn posthog(self) -> bool {
        matches!(self, Dests::Posthog | Dests::Both)
    }

    /// Whether Mixpanel gets it.
    pub fn mixpanel(self) -> bool {
        matches!(self, Dests::Mixpanel | Dests::Both)
    }

    /// Names, as `events-router route` prints them.
    pub fn names(self) -> Vec<&'static str> {
        match self {
            Dests::Posthog => vec!["posthog"],
            Dests::Mixpanel => vec!["mixpanel"],
            Dests::Both => vec!["mixpanel", "posthog"],
        }
    }
}

/// A fresh UUIDv7 message id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An event in the router's own schema with message id `id`, of one of four kinds (by `n`):
/// Session Start (PostHog), Sign Up (Mixpanel), Sign Up with a campaign (both), and an event
/// no rule names (the Mixpanel fallback). `pad` bytes of filler in a property.
pub fn event(id: &str, n: u64, pad: usize) -> (Value, Dests) {
    let user = format!("user-{}", n % 97);
    let filler = "x".repeat(pad);
    match n % 4 {
        0 => (
            json!({"event": "Session Start", "userId": user, "messageId": id,
                   "properties": {"n": n, "pad": filler}}),
            Dests::Posthog,
        ),
        1 => (
            json!({"event": "Sign Up", "userId": user, "messageId": id,
                   "properties": {"plan": "pro", "n": n, "pad": filler}}),
            Dests::Mixpanel,
        ),
        2 => (
            json!({"event": "Sign Up", "anonymousId": format!("anon-{n}"), "messageId": id,
                   "properties": {"utm_source": "ads", "n": n, "pad": filler}}),
            Dests::Both,
        ),
        _ => (
            json!({"event": "Feature Used", "userId": user, "messageId": id,
                   "properties": {"feature": "export", "n": n, "pad": filler}}),
            Dests::Mixpanel,
        ),
    }
}

/// Checks with `events-router route` that [`event`] routes as it says.
pub fn check_event_routing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut lines = String::new();
    let mut want = Vec::new();
    for n in 0..4 {
        let (v, d) = event(&new_id(), n, 0);
        lines.push_str(&v.to_string());
        lines.push('\n');
        want.push(d);
    }
    std::fs::write(&input, lines).unwrap();
    let (code, out, err) = cli(&["route", input.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for (line, d) in out.lines().zip(&want) {
        let v: Value = serde_json::from_str(line).unwrap();
        let got: Vec<&str> = v["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(got, d.names(), "{line}");
    }
}

// === the ledger ===

/// How a POST ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered with this status.
    Status(u16),
    /// No answer (refused, reset, closed, timed out).
    NoAnswer,
}

/// Every id posted and every id answered 2xx, with its routing.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    routing: HashMap<String, Dests>,
    /// The `properties` each id was posted with.
    props: HashMap<String, Value>,
    acked: HashSet<String>,
    /// Ids of requests that got no answer (their fate is unknown to the client).
    unanswered: HashSet<String>,
    outcomes: BTreeMap<Outcome, u64>,
    latencies_ms: Vec<u64>,
}

impl Ledger {
    /// A new, empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// POSTs `events` to `/collect` (one object, or an array when there are several, or
    /// `{"batch": [...]}` when `envelope`) and records the outcome. The events count as
    /// acknowledged only on a 2xx whose `accepted` equals their number.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
        events: &[(String, Value, Dests)],
        envelope: bool,
    ) -> Outcome {
        let body = if events.len() == 1 && !envelope {
            events[0].1.to_string()
        } else {
            let arr: Vec<&Value> = events.iter().map(|e| &e.1).collect();
            if envelope {
                json!({ "batch": arr }).to_string()
            } else {
                serde_json::to_string(&arr).unwrap()
            }
        };
        {
            let mut g = self.inner.lock().unwrap();
            for (id, v, d) in events {
                g.routing.insert(id.clone(), *d);
                g.props.insert(id.clone(), v["properties"].clone());
            }
        }
        let started = Instant::now();
        let res = client
            .post(format!("{url}/collect"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let outcome = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(b) => {
                        if (200..300).contains(&status) {
                            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                            assert_eq!(
                                v["accepted"].as_u64(),
                                Some(events.len() as u64),
                                "a 2xx accepts every valid event: {v}"
                            );
                        }
                        Outcome::Status(status)
                    }
                    // The head arrived but the body did not: not an answer the client can
                    // count on.
                    Err(_) => Outcome::NoAnswer,
                }
            }
            Err(_) => Outcome::NoAnswer,
        };
        let mut g = self.inner.lock().unwrap();
        *g.outcomes.entry(outcome).or_default() += 1;
        g.latencies_ms
            .push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        match outcome {
            Outcome::Status(s) if (200..300).contains(&s) => {
                for (id, _, _) in events {
                    g.acked.insert(id.clone());
                }
            }
            Outcome::NoAnswer => {
                for (id, _, _) in events {
                    g.unanswered.insert(id.clone());
                }
            }
            Outcome::Status(_) => {}
        }
        outcome
    }

    /// Records an id acknowledged outside [`Ledger::post`] (e.g. over a raw socket).
    pub fn ack(&self, id: &str, d: Dests) {
        let mut g = self.inner.lock().unwrap();
        g.routing.insert(id.to_owned(), d);
        g.acked.insert(id.to_owned());
    }

    /// Records an id sent outside [`Ledger::post`] whose answer is not a 2xx.
    pub fn sent(&self, id: &str, d: Dests) {
        self.inner.lock().unwrap().routing.insert(id.to_owned(), d);
    }

    /// Acknowledged ids with their routing.
    pub fn acked(&self) -> Vec<(String, Dests)> {
        let g = self.inner.lock().unwrap();
        g.acked
            .iter()
            .map(|id| (id.clone(), g.routing[id]))
            .collect()
    }

    /// Number of acknowledged ids.
    pub fn acked_count(&self) -> usize {
        self.inner.lock().unwrap().acked.len()
    }

    /// Every id posted, with its routing.
    pub fn routing(&self) -> HashMap<String, Dests> {
        self.inner.lock().unwrap().routing.clone()
    }

    /// The `properties` each id was posted with.
    pub fn props(&self) -> HashMap<String, Value> {
        self.inner.lock().unwrap().props.clone()
    }

    /// Ids whose request got no answer.
    pub fn unanswered(&self) -> HashSet<String> {
        self.inner.lock().unwrap().unanswered.clone()
    }

    /// Requests by outcome.
    pub fn outcomes(&self) -> BTreeMap<Outcome, u64> {
        self.inner.lock().unwrap().outcomes.clone()
    }

    /// Requests answered with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.outcomes()
            .get(&Outcome::Status(status))
            .copied()
            .unwrap_or(0)
    }

    /// The largest request latency in ms.
    pub fn max_latency_ms(&self) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .latencies_ms
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// A batch of `n` fresh events (kinds by a counter from `first`).
pub fn batch(first: u64, n: usize, pad: usize) -> Vec<(String, Value, Dests)> {
    (0..n as u64)
        .map(|i| {
            let id = new_id();
            let (v, d) = event(&id, first + i, pad);
            (id, v, d)
        })
        .collect()
}

// === the oracle ===

/// What the mocks hold, checked against the ledger.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Acknowledged ids checked.
    pub acked: usize,
    /// Acknowledged (id, destination) pairs the routing names.
    pub expected_pairs: usize,
    /// Events PostHog accepted (copies included).
    pub posthog_events: usize,
    /// Events Mixpanel `/import` accepted (copies included).
    pub mixpanel_events: usize,
    /// Extra copies at PostHog (same uuid).
    pub posthog_duplicates: usize,
    /// Extra copies at Mixpanel (same `$insert_id`).
    pub mixpanel_duplicates: usize,
    /// Acknowledged (id, destination) pairs not delivered.
    pub missing: Vec<(String, &'static str)>,
    /// Posted ids delivered to a destination their routing does not name.
    pub unexpected: Vec<(String, &'static str)>,
    /// Delivered ids that were never posted through the ledger.
    pub foreign: usize,
    /// Copies of one id whose identity fields differ (they would not collapse).
    pub inconsistent: Vec<String>,
    /// Delivered records whose properties differ from the posted ones: (id, destination, key).
    pub payload_mismatch: Vec<(String, &'static str, String)>,
}

impl Delivered {
    /// Whether every acknowledged pair arrived.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// One line of figures.
    pub fn figures(&self) -> String {
        format!(
            "acked ids {}, expected deliveries {}, posthog events {} (duplicates {}), mixpanel events {} (duplicates {}), missing {}, misrouted {}, not posted by the test client {}, inconsistent {}, payload mismatches {}",
            self.acked,
            self.expected_pairs,
            self.posthog_events,
            self.posthog_duplicates,
            self.mixpanel_events,
            self.mixpanel_duplicates,
            self.missing.len(),
            self.unexpected.len(),
            self.foreign,
            self.inconsistent.len(),
            self.payload_mismatch.len()
        )
    }
}

/// The identity of a delivered record: what must be equal across copies.
fn identity(endpoint: Endpoint, v: &Value) -> (String, Value) {
    match endpoint {
        Endpoint::PosthogCapture => (
            v["uuid"].as_str().unwrap_or("").to_owned(),
            json!([v["event"], v["distinct_id"], v["timestamp"]]),
        ),
        _ => {
            let p = &v["properties"];
            (
                p["$insert_id"].as_str().unwrap_or("").to_owned(),
                json!([v["event"], p["distinct_id"], p["time"]]),
            )
        }
    }
}

/// Compares what the mocks accepted with the acknowledged ids. Ids that were posted but not
/// acknowledged may or may not be delivered (their requests' fate is unknown), but only
/// where their routing says.
pub fn check_delivery(mock: &MockHandle, ledger: &Ledger) -> Delivered {
    let routing = ledger.routing();
    let props = ledger.props();
    let acked = ledger.acked();
    let mut out = Delivered {
        acked: acked.len(),
        ..Delivered::default()
    };
    for (endpoint, name) in [
        (Endpoint::PosthogCapture, "posthog"),
        (Endpoint::MixpanelImport, "mixpanel"),
    ] {
        let events = mock.accepted(endpoint);
        let mut seen: HashMap<String, Value> = HashMap::new();
        let mut dups = 0;
        for v in &events {
            let (id, ident) = identity(endpoint, v);
            // Every posted property arrives with its value (the destination adds its own).
            if let Some(Value::Object(posted)) = props.get(&id) {
                for (k, want) in posted {
                    if v["properties"].get(k) != Some(want) {
                        out.payload_mismatch.push((id.clone(), name, k.clone()));
                    }
                }
            }
            match seen.get(&id) {
                Some(prev) => {
                    dups += 1;
                    if *prev != ident {
                        out.inconsistent.push(id.clone());
                    }
                }
                None => {
                    match routing.get(&id) {
                        None => out.foreign += 1,
                        Some(d) => {
                            let wanted = if name == "posthog" {
                                d.posthog()
                            } else {
                                d.mixpanel()
                            };
                            if !wanted {
                                out.unexpected.push((id.clone(), name));
                            }
                        }
                    }
                    seen.insert(id, ident);
                }
            }
        }
        if name == "posthog" {
            out.posthog_events = events.len();
            out.posthog_duplicates = dups;
        } else {
            out.mixpanel_events = events.len();
            out.mixpanel_duplicates = dups;
        }
        for (id, d) in &acked {
            let wanted = if name == "posthog" {
                d.posthog()
            } else {
                d.mixpanel()
            };
            if wanted {
                out.expected_pairs += 1;
                if !seen.contains_key(id) {
                    out.missing.push((id.clone(), name));
                }
            }
        }
    }
    out
}

/// Waits (polling) until every acknowledged id has arrived where it is routed, or `timeout`.
pub async fn wait_delivered(mock: &MockHandle, ledger: &Ledger, timeout: Duration) -> Delivered {
    let deadline = Instant::now() + timeout;
    loop {
        let d = check_delivery(mock, ledger);
        if d.complete() || Instant::now() >= deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the oracle: every acknowledged id delivered where routed, nothing delivered where
/// not routed, every copy with the posted properties, every duplicate identical in its
/// identity fields.
pub fn assert_conserved(d: &Delivered) {
    assert!(
        d.missing.is_empty(),
        "acknowledged events were not delivered ({}): first {:?}",
        d.figures(),
        &d.missing[..d.missing.len().min(10)]
    );
    assert!(
        d.unexpected.is_empty(),
        "events delivered where their routing does not send them: {:?}",
        &d.unexpected[..d.unexpected.len().min(10)]
    );
    assert!(
        d.inconsistent.is_empty(),
        "copies of one id differ in their identity fields: {:?}",
        &d.inconsistent[..d.inconsistent.len().min(10)]
    );
    assert!(
        d.payload_mismatch.is_empty(),
        "delivered properties differ from the posted ones: {:?}",
        &d.payload_mismatch[..d.payload_mismatch.len().min(10)]
    );
}

/// Every id either mock accepted (PostHog `uuid`, Mixpanel `$insert_id`).
pub fn delivered_ids(mock: &MockHandle) -> HashSet<String> {
    let mut ids: HashSet<String> = mock
        .accepted_ids(Endpoint::PosthogCapture)
        .into_iter()
        .collect();
    ids.extend(mock.accepted_ids(Endpoint::MixpanelImport));
    ids
}

/// Message ids of a dead-letter file (`data/dead-letters/<dest>.jsonl`).
pub fn dead_letter_ids(data_dir: &Path, dest: &str) -> Vec<String> {
    let path = data_dir.join("dead-letters").join(format!("{dest}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"]["messageId"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

/// Raises the soft limit of open files to at least `want` (bounded by the hard limit);
/// returns the (soft, hard) limits in force afterwards. Children inherit it.
pub fn raise_nofile(want: u64) -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return (0, 0);
        }
        if rl.rlim_cur < want {
            let mut new = rl;
            new.rlim_cur = want.min(rl.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                rl = new;
            }
        }
    }
    (rl.rlim_cur, rl.rlim_max)
}
