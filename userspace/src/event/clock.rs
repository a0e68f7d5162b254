//! Event time: the kernel stamps records with CLOCK_BOOTTIME; events carry
//! wall-clock time as RFC 3339 UTC with nine fractional digits, so the
//! strings sort in time order.

use crate::sys::clock;

/// Converts CLOCK_BOOTTIME nanoseconds (what the probes stamp) to wall time.
pub struct WallClock {
    /// realtime - boottime, in ns, refreshed now and then to follow clock steps.
    offset_ns: i128,
    refreshed_at_boot_ns: u64,
}

const CLOCK_REFRESH_NS: u64 = 1_000_000_000;

impl WallClock {
    pub fn new() -> Self {
        let mut clock = Self { offset_ns: 0, refreshed_at_boot_ns: 0 };
        clock.refresh();
        clock
    }

    fn refresh(&mut self) {
        let boot = clock::boot_ns();
        self.offset_ns = clock::realtime_ns() - boot as i128;
        self.refreshed_at_boot_ns = boot;
    }

    /// Unix time in ns for a boot-time stamp.
    pub fn unix_ns(&mut self, boot_ns: u64) -> i128 {
        if boot_ns > self.refreshed_at_boot_ns + CLOCK_REFRESH_NS {
            self.refresh();
        }
        boot_ns as i128 + self.offset_ns
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// The current time as an event timestamp.
pub fn now_rfc3339() -> String {
    rfc3339(clock::realtime_ns())
}

/// RFC 3339, UTC, always nine fractional digits: `2026-11-28T00:35:04.123456789Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Every record has one: digits written in place (format! cost more
    // than a tenth of the agent's time per event at full speed).
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 9, t.nanosecond());
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix ns of an RFC 3339 time (any offset, any number of fractional
/// digits); None when it is not a valid date and time.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    // RFC 3339 lets a space stand for the `T`; events never have one.
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_826_104_000_000_123), "2026-11-28T00:35:04.000000123Z");
        for text in
            ["2026-12-31T23:59:59.999999999Z", "2000-02-29T12:07:08.000104560Z", "9999-01-01T00:00:00.100000000Z"]
        {
            assert_eq!(rfc3339(parse_rfc3339(text).unwrap()), text);
        }
    }

    #[test]
    fn parses_valid_times_only() {
        assert_eq!(parse_rfc3339("2026-11-28T00:35:04.000000123Z"), Some(1_795_826_104_000_000_123));
        assert_eq!(parse_rfc3339("2026-11-28T01:35:04+01:00"), Some(1_795_826_104_000_000_000));
        assert_eq!(parse_rfc3339("2026-13-45T99:99:99Z"), None);
        assert_eq!(parse_rfc3339("2026-11-28 00:35:04Z"), None);
    }
}
