//! Parsing of human-written sizes (`"4MiB"`, `"512kB"`, `1024`) and durations (`"30s"`, `"250ms"`, `"1m"`).

use std::time::Duration;

/// Parses a byte size: a plain integer, or a number followed by a unit.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones (`kB`, `MB`, `GB`, `TB`) powers of
/// 1000; `B` or no unit means bytes. Units are case-insensitive. Fractions are allowed (`"1.5GiB"`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("size `{text}` is negative: expected e.g. `4MiB` or `65536`"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number.replace('_', "");
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: expected B, kB, KiB, MB, MiB, GB, GiB, TB or TiB"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size: expected a number such as `4MiB` or `65536`"
        ));
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("size `{text}` is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: expected a number such as `4MiB` or `65536`"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size `{text}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: a number followed by `ms`, `s`, `m` or `h` (`"30s"`, `"1.5s"`, `"250ms"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "duration `{text}` is negative: expected e.g. `30s`, `250ms`, `5m` or `1h`"
        ));
    }
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{text}` is not a duration: expected a number and a unit, e.g. `30s`, `250ms`, `5m` or `1h`"
        ));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "duration `{text}` has no unit: expected e.g. `30s`, `250ms`, `5m` or `1h`"
            ));
        }
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`: expected ms, s, m or h"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: expected e.g. `30s` or `250ms`"))?;
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| format!("duration `{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("4 mib"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1_000kB"), Ok(1_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("-1s").is_err_and(|e| e.contains("negative")));
        assert!(parse_duration("fast").is_err_and(|e| e.contains("not a duration")));
        assert!(parse_duration("99999999999999999999h").is_err_and(|e| e.contains("out of range")));
        assert!(parse_size("-4MiB").is_err_and(|e| e.contains("negative")));
    }
}
