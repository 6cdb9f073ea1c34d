//! Disk full (`ENOSPC`) below the buffer's cap: appends fail with `Full`, nothing accepted is
//! lost, the log is not poisoned, and appends succeed again once space is freed.
//!
//! Needs a small, otherwise empty file system: `BUFFER_ENOSPC_DIR` if set, else the test mounts
//! a 1 MiB tmpfs on a temporary directory (which needs root) and unmounts it afterwards; when it
//! can do neither it says so and passes without checking anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use router_sinks::buffer::{BufferError, Log, LogConfig, SyncPolicy};

/// A mounted tmpfs, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount() -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn disk_full_answers_full_and_recovers() {
    let mounted;
    let root = match std::env::var("BUFFER_ENOSPC_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => match SmallFs::mount() {
            Some(fs) => {
                mounted = fs;
                mounted.path().to_path_buf()
            }
            None => {
                println!("skipped: no BUFFER_ENOSPC_DIR and cannot mount a tmpfs");
                return;
            }
        },
    };
    let dir = root.join("buffer");
    let filler = root.join("filler");
    std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
    let config = LogConfig {
        dir: dir.clone(),
        segment_max_bytes: 64 * 1024,
        // Above what the file system can hold, so the disk fills before the cap.
        max_total_bytes: 1536 * 1024,
        sync: SyncPolicy::Always,
        destinations: vec!["a".into()],
        cursor_flush_interval_ms: 3_600_000,
    };
    let (log, _) = Log::open(config.clone()).unwrap();
    let mut accepted = 0u64;
    let err = loop {
        let batch: Vec<Bytes> = (0..8).map(|i| Bytes::from(vec![b'a' + i; 1000])).collect();
        match log.append(batch).await {
            Ok(r) => accepted += r.count,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            BufferError::Full {
                disk_full: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk is full"), "{err}");
    let m = log.metrics();
    assert!(!m.poisoned);
    assert!(m.bytes_on_disk < config.max_total_bytes);
    // Space comes back: appends go on.
    std::fs::remove_file(&filler).unwrap();
    let r = log
        .append(vec![Bytes::from_static(b"after the disk was full")])
        .await
        .unwrap();
    assert_eq!(
        r.first, accepted,
        "no sequence number was burnt by the failed write"
    );
    log.close().await.unwrap();
    let (log, report) = Log::open(config).unwrap();
    assert_eq!(report.records, accepted + 1, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
    log.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
