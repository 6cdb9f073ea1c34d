//! A real server on 127.0.0.1:0 with a real log in a temporary directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use router_core::stored::{self, StoredEvent};
use router_core::{CoreConfig, Pipeline};
use router_http::{AppState, HttpConfig, ServeError, serve};
use router_sinks::buffer::{Log, LogConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub log: Log,
    /// Kept for the lifetime of the server (the log and the dead letters live in it).
    _dir: TempDir,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Starts a server with `cfg` and a default log (destinations posthog and mixpanel).
pub async fn start(cfg: HttpConfig) -> Server {
    start_with(cfg, |_| {}).await
}

/// Starts a server; `log_cfg` may change the log configuration.
pub async fn start_with(cfg: HttpConfig, log_cfg: impl FnOnce(&mut LogConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut lc = LogConfig::new(dir.path().join("buffer"), &["posthog", "mixpanel"]);
    log_cfg(&mut lc);
    let (log, _) = Log::open(lc).unwrap();
    let pipeline = Arc::new(Pipeline::new(&CoreConfig::default()).unwrap());
    let state = AppState::new(pipeline, log.clone(), dir.path(), cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        state,
        log,
        _dir: dir,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Every durable record of the log (all destinations), decoded, in append order.
    pub fn records(&self) -> Vec<StoredEvent> {
        let mut r = self.log.reader("mixpanel").unwrap();
        let mut out = Vec::new();
        loop {
            let batch = r.try_read_batch(1000, 64 << 20).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.iter().map(|(_, b)| stored::decode(b).unwrap()));
        }
    }

    /// Lines of the rejected dead-letter file.
    pub fn rejected_lines(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.state.rejected_file()) {
            Ok(s) => s
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Triggers shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> Result<(), ServeError> {
        self.trigger_shutdown();
        let h = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("serve returns")
            .unwrap()
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or 5 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

/// Reads until EOF, an error, or 5 s.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A config with small timeouts, suitable for tests.
pub fn test_config() -> HttpConfig {
    HttpConfig {
        shutdown_grace_ms: 5_000,
        ..HttpConfig::default()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
