//! Delivery side of the events router: the durable buffer (log) and the destination sinks.

pub mod buffer;
pub mod delivery;
pub mod dlq;
