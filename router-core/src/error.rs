//! Errors: one per rejected event (naming the field), and one for a wholly bad request.

use serde::Serialize;

/// Why one event was rejected: the top-level field at fault and the reason, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The top-level field at fault (`event`, `userId`, `timestamp`, `properties`, ...); `$`
    /// stands for the event as a whole (e.g. its size).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A request that cannot be read at all; no event of it is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON (or not UTF-8).
    #[error("body is not valid JSON (at byte {offset}): {reason}")]
    InvalidJson {
        /// Byte offset where parsing stopped.
        offset: usize,
        /// The parser's description.
        reason: String,
    },
    /// The body is JSON but its shape is wrong (e.g. `batch` is not an array).
    #[error("{0}")]
    Field(FieldError),
    /// More events than the batch cap allows.
    #[error("batch: {count} events, over the cap of {max} per request")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The configured cap.
        max: usize,
    },
    /// A body larger than the configured batch byte cap.
    #[error("body is {size} bytes, over the cap of {max} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The configured cap.
        max: usize,
    },
}

impl RequestError {
    /// The field to name in an HTTP 400 answer.
    pub fn field(&self) -> &str {
        match self {
            RequestError::InvalidJson { .. } | RequestError::TooLarge { .. } => "$",
            RequestError::Field(e) => &e.field,
            RequestError::TooManyEvents { .. } => "batch",
        }
    }

    /// The reason, without the field.
    pub fn reason(&self) -> String {
        match self {
            RequestError::Field(e) => e.reason.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn field_error(field: &str, reason: impl Into<String>) -> Self {
        RequestError::Field(FieldError::new(field, reason))
    }
}
