//! When a queued message stops being retried: `retry.max_attempts` failed attempts, or
//! `retry.max_age` since it was queued. Both drainers (the embedded log's and JetStream's) ask
//! here, so the rule and the dead letter's reason read the same on both backends. Pure: the
//! caller passes the attempts, the age and what the last attempt got. Must not know queues,
//! senders or the upstream.

use std::time::Duration;

use crate::config::Retry;

/// The dead letter's reason when the message is given up, else `None`. `attempts` counts the
/// failed attempts so far (0 before the first one); `last` says what the last one got (the
/// reply code and text, or the error).
pub(crate) fn give_up(retry: &Retry, attempts: u32, age: Duration, last: &str) -> Option<String> {
    let last = if last.is_empty() { "no attempt" } else { last };
    let shown = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    if retry.max_attempts > 0 && attempts >= retry.max_attempts {
        return Some(format!(
            "gave up after {attempts} attempts (retry.max_attempts {}), queued {} ago; last: {last}",
            retry.max_attempts,
            shown(age)
        ));
    }
    match retry.max_age {
        Some(max_age) if age >= max_age => Some(format!(
            "gave up after waiting {} (retry.max_age {}), {attempts} attempts; last: {last}",
            shown(age),
            humantime::format_duration(max_age)
        )),
        _ => None,
    }
}

/// How long to wait before the next attempt: the backoff's `wait`, but never past the moment
/// the message reaches `max_age` (so it is given up then, not a whole backoff later).
pub(crate) fn next_wait(retry: &Retry, wait: Duration, age: Duration) -> Duration {
    match retry.max_age {
        Some(max_age) => wait.min(max_age.saturating_sub(age)),
        None => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(max_attempts: u32, max_age: Option<Duration>) -> Retry {
        Retry {
            max_attempts,
            max_age,
            ..Retry::default()
        }
    }

    #[test]
    fn unlimited_by_default() {
        let r = Retry::default();
        assert_eq!(
            give_up(&r, u32::MAX, Duration::from_secs(86_400 * 365), "x"),
            None
        );
        assert_eq!(
            next_wait(&r, Duration::from_secs(9), Duration::ZERO),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn max_attempts_gives_up_at_the_nth_failure_with_the_last_reply() {
        let r = retry(3, None);
        assert_eq!(
            give_up(&r, 2, Duration::from_secs(5), "upstream replied AE: no"),
            None
        );
        assert_eq!(
            give_up(&r, 3, Duration::from_secs(5), "upstream replied AE: no").as_deref(),
            Some("gave up after 3 attempts (retry.max_attempts 3), queued 5s ago; last: upstream replied AE: no")
        );
    }

    #[test]
    fn max_age_gives_up_once_the_message_is_that_old_and_caps_the_wait() {
        let r = retry(0, Some(Duration::from_secs(60)));
        assert_eq!(give_up(&r, 7, Duration::from_secs(59), "refused"), None);
        assert_eq!(
            give_up(&r, 7, Duration::from_secs(61), "connection refused").as_deref(),
            Some("gave up after waiting 1m 1s (retry.max_age 1m), 7 attempts; last: connection refused")
        );
        assert_eq!(
            give_up(&r, 0, Duration::from_secs(61), "").as_deref(),
            Some("gave up after waiting 1m 1s (retry.max_age 1m), 0 attempts; last: no attempt")
        );
        assert_eq!(
            next_wait(&r, Duration::from_secs(30), Duration::from_secs(50)),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_wait(&r, Duration::from_secs(30), Duration::from_secs(70)),
            Duration::ZERO
        );
    }
}
