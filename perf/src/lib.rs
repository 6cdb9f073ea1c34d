//! Load generator and mock destinations for the events router (black-box, over HTTP).
//!
//! This crate depends on no router crate, so the router's crates can use it as a
//! dev-dependency. [`mock`] holds strict mock PostHog and Mixpanel servers with fault
//! injection; the `mock-destinations` binary runs them stand-alone. [`load`] is the load
//! harness behind the `perf` binary.
#![forbid(unsafe_code)]

pub mod load;
pub mod mock;
