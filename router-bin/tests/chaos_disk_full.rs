//! Disk full (RELIABILITY.md §E5), end to end: the data directory on a small tmpfs that the
//! test mounts (root only; otherwise it says "skipped: cannot mount tmpfs: <reason>" and
//! passes), filled with events while both destinations are down until the router answers 503;
//! then a SIGKILL and a restart on the full disk, space returned by deleting a filler file,
//! filled again, and space returned by delivery. Also the same with a small
//! `[buffer] max_total_bytes` on an ordinary disk. Asserts: 503 (never 500) and `/ready` 503
//! while full, no accepted event lost, normal service once there is room again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    FAST_DELIVERY, Ledger, Outcome, Router, assert_conserved, batch, http_client, wait_delivered,
    write_config,
};
use perf::mock::{Destination, Fault, MockConfig, MockDestinations, MockHandle};

/// A tmpfs mounted on a temporary directory; unmounted on drop, even when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs { dir })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a child not reaped yet): detach it now, freed when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Available bytes of the file system holding `p`.
fn available(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Posts batches of `per` events until the router answers 503 (and then `extra` more
/// requests, which must all be 503 too). Returns how many requests were accepted.
async fn fill(ledger: &Ledger, url: &str, per: usize, seq: &mut u64, max_requests: usize) -> usize {
    let client = http_client();
    let mut ok = 0;
    for _ in 0..max_requests {
        let events = batch(*seq, per, 400);
        *seq += per as u64;
        match ledger.post(&client, url, &events, false).await {
            Outcome::Status(200) => ok += 1,
            Outcome::Status(503) => return ok,
            other => panic!("filling the buffer: {other:?} (only 200 or 503 are right)"),
        }
    }
    panic!("no 503 after {max_requests} requests of {per} events");
}

/// Fills with batches of 20 events, then with single events, until even those get 503.
/// Returns the accepted (batches, singles).
async fn fill_up(ledger: &Ledger, url: &str, seq: &mut u64, max_requests: usize) -> (usize, usize) {
    let batches = fill(ledger, url, 20, seq, max_requests).await;
    let singles = fill(ledger, url, 1, seq, max_requests).await;
    (batches, singles)
}

/// While full: 503 with Retry-After and a reason, `/ready` 503, `/health` 200.
async fn assert_full(ledger: &Ledger, url: &str, what: &str) {
    let client = http_client();
    let events = batch(0, 1, 400);
    ledger.sent(&events[0].0, events[0].2);
    let r = client
        .post(format!("{url}/collect"))
        .header("content-type", "application/json")
        .body(events[0].1.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{what}");
    assert!(r.headers().contains_key("retry-after"), "{what}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap_or("").contains("full"),
        "{what}: {body}"
    );
    let r = client.get(format!("{url}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503, "{what}: ready while full");
    let r = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{what}: alive while full");
}

/// Posts one small request every 100 ms until it is accepted (or `timeout`).
async fn until_accepted(ledger: &Ledger, url: &str, seq: &mut u64, timeout: Duration) -> Duration {
    let client = http_client();
    let started = Instant::now();
    loop {
        let events = batch(*seq, 1, 0);
        *seq += 1;
        match ledger.post(&client, url, &events, false).await {
            Outcome::Status(200) => return started.elapsed(),
            Outcome::Status(503) => {}
            other => panic!("{other:?} while waiting for room"),
        }
        assert!(
            started.elapsed() < timeout,
            "no room after {timeout:?}: still 503"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn down(mock: &MockHandle) {
    mock.inject(Destination::Posthog, Fault::status(503).until_cleared());
    mock.inject(Destination::Mixpanel, Fault::status(503).until_cleared());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_loses_nothing_and_recovers() {
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(reason) => {
            println!("skipped: cannot mount tmpfs: {reason}");
            return;
        }
    };
    let data: PathBuf = fs.path().join("data");
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4 << 20]).unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    // The cap (6 MiB) is above the free space (about 4 MiB): the disk fills first. (A cap
    // over twice the room would be refused at start.)
    let config = write_config(
        conf_dir.path(),
        &format!(
            "{FAST_DELIVERY}\n[buffer]\nsegment_max_bytes = 262144\nmax_total_bytes = 6291456\ncursor_flush_interval_ms = 200\n"
        ),
    );
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    down(&mock);
    let ledger = Ledger::new();
    let mut seq = 0;

    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let (ok_batches, ok_singles) = fill_up(&ledger, &router.url, &mut seq, 2000).await;
    assert_full(&ledger, &router.url, "disk full").await;
    let free_when_full = available(fs.path());
    println!(
        "chaos_disk_full: full after {ok_batches} batches and {ok_singles} single events ({} acked), {free_when_full} bytes free",
        ledger.acked_count()
    );

    // A crash on the full disk, and a start on it.
    router.kill();
    let restarted = Instant::now();
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let start_full = restarted.elapsed();
    assert_full(&ledger, &router.url, "disk full after a restart").await;

    // Space returns: the filler is deleted.
    std::fs::remove_file(&filler).unwrap();
    let room_after_delete =
        until_accepted(&ledger, &router.url, &mut seq, Duration::from_secs(10)).await;
    let (ok_more, _) = fill_up(&ledger, &router.url, &mut seq, 4000).await;
    assert_full(&ledger, &router.url, "disk full again").await;

    // Space returns by delivery: the destinations recover, the log drains, sealed segments go.
    mock.clear_faults();
    let room_after_drain =
        until_accepted(&ledger, &router.url, &mut seq, Duration::from_secs(30)).await;
    let client = http_client();
    assert_eq!(
        client
            .get(format!("{}/ready", router.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let d = wait_delivered(&mock, &ledger, Duration::from_secs(60)).await;
    println!(
        "chaos_disk_full: restart on the full disk took {} ms; room {} ms after deleting the filler; full again after {ok_more} more batches; room {} ms after the destinations recovered; outcomes {:?}",
        start_full.as_millis(),
        room_after_delete.as_millis(),
        room_after_drain.as_millis(),
        ledger.outcomes()
    );
    println!("chaos_disk_full: {}", d.figures());
    assert_conserved(&d);
    let m = router.metrics(&client).await;
    assert!(!m.contains("status=\"500\""), "{m}");
    let (code, lines) = router.terminate();
    assert_eq!(code, Some(0), "{lines:?}");
    mock.shutdown().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_cap_answers_503_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "{FAST_DELIVERY}\n[buffer]\nsegment_max_bytes = 131072\nmax_total_bytes = 1048576\ncursor_flush_interval_ms = 200\n"
        ),
    );
    let mock = MockDestinations::start(MockConfig::default())
        .await
        .unwrap();
    down(&mock);
    let ledger = Ledger::new();
    let mut seq = 0;
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    let (ok, _) = fill_up(&ledger, &router.url, &mut seq, 1000).await;
    assert_full(&ledger, &router.url, "at the cap").await;
    let client = http_client();
    let m = router.metrics(&client).await;
    let bytes = common::metric(&m, "router_buffer_bytes").unwrap();
    assert!(bytes <= 1_048_576.0, "the log stays under its cap: {bytes}");
    // A crash at the cap, a restart at the cap.
    router.kill();
    let router = Router::builder(&data).mock(&mock).config(&config).start();
    assert_full(&ledger, &router.url, "at the cap after a restart").await;
    mock.clear_faults();
    let room = until_accepted(&ledger, &router.url, &mut seq, Duration::from_secs(30)).await;
    let d = wait_delivered(&mock, &ledger, Duration::from_secs(30)).await;
    println!(
        "chaos_disk_full/cap: 503 after {ok} batches ({} acked, log {bytes} bytes of a 1 MiB cap); room {} ms after the destinations recovered",
        ledger.acked_count(),
        room.as_millis()
    );
    println!("chaos_disk_full/cap: {}", d.figures());
    assert_conserved(&d);
    assert_eq!(router.terminate().0, Some(0));
    mock.shutdown().await;
}
