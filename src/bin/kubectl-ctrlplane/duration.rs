//! Durations: Go's syntax (`30m`, `2h`, `1h30m`, `1.5h`), as kubectl's own
//! flags take them, and the short human form kubectl prints in AGE columns.
//! Pure.

use std::time::Duration;

/// Parses a Go duration such as `90s`, `30m`, `2h`, `1h30m` or `1.5h`
/// (units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). Negative durations are
/// refused: nothing here goes back in time.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid =
        |why: &str| format!("invalid duration {text:?}: {why} (for example 90s, 30m, 2h or 1h30m)");
    let mut rest = text.trim();
    if let Some(unsigned) = rest.strip_prefix('+') {
        rest = unsigned;
    }
    if rest.starts_with('-') {
        return Err(invalid("it must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid("expected a number"));
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return Err(invalid("a unit is missing")),
            other => return Err(invalid(&format!("unknown unit {other:?}"))),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid("number too large"))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| invalid("too large"))?;
        // The fraction, digit by digit, as Go does it (exact to the nanosecond).
        let mut scale = unit_nanos;
        for digit in fraction.chars() {
            scale /= 10;
            nanos += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| invalid("too large"))?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| invalid("too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// A duration the way a user would write it back: `1h30m`, `2h`, `45s`.
pub fn format_go(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || out.is_empty() {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

/// The short form kubectl prints in AGE columns (`45s`, `5m30s`, `3h`,
/// `2d4h`), following Kubernetes' `duration.HumanDuration`.
pub fn human(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = hours / 24 % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("30m", 1800.0),
            ("2h", 7200.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("90s", 90.0),
            ("1h0m30s", 3630.0),
            ("500ms", 0.5),
            ("1m1.5s", 61.5),
            ("+5m", 300.0),
            ("0", 0.0),
            ("720h", 2_592_000.0),
            ("1500us", 0.0015),
            (".5m", 30.0),
        ];
        for (text, seconds) in cases {
            assert_eq!(parse(text).unwrap().as_secs_f64(), seconds, "{text}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "empty"),
            ("5", "unit is missing"),
            ("5x", "unknown unit \"x\""),
            ("1d", "unknown unit \"d\""),
            ("-5m", "negative"),
            ("h", "expected a number"),
            ("1.2.3s", "expected a number"),
            ("1h30", "unit is missing"),
            ("99999999999999999999999h", "too large"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("1h30m"), "the error shows an example: {err}");
        }
    }

    #[test]
    fn durations_print_back_in_go_syntax() {
        assert_eq!(format_go(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_go(Duration::from_secs(7200)), "2h");
        assert_eq!(format_go(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_go(Duration::ZERO), "0s");
    }

    #[test]
    fn human_durations_match_kubectl() {
        let s = chrono::Duration::seconds;
        assert_eq!(human(s(-5)), "<invalid>");
        assert_eq!(human(s(0)), "0s");
        assert_eq!(human(s(119)), "119s");
        assert_eq!(human(s(120)), "2m");
        assert_eq!(human(s(330)), "5m30s");
        assert_eq!(human(s(1800)), "30m");
        assert_eq!(human(s(3 * 3600 + 60)), "3h1m");
        assert_eq!(human(s(10 * 3600)), "10h");
        assert_eq!(human(s(52 * 3600)), "2d4h");
        assert_eq!(human(s(30 * 86400)), "30d");
        assert_eq!(human(s(3 * 365 * 86400 + 86400)), "3y1d");
        assert_eq!(human(s(10 * 365 * 86400)), "10y");
    }
}
