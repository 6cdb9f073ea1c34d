//! The `events-router` binary.
fn main() {}
