//! Helpers shared by sluice plugins, with no bindings of their own (a plugin
//! generates its bindings for the world it implements):
//! - `time`: RFC 3339 timestamps to and from Unix milliseconds;
//! - `uuid`: UUIDv4 checks, and ids derived from content;
//! - `canonical`: canonical JSON (keys sorted, no insignificant white space);
//! - `sketch`: quantiles over unbounded streams in bounded memory;
//! - `distinct`: how many distinct values a stream holds, in bounded memory;
//! - `windows`: event time, its late allowance, and the summaries of window steps;
//! - `labels`: the labels an event's fields give the series it counts towards;
//! - `config_path`: a path into a stage's config, as messages write it;
//! - `names`: the names of a JSON object as it is read, to refuse one given twice;
//! - [`hex`]: bytes as lower-case hex.
//!
//! Everything here is plain Rust and is unit-tested on the host target.

pub mod body;
pub mod canonical;
pub mod config_path;
pub mod distinct;
pub mod labels;
pub mod names;
pub mod sketch;
pub mod time;
pub mod uuid;
pub mod windows;

/// Bytes as lower-case hex, two digits each.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
    }
}
