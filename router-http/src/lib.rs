//! HTTP ingestion server of the events router.
