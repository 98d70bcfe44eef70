//! When to try a failed delivery again: capped exponential backoff with
//! jitter, unless the receiver said when (Retry-After). Pure: the caller
//! brings the randomness.

use std::time::{Duration, SystemTime};

/// The longest Retry-After the operator honours; a receiver asking for more
/// is retried after this long instead of holding a delivery for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A webhook's retry policy, in the units the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

/// The exponential delay after `failed_attempts` failures (1 or more):
/// base, 2*base, 4*base, ... capped, before jitter.
pub fn exponential(policy: &Policy, failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(32);
    policy
        .base
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(policy.cap)
}

/// The delay with "equal jitter": half of the exponential delay, plus a
/// random share of the other half. `jitter` is uniform in [0, 1). Spreading
/// retries keeps a receiver that comes back from being hit by every delivery
/// at once, while never retrying sooner than half the schedule.
/// A jitter outside [0, 1] counts as its nearest end, and NaN as 0.
pub fn with_jitter(delay: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let half = delay / 2;
    half.saturating_add(half.mul_f64(jitter))
}

/// How long to wait before the next attempt, or `None` when the policy's
/// attempts are used up.
pub fn next_delay(
    policy: &Policy,
    failed_attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    if failed_attempts >= policy.max_attempts {
        return None;
    }
    Some(match retry_after {
        Some(wait) => wait.min(MAX_RETRY_AFTER),
        None => with_jitter(exponential(policy, failed_attempts), jitter),
    })
}

/// Parses a Retry-After header: delay-seconds, or an HTTP-date (a date in
/// the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_schedule_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| exponential(&policy(), n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn the_last_attempt_ends_the_schedule() {
        assert!(next_delay(&policy(), 7, None, 0.5).is_some());
        assert_eq!(next_delay(&policy(), 8, None, 0.5), None);
        assert_eq!(
            next_delay(&policy(), 8, Some(Duration::from_secs(1)), 0.5),
            None
        );
    }

    #[test]
    fn retry_after_wins_and_is_bounded() {
        assert_eq!(
            next_delay(&policy(), 1, Some(Duration::from_secs(120)), 0.9),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            next_delay(&policy(), 1, Some(Duration::from_secs(10 * 24 * 3600)), 0.9),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_nan_jitter_counts_as_none() {
        // A jitter of NaN panicked: cannot convert float seconds to
        // Duration: value is either too big or NaN (clamp keeps NaN).
        let ten = Duration::from_secs(10);
        assert_eq!(with_jitter(ten, f64::NAN), Duration::from_secs(5));
        assert_eq!(with_jitter(ten, -f64::NAN), Duration::from_secs(5));
        assert_eq!(with_jitter(ten, f64::INFINITY), ten);
        assert_eq!(with_jitter(ten, -1.0), Duration::from_secs(5));
        assert_eq!(with_jitter(Duration::MAX, 1.0), Duration::MAX);
        assert_eq!(
            next_delay(&policy(), 1, None, f64::NAN),
            Some(Duration::from_millis(500))
        );
    }

    proptest! {
        /// Jitter keeps every delay within [half, full] of the schedule, and
        /// the schedule never exceeds the cap nor shrinks as failures grow.
        #[test]
        fn jitter_stays_within_the_schedule(
            base in 1u64..120,
            cap in 1u64..3600,
            failures in 1u32..60,
            jitter in 0.0f64..1.0,
        ) {
            let policy = Policy { max_attempts: 100, base: Duration::from_secs(base), cap: Duration::from_secs(cap.max(base)) };
            let full = exponential(&policy, failures);
            prop_assert!(full <= policy.cap);
            prop_assert!(exponential(&policy, failures + 1) >= full);
            let delay = next_delay(&policy, failures, None, jitter).unwrap();
            prop_assert!(delay >= full / 2 && delay <= full, "{:?} not within {:?}", delay, full);
        }
    }
}
