//! Deterministic destination ids from `message_id` (API_SPECS.md §5.6).

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::is_placeholder_id;

/// Namespace of the UUIDv5 that stands in for a message id that is not a UUID.
const POSTHOG_NAMESPACE: Uuid = Uuid::from_bytes([
    0x6f, 0x0c, 0x2a, 0x4e, 0x8a, 0x55, 0x4d, 0x4b, 0x9a, 0x3e, 0x0b, 0x7e, 0x2f, 0x1d, 0x9c, 0x31,
]);

/// PostHog `uuid`: the message id itself when it is a UUID, else UUIDv5 over it.
pub fn posthog_uuid(message_id: &str) -> Uuid {
    Uuid::try_parse(message_id)
        .ok()
        .filter(|u| !u.is_nil())
        .unwrap_or_else(|| Uuid::new_v5(&POSTHOG_NAMESPACE, message_id.as_bytes()))
}

/// PostHog `uuid` of the `suffix` record derived from one message (a fan-out).
pub fn posthog_uuid_for(message_id: &str, suffix: &str) -> Uuid {
    Uuid::new_v5(
        &POSTHOG_NAMESPACE,
        format!("{message_id}:{suffix}").as_bytes(),
    )
}

fn is_insert_id_safe(s: &str) -> bool {
    (1..=36).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !is_placeholder_id(s)
}

fn sha_prefix(data: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for d in data {
        h.update(d);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in &digest[..16] {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// Mixpanel `$insert_id`: the message id when it is ≤ 36 chars of `[A-Za-z0-9-]`, else the
/// first 32 hex digits of its SHA-256.
pub fn insert_id(message_id: &str) -> String {
    if is_insert_id_safe(message_id) {
        message_id.to_owned()
    } else {
        sha_prefix(&[message_id.as_bytes()])
    }
}

/// `$insert_id` of the `suffix` record derived from one message: SHA-256 of `id:suffix`.
pub fn insert_id_for(message_id: &str, suffix: &str) -> String {
    sha_prefix(&[message_id.as_bytes(), b":", suffix.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_kept_or_derived() {
        let u = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(posthog_uuid(u).to_string(), u);
        assert_eq!(
            posthog_uuid("0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B").to_string(),
            u
        );
        let a = posthog_uuid("msg-1");
        assert_eq!(a, posthog_uuid("msg-1"));
        assert_ne!(a, posthog_uuid("msg-2"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(
            posthog_uuid("00000000-0000-0000-0000-000000000000"),
            Uuid::nil()
        );
    }

    #[test]
    fn insert_id_rules() {
        assert_eq!(insert_id("abc-123"), "abc-123");
        let long = "node-next-1700000000000-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let h = insert_id(long);
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, insert_id(long));
        assert_eq!(insert_id("null").len(), 32);
        assert_ne!(insert_id_for("a", "merge"), insert_id_for("a", "identify"));
    }
}
