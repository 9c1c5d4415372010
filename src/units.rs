//! Human units in the config: durations like `90m` or `1h30m`, sizes like `10GiB`.

use std::time::Duration;

const SECS_PER_UNIT: &[(&str, u64)] = &[
    ("w", 7 * 86_400),
    ("d", 86_400),
    ("h", 3_600),
    ("m", 60),
    ("s", 1),
];

/// The longest duration the config takes: 100 years. Every duration is added to a clock
/// somewhere (`Instant`, a set's creation time); a bound keeps those sums from overflowing.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses `30s`, `90m`, `1h30m`, `7d`, `2w`: one or more `<integer><unit>` terms, units `s m h d w`,
/// at most [`MAX_DURATION_SECS`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration '{text}': expected terms like 30s, 90m, 1h30m, 7d, 2w");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = &rest[digits..digits + units];
        let secs = SECS_PER_UNIT
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, secs)| *secs)
            .ok_or_else(bad)?;
        total = number
            .checked_mul(secs)
            .and_then(|term| total.checked_add(term))
            .filter(|total| *total <= MAX_DURATION_SECS)
            .ok_or_else(|| format!("duration '{text}' is too large (at most 100 years)"))?;
        rest = &rest[digits + units..];
    }
    Ok(Duration::from_secs(total))
}

/// `time` plus `duration`, or the end of time when that does not fit.
pub fn after(
    time: chrono::DateTime<chrono::Utc>,
    duration: Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| time.checked_add_signed(delta))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// Formats a duration the way `parse_duration` reads it, largest units first (`5400s` → `1h30m`).
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, unit) in SECS_PER_UNIT {
        if secs >= *unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

const BYTES_PER_UNIT: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `512MiB`, `10GiB`, `20GB`, `4096B`: an integer and a unit (binary `KiB MiB GiB TiB`,
/// decimal `KB MB GB TB`, or `B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size '{text}': expected an integer and a unit like 512MiB, 10GiB, 20GB")
    };
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = trimmed[..digits].parse().map_err(|_| bad())?;
    let unit = trimmed[digits..].trim_start();
    let multiplier = BYTES_PER_UNIT
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|(_, bytes)| *bytes)
        .ok_or_else(bad)?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

/// Formats a size exactly, in the largest binary unit that divides it (`10737418240` → `10GiB`).
pub fn format_size(bytes: u64) -> String {
    for (name, unit) in BYTES_PER_UNIT
        .iter()
        .filter(|(name, _)| name.ends_with("iB"))
    {
        if bytes >= *unit && bytes.is_multiple_of(*unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// A short human reading of a byte count for tables (`1.5GiB`), not meant to be parsed back.
pub fn human_size(bytes: u64) -> String {
    let mut value = bytes as f64;
    for name in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return if name == "B" {
                format!("{bytes}B")
            } else {
                format!("{value:.1}{name}")
            };
        }
        value /= 1024.0;
    }
    format!("{value:.1}TiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse() {
        let table = [
            ("30s", 30),
            ("90m", 5400),
            ("1h30m", 5400),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1d12h", 129_600),
            ("0s", 0),
        ];
        for (text, secs) in table {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in ["", "90", "m", "1.5h", "-1h", "1y", "1h 30m", "10 minutes"] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(&format!("'{text}'")), "{err}");
        }
        assert!(parse_duration("99999999999999999w").is_err());
        // Past 100 years, though it fits in a u64: added to an Instant it used to panic.
        let err = parse_duration("30000000000000w").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        assert_eq!(
            parse_duration("5200w"),
            Ok(Duration::from_secs(5200 * 7 * 86_400))
        );
        assert!(parse_duration("5215w").is_err());
    }

    #[test]
    fn sizes_parse() {
        let table = [
            ("10GiB", 10 << 30),
            ("512MiB", 512 << 20),
            ("20GB", 20_000_000_000),
            ("1kib", 1024),
            ("4096B", 4096),
            ("1 TiB", 1 << 40),
        ];
        for (text, bytes) in table {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for text in ["", "GiB", "10", "1.5GiB", "10XB", "-1GiB", "99999999999TiB"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }

    #[test]
    fn formatting_examples() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1_000_000), "1000000B");
        assert_eq!(human_size(1536 << 20), "1.5GiB");
        assert_eq!(human_size(100), "100B");
    }

    proptest! {
        #[test]
        fn duration_round_trips(secs in 0u64..=MAX_DURATION_SECS) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn size_round_trips(bytes in 0u64..u64::MAX / 2) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
