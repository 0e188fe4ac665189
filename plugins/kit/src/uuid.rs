//! UUIDv4 strings: checking them, and making one from content.

use sha2::{Digest, Sha256};

/// Whether `text` is a UUID in its canonical form (RFC 9562: 8-4-4-4-12 hex
/// digits, lower or upper case), of any version and variant.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36 && bytes.iter().enumerate().all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { *b == b'-' } else { b.is_ascii_hexdigit() })
}

/// Whether `text` is a UUID of version 4 and the RFC's variant, in its
/// canonical form (lower or upper case hex).
pub fn is_uuid_v4(text: &str) -> bool {
    is_uuid(text) && text.as_bytes()[14] == b'4' && matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// A UUIDv4-formatted id taken from the SHA-256 of `content`: the same
/// content always gets the same id, so a replayed event can be deduplicated.
pub fn from_content(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crate::hex(&b);
    [&hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]].join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_derives() {
        assert!(is_uuid_v4("6f1c2d3e-4b5a-4c7d-8e9f-0123456789ab"));
        assert!(!is_uuid_v4("6f1c2d3e-4b5a-1c7d-8e9f-0123456789ab"), "version 1");
        assert!(!is_uuid_v4("6f1c2d3e-4b5a-4c7d-7e9f-0123456789ab"), "bad variant");
        assert!(!is_uuid_v4("6f1c2d3e4b5a4c7d8e9f0123456789ab"));
        assert!(is_uuid("6f1c2d3e-4b5a-1c7d-fe9f-0123456789AB"), "any version and variant");
        assert!(!is_uuid("6f1c2d3e-4b5a-1c7d-fe9f-0123456789A"));
        let id = from_content(b"{\"event\":\"x\"}");
        assert!(is_uuid_v4(&id), "{id}");
        assert_eq!(id, from_content(b"{\"event\":\"x\"}"));
        assert_ne!(id, from_content(b"{\"event\":\"y\"}"));
    }
}
