//! Durations (`"250ms"`, `"365d"`) and sizes (`"64MiB"`) as pipeline files
//! write them.

use std::time::Duration;

/// Parses a duration such as `20ms`, `5s`, `15m`, `365d` or `1h 30m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| format!("expected a duration such as \"250ms\", \"30s\" or \"365d\", found {text:?}"))
}

/// Parses a size such as `512KiB`, `64MiB`, `1GiB`, `1MB` or a plain number of bytes.
pub fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(format!("expected a size such as \"64MiB\", \"512KiB\" or \"1GiB\", found {text:?}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("expected a size such as \"64MiB\", \"512KiB\" or \"1GiB\", found {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("1MB"), Ok(1_000_000));
        assert_eq!(bytes("4096"), Ok(4096));
        assert!(bytes("64 parsecs").unwrap_err().contains("\"64 parsecs\""));
        assert!(bytes("99999999999999999999GiB").is_err());
        assert!(bytes("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert!(duration("soon").unwrap_err().contains("\"soon\""));
    }
}
