//! Durations as people write them in the config file and on the command
//! line: a whole number and a unit, `500ms`, `30s`, `10m`, `2h`, `1d`.

use std::time::Duration;

/// Parses `N(ms|s|m|h|d)`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let per_unit = match unit {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => Duration::ZERO,
    };
    match number.parse::<u32>() {
        Ok(n) if !per_unit.is_zero() => per_unit.checked_mul(n).ok_or_else(|| format!("{text:?} is too long")),
        _ => Err(format!("{text:?} is not a duration such as 90s, 10m, 2h or 1d")),
    }
}

/// A duration the way [`parse`] reads it, in its largest whole unit.
pub fn text(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_numbers_with_a_unit() {
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        for bad in ["10", "m", "1.5m", "-1s", "10 minutes", ""] {
            assert!(parse(bad).unwrap_err().contains("is not a duration"), "{bad}");
        }
        assert_eq!(text(Duration::from_secs(600)), "10m");
        assert_eq!(text(Duration::from_secs(90)), "90s");
        assert_eq!(text(Duration::from_millis(1500)), "1500ms");
    }
}
