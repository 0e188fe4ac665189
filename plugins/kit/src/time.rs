//! RFC 3339 timestamps (`2026-11-24T10:15:30.123Z`, `2026-11-24T11:15:30+01:00`),
//! and durations as pipeline files write them (`90s`, `15m`, `1h30m`).

/// Milliseconds since the Unix epoch of an RFC 3339 date-time, or why not.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bytes = text.as_bytes();
    let fail = || format!("expected an RFC 3339 date-time such as 2026-11-24T10:15:30Z, found {text:?}");
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') || bytes[13] != b':' || bytes[16] != b':' {
        return Err(fail());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = text.get(range).ok_or_else(fail)?;
        if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().map_err(|_| fail()) } else { Err(fail()) }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return Err(fail());
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail());
        }
        let scaled: String = fraction[..digits].chars().chain(std::iter::repeat('0')).take(3).collect();
        millis = scaled.parse::<i64>().map_err(|_| fail())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(fail());
            }
            let (h, m) = (((h1 - b'0') * 10 + (h2 - b'0')) as i64, ((m1 - b'0') * 10 + (m2 - b'0')) as i64);
            if h > 23 || m > 59 {
                return Err(fail());
            }
            if *sign == b'+' { h * 60 + m } else { -(h * 60 + m) }
        }
        _ => return Err(fail()),
    };
    // A leap second is the last second of a UTC day: 23:59:60 there.
    if second == 60 && (hour * 60 + minute - offset_minutes).rem_euclid(24 * 60) != 23 * 60 + 59 {
        return Err(fail());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// RFC 3339 in UTC with milliseconds: `2026-11-24T10:15:30.123Z`.
pub fn format_rfc3339(unix_ms: i64) -> String {
    let (days, ms_of_day) = (unix_ms.div_euclid(86_400_000), unix_ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second, millis) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Milliseconds in a duration such as `90s`, `15m`, `1h`, `1h30m` or `500ms`.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let fail = || format!("{text:?} is not a duration such as 30s, 15m, 1h or 1h30m");
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(fail());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail());
        }
        let number: i64 = rest[..digits].parse().map_err(|_| fail())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(fail()),
        };
        rest = &rest[unit_len..];
        total = number.checked_mul(unit).and_then(|ms| total.checked_add(ms)).ok_or_else(fail)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        let ms = parse_rfc3339("2026-11-24T10:15:30.123Z").unwrap();
        assert_eq!(format_rfc3339(ms), "2026-11-24T10:15:30.123Z");
        assert_eq!(parse_rfc3339("2026-11-24T11:15:30.123+01:00").unwrap(), ms);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00.5Z").unwrap() % 1000, 500);
    }

    #[test]
    fn a_leap_second_is_only_the_last_second_of_a_utc_day() {
        assert_eq!(parse_rfc3339("1998-12-31T23:59:60Z"), parse_rfc3339("1998-12-31T23:59:59Z"));
        assert!(parse_rfc3339("1998-12-31T15:59:60.123-08:00").is_ok());
        for bad in ["1998-12-31T23:58:60Z", "1998-12-31T22:59:60Z", "1998-12-31T23:59:60+01:00", "1998-12-31T23:59:61Z"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in
            ["2026-11-24", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2026-11-24T10:15:30", "yesterday", "2026-11-24T25:00:00Z", "2026-11-24T10:15:30.Z"]
        {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration_ms("15m"), Ok(900_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert!(duration_ms("15").is_err());
        assert!(duration_ms("m").is_err());
        assert!(duration_ms("3 weeks").is_err());
    }
}
