//! Errors of the durable buffer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the durable buffer.
///
/// [`BufferError::Full`] is distinct so the HTTP server can answer 503 with `Retry-After`;
/// [`BufferError::is_retriable`] tells whether the caller may try the same operation later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    /// The log reached its size cap (`max_total_bytes`), or the disk is full below the cap;
    /// nothing was appended. Answer 503 with `Retry-After`: delivery frees space.
    #[error("buffer full: {}", full_message(*.used, *.requested, *.cap, *.disk_full))]
    Full {
        /// Bytes on disk or queued for writing when the append was refused.
        used: u64,
        /// Bytes the refused append needed (framed); 0 when the disk was full.
        requested: u64,
        /// The configured cap.
        cap: u64,
        /// The file system ran out of space (`ENOSPC`/`EDQUOT`) before the cap was reached.
        disk_full: bool,
    },
    /// One record is larger than a segment can hold.
    #[error("record too large: {len} bytes > limit of {limit} bytes")]
    RecordTooLarge {
        /// Payload length of the record.
        len: usize,
        /// Largest payload a record may have with this configuration.
        limit: usize,
    },
    /// The configuration is invalid.
    #[error("invalid buffer configuration: {0}")]
    Config(String),
    /// The size cap exceeds the free disk space by a wide margin.
    #[error(
        "buffer cap of {cap} bytes exceeds the free disk space under {} ({available} bytes available, {used} already used by the log)",
        dir.display()
    )]
    InsufficientDisk {
        /// Directory of the log.
        dir: PathBuf,
        /// Configured cap.
        cap: u64,
        /// Bytes available to this user on the file system.
        available: u64,
        /// Bytes already used by the log.
        used: u64,
    },
    /// Another process (or another `Log` in this process) holds the log directory.
    #[error("buffer directory {} is locked by another writer", .0.display())]
    Locked(PathBuf),
    /// The destination is not one of the configured destinations.
    #[error("unknown destination {0:?}")]
    UnknownDestination(String),
    /// The log was closed (or its writer stopped); no more appends or reads.
    #[error("buffer closed")]
    Closed,
    /// A write or fsync failed earlier; the log refuses writes until it is reopened
    /// (after a failed fsync the page cache state is unknown, so the only safe course is
    /// to restart and recover from what is on disk).
    #[error("buffer stopped after an I/O failure: {0}")]
    Poisoned(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the buffer was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl BufferError {
    /// Whether the same operation may succeed later without operator action
    /// (`Full`: delivery frees space; everything else needs a fix or a restart).
    pub fn is_retriable(&self) -> bool {
        matches!(self, BufferError::Full { .. })
    }

    /// Wraps an I/O error with a description of the operation.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        BufferError::Io {
            context: context.into(),
            source,
        }
    }
}

fn full_message(used: u64, requested: u64, cap: u64, disk_full: bool) -> String {
    if disk_full {
        format!("the disk is full ({used} bytes in the log, cap {cap} bytes)")
    } else {
        format!("{used} + {requested} bytes > cap of {cap} bytes")
    }
}

/// Adds context to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`BufferError::Io`] with a lazily built context.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, BufferError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, BufferError> {
        self.map_err(|e| BufferError::io(f(), e))
    }
}
