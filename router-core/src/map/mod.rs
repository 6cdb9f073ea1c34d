//! Mapping of canonical events to exactly what each destination receives.
//!
//! Records borrow from the event and serialise straight into a request body, so building a
//! batch does not copy properties. Identity fields (`uuid`, `$insert_id`, `time`) derive only
//! from the stored event, so every resend is byte-identical in them and the destinations
//! deduplicate it.

mod ids;
mod mixpanel;
mod posthog;
mod record;

pub use ids::{insert_id, insert_id_for, posthog_uuid, posthog_uuid_for};
pub use mixpanel::{IdMerge, MixpanelEndpoint, MixpanelRecord, MixpanelSettings, mixpanel_records};
pub use posthog::{PosthogSettings, posthog_record};
pub use record::{Field, Record};

/// The version reported as `$lib_version`.
pub const LIB_VERSION: &str = env!("CARGO_PKG_VERSION");
