//! Pure core of the events router: the canonical event, parsers for every inbound format,
//! validation, enrichment, rule routing and mapping to PostHog and Mixpanel records.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: the caller passes the receive time
//! and an [`IdSource`](parse::IdSource). That keeps the whole pipeline property-testable and
//! benchmarkable in isolation, and usable from any Rust service.
//!
//! ```
//! use router_core::{Pipeline, CoreConfig, parse::{Ingest, SequentialIds}, time::Timestamp};
//!
//! let pipeline = Pipeline::new(&CoreConfig::default()).unwrap();
//! let mut body = br#"{"event":"Sign Up","userId":"user123"}"#.to_vec();
//! let mut ids = SequentialIds::new("m");
//! let now = Timestamp::from_millis(1_738_065_600_000).unwrap();
//! let batch = pipeline.parser().parse_collect(&mut body, &mut Ingest { received_at: now, ids: &mut ids }).unwrap();
//! let event = batch.accepted().next().unwrap();
//! let route = pipeline.router().route(event);
//! assert_eq!(pipeline.router().destination_names(&route), ["mixpanel"]);
//! assert_eq!(pipeline.router().rule_names(&route), ["product"]);
//! ```

pub mod config;
pub mod enrich;
pub mod error;
pub mod event;
pub mod map;
pub mod parse;
pub mod routing;
pub mod stored;
pub mod time;

pub use config::{CoreConfig, Limits};
pub use error::{FieldError, RequestError};
pub use event::{Event, Kind, Object, Source};
pub use routing::{Route, Router, RoutingConfig, RoutingError};
pub use time::Timestamp;

/// Parser, router and mapping settings built from one [`CoreConfig`]; build once, share.
#[derive(Debug)]
pub struct Pipeline {
    parser: parse::Parser,
    router: Router,
    posthog: map::PosthogSettings,
    mixpanel: map::MixpanelSettings,
}

impl Pipeline {
    /// Compiles a configuration; fails with the config key at fault.
    pub fn new(config: &CoreConfig) -> Result<Pipeline, RoutingError> {
        Ok(Pipeline {
            parser: parse::Parser::new(config.limits.clone(), &config.aliases),
            router: Router::new(&config.routing)?,
            posthog: config.posthog.clone(),
            mixpanel: config.mixpanel.clone(),
        })
    }

    /// The parser.
    pub fn parser(&self) -> &parse::Parser {
        &self.parser
    }

    /// The compiled routing table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// PostHog mapping settings.
    pub fn posthog(&self) -> &map::PosthogSettings {
        &self.posthog
    }

    /// Mixpanel mapping settings.
    pub fn mixpanel(&self) -> &map::MixpanelSettings {
        &self.mixpanel
    }
}
