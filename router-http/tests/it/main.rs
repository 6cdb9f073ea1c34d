//! Integration tests of router-http: real sockets on 127.0.0.1:0, a real log in a tempdir.

mod abuse;
mod auth;
mod browser;
mod ingest;
mod lifecycle;
mod posthog;
mod support;
