//! The Engine's timestamps (`State.StartedAt`: RFC 3339 with nanoseconds, e.g.
//! `2026-01-01T12:00:00.123456789Z`) as Unix milliseconds, so an adopted container keeps the
//! start time it really had.

/// Parses an RFC 3339 timestamp (`Z` or a `±HH:MM` offset, any fraction of a second) into
/// milliseconds since the Unix epoch. `None` for anything else, and for times before 1970
/// (Docker writes `0001-01-01T00:00:00Z` for a container that never started).
pub(crate) fn rfc3339_to_unix_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let part = s.get(from..to)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, d) in frac.bytes().take(3).enumerate() {
            if i < digits {
                millis += u64::from(d - b'0') * [100, 10, 1][i];
            }
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(i64::try_from(year).ok()?, month, day);
    let secs = days * 86_400 + i64::try_from(hour * 3600 + min * 60 + sec).ok()? - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1000)?.checked_add(millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let (month, day) = (month as i64, day as i64);
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps() {
        for (text, want) in [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2023-11-14T22:13:20.123456789Z", Some(1_700_000_000_123)),
            ("2023-11-14T22:13:20Z", Some(1_700_000_000_000)),
            ("2023-11-14T22:13:20.5Z", Some(1_700_000_000_500)),
            ("2023-11-14T23:13:20.1+01:00", Some(1_700_000_000_100)),
            ("2023-11-14T21:13:20-01:00", Some(1_700_000_000_000)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            // Never started, malformed, out of range.
            ("0001-01-01T00:00:00Z", None),
            ("", None),
            ("2023-11-14", None),
            ("2023-11-14T22:13:20", None),
            ("2023-11-14T22:13:20.Z", None),
            ("2023-13-14T22:13:20Z", None),
            ("2023-11-14T25:13:20Z", None),
            ("2023-11-14T22:13:20+0100", None),
            ("2023-1x-14T22:13:20Z", None),
            ("2023-11-14T22:13:20.1é", None),
            ("+023-11-14T22:13:20Z", None),
        ] {
            assert_eq!(rfc3339_to_unix_ms(text), want, "{text:?}");
        }
    }
}
