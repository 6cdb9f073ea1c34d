//! Errors of starting and stopping delivery. Failures while delivering are not errors of
//! the API: they are outcomes (retry, dead letter, pause) handled by the delivery loop.

use crate::buffer::BufferError;

/// What can stop delivery from starting (or report a problem at stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A configuration value is invalid.
    #[error("invalid delivery configuration: {0}")]
    Config(String),
    /// A destination URL is not a valid absolute `http`/`https` URL.
    #[error("destination {destination:?}: invalid host {host:?}: {reason}")]
    InvalidHost {
        /// Destination name.
        destination: String,
        /// The configured host.
        host: String,
        /// Why it was refused.
        reason: String,
    },
    /// The same destination was given twice.
    #[error("destination {0:?} is configured twice")]
    DuplicateDestination(String),
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The buffer refused (unknown destination, closed log, I/O).
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// The dead-letter file could not be prepared.
    #[error(transparent)]
    DeadLetters(#[from] crate::dlq::DlqError),
    /// A file or directory (outbox) could not be prepared.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A delivery task ended abnormally (panicked or was aborted past the grace period).
    #[error("delivery task for {destination:?} failed: {reason}")]
    Task {
        /// Destination name.
        destination: String,
        /// What happened.
        reason: String,
    },
}
