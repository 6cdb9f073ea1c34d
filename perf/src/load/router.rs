//! The router under test as a child process: `events-router serve` with a fresh data
//! directory, pointed at the mock destinations.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};

use super::Error;
use super::client;
use crate::mock::MockHandle;

/// The workspace root: the parent of this crate's manifest directory when it still exists,
/// else the nearest ancestor of the current directory holding a `Cargo.toml` with a
/// `[workspace]` table.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(parent) = manifest.parent() {
        if parent.join("Cargo.toml").is_file() {
            return parent.to_path_buf();
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in cwd.ancestors() {
        let toml = dir.join("Cargo.toml");
        if std::fs::read_to_string(&toml).is_ok_and(|t| t.contains("[workspace]")) {
            return dir.to_path_buf();
        }
    }
    cwd
}

/// `<target>/<profile>/events-router`, where `<target>` is `CARGO_TARGET_DIR` or the
/// workspace's `target`.
pub fn default_binary(profile: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join(profile).join("events-router")
}

/// The router binary of `profile` (`debug` or `release`), built with
/// `cargo build [--release] -p router-bin` when it does not exist yet; an error says why it
/// cannot be had, or that it has no `serve` command (a stale build: rebuild it).
pub fn ensure_binary(profile: &str) -> Result<PathBuf, String> {
    let binary = default_binary(profile);
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "-p", "router-bin"]);
        if profile == "release" {
            command.arg("--release");
        }
        let status = command
            .status()
            .map_err(|e| format!("cannot run cargo to build {}: {e}", binary.display()))?;
        if !status.success() || !binary.is_file() {
            return Err(format!(
                "`cargo build{} -p router-bin` failed ({status}); {} is needed",
                if profile == "release" {
                    " --release"
                } else {
                    ""
                },
                binary.display()
            ));
        }
    }
    let help = std::process::Command::new(&binary)
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !help.success() {
        return Err(format!(
            "{} has no `serve` command (a stale build?): rebuild it with `cargo build{} -p router-bin`",
            binary.display(),
            if profile == "release" {
                " --release"
            } else {
                ""
            }
        ));
    }
    Ok(binary)
}

/// How the router process ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Whether it exited 0 after SIGTERM within the grace period.
    pub clean: bool,
    /// Seconds from SIGTERM to exit.
    pub seconds: f64,
}

/// A running `events-router serve`.
#[derive(Debug)]
pub struct RouterProcess {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
}

/// A free loopback port (bound and released; the router binds it right after).
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl RouterProcess {
    /// Starts `binary serve` with its data directory and log under `run_dir`, the
    /// destinations' environment pointing at `mock`, and waits until `GET /ready` answers 200.
    /// The port is picked ahead (bound, then released), so another socket may take it first:
    /// when the router then fails to bind, it is started again on a new port.
    pub async fn start(
        binary: &Path,
        config: Option<&Path>,
        run_dir: &Path,
        mock: &MockHandle,
        ready_timeout: Duration,
    ) -> Result<Self, Error> {
        if !binary.is_file() {
            return Err(Error::RouterMissing(binary.to_path_buf()));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(binary, config, run_dir, mock, ready_timeout).await {
                Err(Error::RouterStart(message))
                    if attempt < 4 && message.to_ascii_lowercase().contains("in use") =>
                {
                    let _ = std::fs::remove_dir_all(run_dir.join("data"));
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        binary: &Path,
        config: Option<&Path>,
        run_dir: &Path,
        mock: &MockHandle,
        ready_timeout: Duration,
    ) -> Result<Self, Error> {
        let data_dir = run_dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = run_dir.join("router.log");
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mock_config = mock.config();
        command
            .env("POSTHOG_API_KEY", &mock_config.posthog.api_key)
            .env("POSTHOG_HOST", mock.posthog_url())
            .env("MIXPANEL_TOKEN", &mock_config.mixpanel.token)
            .env("MIXPANEL_API_HOST", mock.mixpanel_url())
            .env_remove("ROUTER_LISTEN")
            .env_remove("ROUTER_DATA_DIR")
            .env_remove("ROUTER_CONFIG")
            .env_remove("MIXPANEL_PROJECT")
            .env_remove("MIXPANEL_API_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| Error::RouterStart(format!("could not run {}: {e}", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        let mut router = Self {
            child,
            pid,
            addr,
            data_dir,
            log_path,
        };
        router.wait_ready(ready_timeout).await?;
        Ok(router)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::RouterStart(format!(
                    "events-router exited with {status} before it was ready; its log ({}):\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 30)
                )));
            }
            if let Ok((200, _)) = client::get(self.addr, "/ready", Duration::from_secs(1)).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::RouterStart(format!(
                    "events-router did not answer 200 on GET /ready within {timeout:?}; its log ({}):\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `grace` for it to exit (then SIGKILL).
    pub async fn terminate(mut self, grace: Duration) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        if let Ok(Some(status)) = self.child.try_wait() {
            return ExitInfo {
                code: status.code(),
                signal: status.signal(),
                clean: false,
                seconds: 0.0,
            };
        }
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let waited = if sent {
            tokio::time::timeout(grace, self.child.wait()).await.ok()
        } else {
            None
        };
        match waited {
            Some(Ok(status)) => ExitInfo {
                code: status.code(),
                signal: status.signal(),
                clean: status.code() == Some(0),
                seconds: start.elapsed().as_secs_f64(),
            },
            _ => {
                let _ = self.child.kill().await;
                let status = self.child.wait().await.ok();
                ExitInfo {
                    code: status.and_then(|s| s.code()),
                    signal: status.and_then(|s| s.signal()),
                    clean: false,
                    seconds: start.elapsed().as_secs_f64(),
                }
            }
        }
    }
}
