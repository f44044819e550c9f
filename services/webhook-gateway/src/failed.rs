//! A delivery a service fails for a reason of its own ([`crate::forward::ForwardError::Failed`]:
//! INTERNAL, FAILED_PRECONDITION, NOT_FOUND ...): answered 503 while its Clerk event is young, so
//! Svix retries it and a fix released meanwhile applies it; quarantined (200) once the event is
//! `QUARANTINE_FAILED_AFTER_SECS` old, before Svix gives up on it and it would be lost.
//!
//! The age is the gateway's clock minus the envelope's signed `timestamp`, which stays the same
//! on every retry (the `svix-timestamp` header moves). Both clocks are assumed synchronised
//! (NTP: seconds apart); a skew only moves the quarantine by as much, far inside the hours
//! between Svix's last attempts. A body without a timestamp (Clerk documents one on every
//! event) has no age to wait for: it is quarantined at its first failure, since Svix could
//! otherwise give up on it unseen. One with a timestamp ahead of the gateway's clock is not old
//! yet.

use std::time::{Duration, SystemTime};

/// Default of `QUARANTINE_FAILED_AFTER_SECS`, 12 h. Svix's attempts come about 0 s, 5 s,
/// 5 min, 35 min, 2 h 35 min, 7 h 35 min, 17 h 35 min and 27 h 35 min after the first, each
/// delay stretched or shrunk by up to 20 % (Svix's jitter): the 7th, at 14 h 4 min at the
/// earliest, is the first past 12 h, and the 8th is a spare should the 7th meet an outage.
pub const DEFAULT_AFTER_SECS: u64 = 12 * 3600;

/// Largest `QUARANTINE_FAILED_AFTER_SECS`, 20 h: Svix's last attempt comes 27 h 35 min after
/// the first less up to 20 % jitter, 22 h 4 min at the earliest, so it still comes after this
/// with two hours to spare for skew and slow attempts.
pub const MAX_AFTER_SECS: u64 = 20 * 3600;

/// The earliest Svix's last (8th) attempt comes after the first, its delays all shrunk by its
/// 20 % jitter: 0.8 × 27 h 35 min.
#[cfg(test)]
const EARLIEST_LAST_ATTEMPT_SECS: u64 = (27 * 3600 + 35 * 60) * 8 / 10;

/// How old the event is by the gateway's clock; `None` without a timestamp or for one in the
/// future.
pub fn event_age(event_time: Option<&prost_types::Timestamp>, now: SystemTime) -> Option<Duration> {
    let at = SystemTime::try_from(*event_time?).ok()?;
    now.duration_since(at).ok()
}

/// Why a delivery that failed at a service is to be quarantined now (its event is at least
/// `after` old, or carries no timestamp); `None` when it is to be answered 503.
pub fn due(
    event_time: Option<&prost_types::Timestamp>,
    after: Duration,
    now: SystemTime,
) -> Option<String> {
    let Some(at) = event_time else {
        return Some(
            "the event carries no timestamp, so Svix's retries cannot be waited out".into(),
        );
    };
    event_age(Some(at), now)
        .filter(|age| *age >= after)
        .map(|age| format!("the event is {} old", human(age)))
}

/// An age as people read it, in its two largest units: `17 h 35 min`, `2 d 3 h`, `45 s`.
pub fn human(age: Duration) -> String {
    let s = age.as_secs();
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min {} s", s % 60),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbase_proto::timestamp_from_millis;

    #[test]
    fn only_an_event_old_enough_is_due() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let after = Duration::from_secs(DEFAULT_AFTER_SECS);
        let at = |secs_ago: i64| Some(timestamp_from_millis((1_800_000_000 - secs_ago) * 1000));
        assert_eq!(
            due(at(43_200).as_ref(), after, now).as_deref(),
            Some("the event is 12 h 0 min old")
        );
        assert_eq!(due(at(43_199).as_ref(), after, now), None);
        // Svix's 7th attempt, 17 h 35 min after the event less up to 20 % jitter, quarantines;
        // its 6th (7 h 35 min and up to 20 % more) does not.
        assert!(due(at((17 * 3600 + 35 * 60) * 8 / 10).as_ref(), after, now).is_some());
        assert!(due(at((7 * 3600 + 35 * 60) * 12 / 10).as_ref(), after, now).is_none());
        // Svix's last attempt at its earliest still comes after the largest setting allows.
        let most = Duration::from_secs(MAX_AFTER_SECS);
        assert!(due(at(EARLIEST_LAST_ATTEMPT_SECS as i64).as_ref(), most, now).is_some());
        // One in the future (a clock ahead of ours) is not old yet; none at all is due at once.
        assert_eq!(due(at(-60).as_ref(), Duration::from_secs(1), now), None);
        assert!(due(None, most, now).unwrap().contains("no timestamp"));
    }

    #[test]
    fn ages_read_in_two_units() {
        let h = |s: u64| human(Duration::from_secs(s));
        assert_eq!(h(45), "45 s");
        assert_eq!(h(125), "2 min 5 s");
        assert_eq!(h(17 * 3600 + 35 * 60 + 5), "17 h 35 min");
        assert_eq!(h(2 * 86_400 + 3 * 3600 + 59), "2 d 3 h");
    }
}
