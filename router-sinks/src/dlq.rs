//! Dead-letter files: where an event ends when a destination refuses it for good, when its
//! retry window runs out, or when its buffer record cannot be decoded.
//!
//! # Format
//!
//! One JSON-lines file per destination, `<data_dir>/dead-letters/<destination>.jsonl`. Each
//! line is a [`DeadLetter`]:
//!
//! ```json
//! {"time":"2025-01-28T12:00:00.000Z","destination":"mixpanel","kind":"rejected",
//!  "reason":"failed record: properties.time: ...","status":400,"body":"{...}",
//!  "event":{"messageId":"...","type":"track","event":"Sign Up",...}}
//! ```
//!
//! `event` is the canonical event exactly as stored in the buffer, so a replay sends records
//! with the same identity fields (`uuid`, `$insert_id`, `time`) and the destination
//! deduplicates any copy it already has. `body` is the destination's answer (or the failed
//! record's entry of a partial answer), cut to 1 KiB. A buffer record that could not be
//! decoded has no `event` but `raw`, its bytes in base64; it is listed but not replayed.
//!
//! # Durability and concurrency
//!
//! The delivery loop acknowledges a record to the buffer only after its dead letter is
//! written and `fdatasync`ed ([`DeadLetterWriter::append`]), so a crash between the two
//! leaves the record in the buffer (it is delivered or dead-lettered again; never lost).
//! Writers and [`replay`] serialise on an advisory lock (`dead-letters/.lock`, `flock`), and
//! writers open the file by name for every append, so a replay can move a file aside
//! atomically while the router runs.
//!
//! # Replay
//!
//! [`replay`] renames `<destination>.jsonl` to `<destination>.jsonl.replaying` (under the
//! lock), appends every replayable event to the buffer as
//! `stored::encode(event, &[destination])` (routed to that destination only), and only after
//! the buffer has made them durable puts the lines it could not replay back into
//! `<destination>.jsonl` and deletes the `.replaying` file. A crash anywhere in between leaves
//! the `.replaying` file, which the next replay picks up first: events may then be appended
//! twice, which is harmless because their ids are stable.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use router_core::{Event, Timestamp};
use serde::{Deserialize, Serialize};

use crate::buffer::{BufferError, Log};

/// Directory of the dead-letter files under the data directory.
pub const DEAD_LETTER_DIR: &str = "dead-letters";
/// Suffix of a file being replayed.
const REPLAYING_SUFFIX: &str = ".replaying";
/// Name of the lock file inside [`DEAD_LETTER_DIR`].
const LOCK_FILE: &str = ".lock";
/// Records per buffer append during a replay.
const REPLAY_CHUNK: usize = 500;

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeadLetterKind {
    /// The destination refused it (400, a failed record of a partial answer, 413 on a lone
    /// record, a `0` answer of `/engage`).
    Rejected,
    /// Its retry window ended before the destination accepted it.
    Expired,
    /// Its buffer record could not be decoded (`raw` holds the bytes).
    Corrupt,
}

impl DeadLetterKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Expired => "expired",
            DeadLetterKind::Corrupt => "corrupt",
        }
    }
}

/// One line of a dead-letter file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was dead-lettered (RFC 3339, UTC).
    pub time: String,
    /// The destination that did not take it.
    pub destination: String,
    /// Why, as a category.
    pub kind: DeadLetterKind,
    /// Why, in words (the error, the failed field, the last retry error).
    pub reason: String,
    /// The destination's HTTP status, if it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// The destination's answer (at most 1 KiB), if any.
    #[serde(default)]
    pub body: Option<String>,
    /// The canonical event as stored in the buffer (absent for corrupt records).
    #[serde(default)]
    pub event: Option<Event>,
    /// Base64 of an undecodable buffer record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl DeadLetter {
    /// A dead letter for `event`, stamped with the current time.
    pub fn new(
        destination: &str,
        kind: DeadLetterKind,
        reason: impl Into<String>,
        status: Option<u16>,
        body: Option<String>,
        event: Event,
    ) -> Self {
        DeadLetter {
            time: now_rfc3339(),
            destination: destination.to_owned(),
            kind,
            reason: reason.into(),
            status,
            body,
            event: Some(event),
            raw: None,
        }
    }

    /// A dead letter for a buffer record that could not be decoded.
    pub fn corrupt(destination: &str, reason: impl Into<String>, raw: &[u8]) -> Self {
        DeadLetter {
            time: now_rfc3339(),
            destination: destination.to_owned(),
            kind: DeadLetterKind::Corrupt,
            reason: reason.into(),
            status: None,
            body: None,
            event: None,
            raw: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
        }
    }

    /// The summary bucket of this letter: the kind, with the status when there is one
    /// (`rejected (HTTP 400)`, `expired`, `corrupt`).
    pub fn reason_key(&self) -> String {
        match self.status {
            Some(s) => format!("{} (HTTP {s})", self.kind.as_str()),
            None => self.kind.as_str().to_owned(),
        }
    }
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Errors of the dead-letter files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The buffer refused the replayed events (full, closed, I/O).
    #[error("appending replayed events to the buffer: {0}")]
    Buffer(#[from] BufferError),
    /// The destination is not one of the buffer's destinations.
    #[error("unknown destination {0:?} (not a destination of the buffer)")]
    UnknownDestination(String),
}

trait Ctx<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, DlqError>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, DlqError> {
        self.map_err(|source| DlqError::Io {
            context: f(),
            source,
        })
    }
}

/// The dead-letter directory of `data_dir`.
pub fn dead_letter_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DEAD_LETTER_DIR)
}

/// The dead-letter file of `destination`.
pub fn dead_letter_path(data_dir: &Path, destination: &str) -> PathBuf {
    dead_letter_dir(data_dir).join(format!("{destination}.jsonl"))
}

/// Creates `dir` (and its parents) if needed, syncing the parent after creating it.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// `fsync`s a directory so a created, renamed or removed entry survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Holds the advisory lock of the dead-letter directory while alive.
struct DirLock(File);

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, DlqError> {
        let path = dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        fs4::FileExt::lock(&f).ctx(|| format!("locking {}", path.display()))?;
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.0);
    }
}

/// Appends dead letters of one destination to its file, durably. Blocking.
#[derive(Debug, Clone)]
pub struct DeadLetterWriter {
    dir: PathBuf,
    path: PathBuf,
}

impl DeadLetterWriter {
    /// A writer for `destination` under `data_dir`; creates the directory.
    pub fn new(data_dir: &Path, destination: &str) -> Result<Self, DlqError> {
        let dir = dead_letter_dir(data_dir);
        ensure_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(DeadLetterWriter {
            path: dead_letter_path(data_dir, destination),
            dir,
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letters` as JSON lines and `fdatasync`s the file (and the directory when the
    /// file was created) before returning.
    pub fn append(&self, letters: &[DeadLetter]) -> Result<(), DlqError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(letters.len() * 512);
        for l in letters {
            serde_json::to_writer(&mut buf, l).map_err(|e| DlqError::Io {
                context: "encoding a dead letter".into(),
                source: io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let _lock = DirLock::acquire(&self.dir)?;
        append_durably(&self.path, &buf)
    }
}

/// Appends `bytes` to `path` (creating it), syncs it, and syncs the directory if created.
fn append_durably(path: &Path, bytes: &[u8]) -> Result<(), DlqError> {
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", path.display()))?;
    f.sync_data()
        .ctx(|| format!("syncing {}", path.display()))?;
    if created {
        if let Some(dir) = path.parent() {
            sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// What the dead-letter files of one destination hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DlqSummary {
    /// Destination name.
    pub destination: String,
    /// Dead letters (lines), including those of an interrupted replay.
    pub count: u64,
    /// Of those, the ones a replay would put back (they carry an event).
    pub replayable: u64,
    /// Count by [`DeadLetter::reason_key`] (`rejected (HTTP 400)`, `expired`, …); lines that
    /// are not valid dead letters count under `unreadable`.
    pub reasons: BTreeMap<String, u64>,
    /// Oldest and newest `time` seen.
    pub first_time: Option<String>,
    /// Newest `time` seen.
    pub last_time: Option<String>,
}

/// One line of a file: a letter, or text that is not one.
enum Line {
    Letter(Box<DeadLetter>),
    Unreadable,
}

fn read_lines(path: &Path) -> Result<Vec<(String, Line)>, DlqError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DlqError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).split(b'\n') {
        let line = line.ctx(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<DeadLetter>(&text) {
            Ok(l) => Line::Letter(Box::new(l)),
            Err(_) => Line::Unreadable,
        };
        out.push((text, parsed));
    }
    Ok(out)
}

/// The destinations that have dead-letter files (live or being replayed), sorted.
fn destinations_with_files(dir: &Path) -> Result<Vec<String>, DlqError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DlqError::Io {
                context: format!("listing {}", dir.display()),
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name
            .strip_suffix(REPLAYING_SUFFIX)
            .unwrap_or(&name)
            .strip_suffix(".jsonl");
        if let Some(stem) = stem.filter(|s| !s.is_empty()) {
            if !names.iter().any(|n| n == stem) {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn replaying_path(live: &Path) -> PathBuf {
    let mut s = live.as_os_str().to_owned();
    s.push(REPLAYING_SUFFIX);
    PathBuf::from(s)
}

/// A summary of the dead letters of every destination under `data_dir` (count, replayable
/// count, counts by reason), sorted by destination. No files means an empty list.
pub fn list(data_dir: &Path) -> Result<Vec<DlqSummary>, DlqError> {
    let dir = dead_letter_dir(data_dir);
    let mut out = Vec::new();
    for dest in destinations_with_files(&dir)? {
        let live = dead_letter_path(data_dir, &dest);
        let mut s = DlqSummary {
            destination: dest,
            ..DlqSummary::default()
        };
        for path in [replaying_path(&live), live] {
            for (_, line) in read_lines(&path)? {
                s.count += 1;
                match line {
                    Line::Letter(l) => {
                        *s.reasons.entry(l.reason_key()).or_default() += 1;
                        if l.event.is_some() {
                            s.replayable += 1;
                        }
                        if s.first_time.as_ref().is_none_or(|t| l.time < *t) {
                            s.first_time = Some(l.time.clone());
                        }
                        if s.last_time.as_ref().is_none_or(|t| l.time > *t) {
                            s.last_time = Some(l.time.clone());
                        }
                    }
                    Line::Unreadable => *s.reasons.entry("unreadable".into()).or_default() += 1,
                }
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// What [`replay`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Events appended to the buffer (or that would be).
    pub replayed: u64,
    /// Lines left in the dead-letter files afterwards (corrupt records, unreadable lines,
    /// events the buffer cannot hold as one record, dead letters written meanwhile).
    pub kept: u64,
    /// Replayed events by destination.
    pub by_destination: BTreeMap<String, u64>,
}

/// Puts dead-lettered events back into the buffer, routed to the destination that
/// dead-lettered them, for every destination or only `destination`; see the module
/// documentation for the crash-safe sequence. With `dry_run`, only counts.
///
/// Files of destinations the buffer does not know are left alone (an error when that
/// destination was asked for by name).
pub async fn replay(
    data_dir: &Path,
    log: &Log,
    destination: Option<&str>,
    dry_run: bool,
) -> Result<ReplayReport, DlqError> {
    let dir = dead_letter_dir(data_dir);
    let known = &log.config().destinations;
    let dests = match destination {
        Some(d) if !known.iter().any(|k| k == d) => {
            return Err(DlqError::UnknownDestination(d.to_owned()));
        }
        Some(d) => vec![d.to_owned()],
        None => destinations_with_files(&dir)?,
    };
    let mut report = ReplayReport::default();
    for dest in dests {
        if !known.contains(&dest) {
            tracing::warn!(destination = %dest, "Dead letters of an unknown destination left in place.");
            continue;
        }
        let live = dead_letter_path(data_dir, &dest);
        let aside = replaying_path(&live);
        if dry_run {
            for path in [&aside, &live] {
                for (_, line) in read_lines(path)? {
                    match line {
                        Line::Letter(l) if l.event.is_some() => {
                            report.replayed += 1;
                            *report.by_destination.entry(dest.clone()).or_default() += 1;
                        }
                        _ => report.kept += 1,
                    }
                }
            }
            continue;
        }
        // A file left by an interrupted replay goes first, then the live file (once: dead
        // letters written meanwhile wait for the next replay).
        let mut leftover = aside.exists();
        loop {
            if !aside.exists() {
                let _lock = DirLock::acquire(&dir)?;
                if !live.exists() {
                    break;
                }
                fs::rename(&live, &aside).ctx(|| format!("renaming {}", live.display()))?;
                sync_dir(&dir).ctx(|| format!("syncing {}", dir.display()))?;
            }
            let replayed = replay_file(&aside, &live, &dir, log, &dest).await?;
            report.replayed += replayed;
            *report.by_destination.entry(dest.clone()).or_default() += replayed;
            if !leftover {
                break;
            }
            leftover = false;
        }
        report.kept += read_lines(&live)?.len() as u64;
    }
    Ok(report)
}

/// Replays the `.replaying` file `aside` of `dest`; returns how many events it appended.
async fn replay_file(
    aside: &Path,
    live: &Path,
    dir: &Path,
    log: &Log,
    dest: &str,
) -> Result<u64, DlqError> {
    let lines = read_lines(aside)?;
    let max_record = log.config().max_record_bytes();
    let mut records = Vec::new();
    let mut kept = Vec::new();
    for (text, line) in lines {
        match line {
            Line::Letter(l) => match l.event {
                Some(e) => {
                    let rec = router_core::stored::encode(&e, &[dest]);
                    if rec.len() > max_record {
                        kept.push(text);
                    } else {
                        records.push(Bytes::from(rec));
                    }
                }
                None => kept.push(text),
            },
            Line::Unreadable => kept.push(text),
        }
    }
    let replayed = records.len() as u64;
    let mut rest = records;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(REPLAY_CHUNK));
        log.append(rest).await?;
        rest = tail;
    }
    // Everything is durable in the buffer: now the file may go.
    let _lock = DirLock::acquire(dir)?;
    if !kept.is_empty() {
        let mut buf = Vec::new();
        for k in &kept {
            buf.extend_from_slice(k.as_bytes());
            buf.push(b'\n');
        }
        append_durably(live, &buf)?;
    }
    fs::remove_file(aside).ctx(|| format!("removing {}", aside.display()))?;
    sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
    if replayed > 0 {
        tracing::info!(destination = %dest, replayed, kept = kept.len(), "Dead letters replayed into the buffer.");
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::LogConfig;
    use router_core::{Kind, Source};

    fn event(id: &str) -> Event {
        let t = Timestamp::from_millis(1_700_000_000_000).unwrap();
        Event {
            message_id: id.into(),
            kind: Kind::Track,
            name: "Sign Up".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            timestamp: t,
            received_at: t,
            properties: serde_json::json!({"plan": "pro", "x": 0.1})
                .as_object()
                .unwrap()
                .clone(),
            traits: Default::default(),
            context: Default::default(),
            integrations: Default::default(),
            source: Source::Collect,
        }
    }

    #[tokio::test]
    async fn write_list_replay_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let w = DeadLetterWriter::new(data, "mixpanel").unwrap();
        w.append(&[
            DeadLetter::new(
                "mixpanel",
                DeadLetterKind::Rejected,
                "bad",
                Some(400),
                Some("{}".into()),
                event("m1"),
            ),
            DeadLetter::new(
                "mixpanel",
                DeadLetterKind::Expired,
                "window",
                None,
                None,
                event("m2"),
            ),
            DeadLetter::corrupt("mixpanel", "not json", b"\x00garbage"),
        ])
        .unwrap();
        fs::write(dead_letter_path(data, "ghost"), b"not a dead letter\n").unwrap();

        let summary = list(data).unwrap();
        assert_eq!(summary.len(), 2);
        let ghost = &summary[0];
        assert_eq!((ghost.destination.as_str(), ghost.count), ("ghost", 1));
        assert_eq!(ghost.reasons.get("unreadable"), Some(&1));
        let mp = &summary[1];
        assert_eq!((mp.count, mp.replayable), (3, 2));
        assert_eq!(mp.reasons.get("rejected (HTTP 400)"), Some(&1));
        assert_eq!(mp.reasons.get("expired"), Some(&1));
        assert_eq!(mp.reasons.get("corrupt"), Some(&1));

        let (log, _) =
            Log::open(LogConfig::new(data.join("log"), &["mixpanel", "posthog"])).unwrap();
        let dry = replay(data, &log, None, true).await.unwrap();
        assert_eq!((dry.replayed, dry.kept), (2, 1));
        assert_eq!(list(data).unwrap()[1].count, 3, "dry run changes nothing");
        assert!(matches!(
            replay(data, &log, Some("ghost"), false).await,
            Err(DlqError::UnknownDestination(_))
        ));

        let done = replay(data, &log, Some("mixpanel"), false).await.unwrap();
        assert_eq!((done.replayed, done.kept), (2, 1));
        // The corrupt line stays; the replayed ones are gone.
        let after = list(data).unwrap();
        assert_eq!((after[1].count, after[1].replayable), (1, 0));
        assert!(!replaying_path(&dead_letter_path(data, "mixpanel")).exists());

        // The buffer holds the two events, routed to mixpanel only, byte-identical events.
        let mut reader = log.reader("mixpanel").unwrap();
        let batch = reader.try_read_batch(10, 1 << 20).unwrap();
        assert_eq!(batch.len(), 2);
        let decoded: Vec<_> = batch
            .iter()
            .map(|(_, b)| router_core::stored::decode(b).unwrap())
            .collect();
        assert_eq!(decoded[0].event, event("m1"));
        assert_eq!(decoded[1].event, event("m2"));
        assert!(decoded.iter().all(|s| s.destinations == ["mixpanel"]));
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn interrupted_replay_is_resumed() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        let w = DeadLetterWriter::new(data, "posthog").unwrap();
        w.append(&[DeadLetter::new(
            "posthog",
            DeadLetterKind::Rejected,
            "bad",
            Some(400),
            None,
            event("a"),
        )])
        .unwrap();
        // A crash after the rename: the file is aside, and a new dead letter arrived since.
        let live = dead_letter_path(data, "posthog");
        fs::rename(&live, replaying_path(&live)).unwrap();
        w.append(&[DeadLetter::new(
            "posthog",
            DeadLetterKind::Rejected,
            "bad",
            Some(400),
            None,
            event("b"),
        )])
        .unwrap();
        assert_eq!(list(data).unwrap()[0].count, 2);
        let (log, _) = Log::open(LogConfig::new(data.join("log"), &["posthog"])).unwrap();
        let r = replay(data, &log, None, false).await.unwrap();
        assert_eq!(r.replayed, 2);
        assert!(list(data).unwrap().iter().all(|s| s.count == 0));
        log.close().await.unwrap();
    }
}
