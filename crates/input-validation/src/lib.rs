//! Checks of gRPC input shared by the VBase services. Each error names the field and the rule,
//! so a caller can act on it; services map [`Invalid`] to `INVALID_ARGUMENT`.

use chrono::{DateTime, Utc};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Input that breaks a rule; the message says which and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

type Error = Invalid;

impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

/// Longest accepted Clerk id.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted event id.
pub const MAX_EVENT_ID_LEN: usize = 200;
/// Longest accepted name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest accepted email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest accepted image URL.
pub const MAX_URL_LEN: usize = 2048;

/// A Clerk id with `prefix` (`user_`, `org_`): the prefix then ASCII letters, digits or
/// underscores, at most [`MAX_ID_LEN`] chars.
pub fn clerk_id(field: &str, prefix: &str, id: &str) -> Result<(), Error> {
    let ok = id.len() <= MAX_ID_LEN
        && id.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{field} must be a Clerk id (`{prefix}` + letters/digits, at most {MAX_ID_LEN} chars), got {:?}",
            truncate(id)
        )))
    }
}

/// A Clerk user id, `user_...`.
pub fn user_id(field: &str, id: &str) -> Result<(), Error> {
    clerk_id(field, "user_", id)
}

/// A Clerk organization id, `org_...`.
pub fn org_id(field: &str, id: &str) -> Result<(), Error> {
    clerk_id(field, "org_", id)
}

/// One of our UUID ids.
pub fn uuid(field: &str, id: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| Invalid(format!("{field} must be a UUID, got {:?}", truncate(id))))
}

/// Required non-blank text of at most `max` chars, returned trimmed.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Invalid(format!("{field} must not be empty")));
    }
    text(field, v, max)?;
    Ok(v.to_owned())
}

/// Required multi-line text of at most `max` chars (a message body), returned trimmed: like
/// [`required_text`], but line breaks (`\n`, `\r\n`, `\r`) and tabs are kept; every other
/// control character is refused.
pub fn required_multiline_text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Invalid(format!("{field} must not be empty")));
    }
    length(field, v, max)?;
    if v.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Invalid(format!(
            "{field} must not contain control characters other than line breaks and tabs"
        )));
    }
    Ok(v.to_owned())
}

/// A required name or title someone chose (a room's, an item's, a meeting's) of at most `max`
/// chars, returned trimmed: like [`required_text`], and also
/// - blank when nothing visible remains once whitespace and invisible characters are removed
///   (format characters such as U+200B, other default-ignorable ones such as U+3164),
/// - one line: no line or paragraph separator (U+2028, U+2029),
/// - free of the bidirectional controls that reorder what follows them (embeddings and
///   overrides U+202A–U+202E, isolates U+2066–U+2069): "report\u{202E}fdp.exe" would show as
///   "reportexe.pdf".
///
/// The marks U+200E, U+200F and U+061C stay valid: they reorder no letters (only neutral
/// characters next to them) and mixed right-to-left names need them. So do the joiners and
/// variation selectors of emoji sequences (U+200D in 👨‍👩‍👧, U+FE0F).
pub fn required_name(field: &str, value: &str, max: usize) -> Result<String, Error> {
    let v = required_text(field, value, max)?;
    if v.chars().all(invisible) {
        return Err(Invalid(format!(
            "{field} must not be empty (it holds only invisible characters)"
        )));
    }
    if v.contains(['\u{2028}', '\u{2029}']) {
        return Err(Invalid(format!(
            "{field} must be one line (no line or paragraph separators)"
        )));
    }
    if let Some(c) = v.chars().find(|c| bidi_control(*c)) {
        return Err(Invalid(format!(
            "{field} must not contain bidirectional control characters (U+202A-U+202E, \
             U+2066-U+2069), found U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(v)
}

/// Text from a source that cannot be refused (a name Clerk holds), made what [`required_name`]
/// admits: control characters and bidirectional controls removed, line and paragraph
/// separators made spaces, surrounding whitespace and invisible characters trimmed (not those
/// that still mean something at an end: [`meaningful_at_an_end`]); empty when nothing visible
/// is left.
pub fn displayable(value: &str) -> String {
    let kept: String = value
        .chars()
        .filter(|c| !c.is_control() && !bidi_control(*c))
        .map(|c| {
            if matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .collect();
    if kept.chars().all(invisible) {
        return String::new();
    }
    kept.trim_matches(|c| invisible(c) && !meaningful_at_an_end(c))
        .to_owned()
}

/// An invisible character that still means something at an end of a name: a mark that sets
/// the direction of what sits next to it ("שלום 2024\u{200F}"), or one that modifies the
/// character before it (variation selectors as in "❤\u{FE0F}", the combining grapheme joiner,
/// the tag characters that end a subdivision flag).
fn meaningful_at_an_end(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{034F}'
            | '\u{180B}'..='\u{180D}'
            | '\u{180F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{E0020}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Text from a source that cannot be refused (a name Clerk holds) as the services store and
/// show it: [`displayable`], cut at `max` characters (on a character boundary). Clerk accepts
/// names we would refuse; refusing them would lose the whole change.
pub fn normalized(text: &str, max: usize) -> String {
    let cut: String = displayable(text).chars().take(max).collect();
    // The cut may leave only invisible characters (or trailing spaces): judged again.
    displayable(&cut)
}

/// A name a user's token claims (Clerk's `name`), as the gateway would store it:
/// [`normalized`] to [`MAX_NAME_LEN`]; `None` when nothing visible is left.
pub fn claimed_name(name: &str) -> Option<String> {
    Some(normalized(name, MAX_NAME_LEN)).filter(|n| !n.is_empty())
}

/// An image URL a user's token claims (Clerk's `picture`), shown to other users: kept only
/// when it is an `https` URL that [`url`] accepts (never `javascript:`, `data:` or plain
/// `http`; Clerk's image URLs are `https`).
pub fn claimed_image_url(value: &str) -> Option<&str> {
    (value.starts_with("https://") && url("picture", value).is_ok()).then_some(value)
}

/// An embedding, override or isolate control of the bidirectional algorithm (and its end).
fn bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whitespace, a format character (general category Cf), another default-ignorable code
/// point, or the blank braille pattern: nothing a reader sees.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || c.general_category() == GeneralCategory::Format
        || matches!(
            c,
            // The Default_Ignorable_Code_Points outside Cf: the combining grapheme joiner,
            // Hangul fillers, Khmer inherent vowels, Mongolian and other variation selectors,
            // reserved ones.
            '\u{034F}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2065}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{E0000}'..='\u{E0FFF}'
                // Braille pattern blank: shown as a space.
                | '\u{2800}'
        )
}

/// Page size: 0 means `default`; otherwise 1..=`max`.
pub fn page_size(value: i32, default: i64, max: i64) -> Result<i64, Error> {
    match value {
        0 => Ok(default),
        v if v < 0 || i64::from(v) > max => {
            Err(Invalid(format!("page_size must be 1..={max}, got {v}")))
        }
        v => Ok(i64::from(v)),
    }
}

/// A delivery id: present, printable, at most [`MAX_EVENT_ID_LEN`] chars.
pub fn event_id(id: &str) -> Result<(), Error> {
    if id.is_empty()
        || id.len() > MAX_EVENT_ID_LEN
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Invalid(format!(
            "event_id must be the delivery id (svix-id), 1..={MAX_EVENT_ID_LEN} printable chars"
        )));
    }
    Ok(())
}

/// How far a source's time (Clerk's, the gateway's) may lie ahead of this service's clock, in
/// seconds. The clocks differ by seconds; a day is generous. A time further ahead would order
/// every later change as older (stale) or revoke tokens until then, and stays stored.
pub const MAX_AHEAD_SECS: i64 = 86_400;

/// The source's own timestamp of a change (`occurred_at`), required: see [`source_time`].
pub fn occurred_at(ts: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, Error> {
    let ts =
        ts.ok_or_else(|| Invalid("occurred_at is required (the source's own timestamp)".into()))?;
    source_time_at("occurred_at", ts, Utc::now())
}

/// A required time from the source that orders changes or revokes tokens: `nanos` within a
/// second, on or after 2000-01-01, and at most [`MAX_AHEAD_SECS`] after this service's clock.
pub fn source_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<DateTime<Utc>, Error> {
    let ts = ts.ok_or_else(|| Invalid(format!("{field} is required")))?;
    source_time_at(field, ts, Utc::now())
}

/// Like [`source_time`], and absent is `None`. A present value is never dropped: a malformed
/// `tokens_revoked_at` must not read as "not banned".
pub fn optional_source_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Error> {
    ts.map(|ts| source_time_at(field, ts, Utc::now()))
        .transpose()
}

/// When the source says something was created (a user, an organization, a membership):
/// any time [`time`] takes, and at most [`MAX_AHEAD_SECS`] after this service's clock. No
/// floor: Clerk lets an import set a user's `created_at`, 1970 included. Absent is `None`.
pub fn optional_created_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Error> {
    ts.map(|ts| created_time_at(field, ts, Utc::now()))
        .transpose()
}

/// Like [`optional_created_time`], required.
pub fn created_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<DateTime<Utc>, Error> {
    let ts = ts.ok_or_else(|| Invalid(format!("{field} is required")))?;
    created_time_at(field, ts, Utc::now())
}

fn created_time_at(
    field: &str,
    ts: &prost_types::Timestamp,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Error> {
    let at = time(field, Some(ts))?;
    not_ahead(field, at, now)
}

/// `at`, unless it lies more than [`MAX_AHEAD_SECS`] after `now`.
fn not_ahead(field: &str, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    if at > now + chrono::TimeDelta::seconds(MAX_AHEAD_SECS) {
        return Err(Invalid(format!(
            "{field} is in the future: {} is more than a day after this service's clock ({}); \
             a source's time may be at most a day ahead",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(at)
}

/// [`source_time`] against the clock reading `now`.
fn source_time_at(
    field: &str,
    ts: &prost_types::Timestamp,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Error> {
    /// 2000-01-01T00:00:00Z.
    const EARLIEST: i64 = 946_684_800;
    let at = DateTime::<Utc>::from_timestamp(ts.seconds, nanos(field, ts)?)
        .filter(|d| d.timestamp() >= EARLIEST)
        .ok_or_else(|| {
            Invalid(format!(
                "{field} is out of range (before 2000-01-01, or not a time), got {} s",
                ts.seconds
            ))
        })?;
    not_ahead(field, at, now)
}

/// A required time within protobuf's `Timestamp` range (years 1 to 9999), which every
/// client library and PostgreSQL can hold: anything outside is refused here rather than
/// failing in the database.
pub fn time(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, Error> {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    let ts = ts.ok_or_else(|| Invalid(format!("{field} is required")))?;
    let nanos = nanos(field, ts)?;
    RANGE
        .contains(&ts.seconds)
        .then(|| DateTime::from_timestamp(ts.seconds, nanos))
        .flatten()
        .ok_or_else(|| Invalid(format!("{field} is out of range (years 1 to 9999)")))
}

/// A timestamp's `nanos`, which protobuf defines as 0..=999,999,999 (a time before 1970 counts
/// its fraction forward too): anything else is refused, not moved to the nearest bound.
fn nanos(field: &str, ts: &prost_types::Timestamp) -> Result<u32, Error> {
    u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n <= 999_999_999)
        .ok_or_else(|| {
            Invalid(format!(
                "{field}.nanos must be 0..=999999999, got {}",
                ts.nanos
            ))
        })
}

/// Where a reconcile page starts or ends in a listing: a creation time and an id. A position,
/// not a change, so any time [`time`] takes (the gateway's probe places an empty stretch in
/// 1970); no time is no position.
pub fn listing_position(
    field: &str,
    at: Option<&prost_types::Timestamp>,
    id: String,
) -> Result<Option<(DateTime<Utc>, String)>, Error> {
    Ok(optional_time(field, at)?.map(|t| (t, id)))
}

/// An optional time within protobuf's `Timestamp` range (see [`time`]); absent is `None`, and
/// a present value is never dropped or changed.
pub fn optional_time(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Error> {
    ts.map(|ts| time(field, Some(ts))).transpose()
}

/// A bounded free-text field.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    length(field, value, max)?;
    if value.chars().any(|c| c.is_control()) {
        return Err(Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

fn length(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max {
        return Err(Invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

/// An email address (empty allowed: Clerk users may have none).
pub fn email(value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    let valid = value.len() <= MAX_EMAIL_LEN
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(())
    } else {
        // The address itself is personal data: the message (logged, returned) leaves it out.
        Err(Invalid("email is not a valid address".into()))
    }
}

/// An http(s) URL or empty.
pub fn url(field: &str, value: &str) -> Result<(), Error> {
    text(field, value, MAX_URL_LEN)?;
    if value.is_empty() || value.starts_with("https://") || value.starts_with("http://") {
        Ok(())
    } else {
        Err(Invalid(format!("{field} must be an http(s) URL")))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(user_id("id", "user_29w83sxmDNGwOuEthce5gg56FcC").is_ok());
        for bad in [
            "",
            "user_",
            "org_123",
            "user_a b",
            "user_ä",
            &format!("user_{}", "a".repeat(80)),
        ] {
            assert!(user_id("id", bad).is_err(), "{bad}");
        }
        assert!(org_id("id", "org_29w9IfBrPmcpi0IeBVaKtA7R94W").is_ok());
        assert!(org_id("id", "user_1").is_err());
    }

    #[test]
    fn times_within_protobufs_range() {
        let at = |seconds| {
            time(
                "starts_at",
                Some(&prost_types::Timestamp { seconds, nanos: 0 }),
            )
        };
        for ok in [-62_135_596_800, 0, 1_700_000_000, 253_402_300_799] {
            assert!(at(ok).is_ok(), "{ok}");
        }
        for bad in [
            -62_135_596_801,
            -1_000_000_000_000,
            253_402_300_800,
            i64::MAX,
        ] {
            let e = at(bad).unwrap_err().to_string();
            assert!(e.contains("starts_at is out of range"), "{bad}: {e}");
        }
        assert!(time("starts_at", None).is_err());
    }

    #[test]
    fn nanos_outside_a_second_are_refused() {
        let ts = |nanos| prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos,
        };
        for ok in [0, 1, 999_999_999] {
            assert_eq!(
                time("starts_at", Some(&ts(ok)))
                    .unwrap()
                    .timestamp_subsec_nanos(),
                ok as u32
            );
            assert!(occurred_at(Some(&ts(ok))).is_ok(), "{ok}");
        }
        for bad in [-1, i32::MIN, 1_000_000_000, 2_000_000_000, i32::MAX] {
            let e = time("starts_at", Some(&ts(bad))).unwrap_err().to_string();
            assert!(
                e.contains("starts_at.nanos must be 0..=999999999"),
                "{bad}: {e}"
            );
            let e = occurred_at(Some(&ts(bad))).unwrap_err().to_string();
            assert!(e.contains("occurred_at.nanos must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn created_times_have_no_floor_and_are_at_most_a_day_ahead() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        let at = |t: prost_types::Timestamp| created_time_at("created_at", &t, now);
        // An import's epoch or 1995, which Clerk takes as a user's created_at.
        for ok in [
            ts(0, 0),
            ts(800_000_000, 0),
            ts(1_800_000_000 + MAX_AHEAD_SECS, 0),
        ] {
            assert!(at(ok).is_ok(), "{ok:?}");
        }
        let ahead = at(ts(1_800_000_000 + MAX_AHEAD_SECS + 1, 0)).unwrap_err();
        assert!(ahead.0.contains("created_at is in the future"), "{ahead:?}");
        assert!(at(ts(0, -1)).is_err());
        assert!(optional_created_time("created_at", None).unwrap().is_none());
    }

    #[test]
    fn source_times_may_be_at_most_a_day_ahead() {
        let now = DateTime::from_timestamp(1_800_000_000, 250_000_000).unwrap();
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        let at = |t: prost_types::Timestamp| source_time_at("revoked_at", &t, now);
        let day = MAX_AHEAD_SECS;
        for ok in [
            ts(1_800_000_000 + day, 250_000_000),
            ts(1_800_000_000 + day, 0),
            ts(1_800_000_000, 0),
            ts(946_684_800, 0),
        ] {
            assert!(at(ok).is_ok(), "{ok:?}");
        }
        for ahead in [
            ts(1_800_000_000 + day + 1, 250_000_000),
            ts(1_800_000_000 + day, 250_000_001),
            ts(1_800_000_000 + 10 * 365 * day, 0),
            ts(253_402_300_799, 0),
        ] {
            let e = at(ahead).unwrap_err().to_string();
            assert!(
                e.starts_with("revoked_at is in the future"),
                "{ahead:?}: {e}"
            );
        }
        for bad in [ts(946_684_799, 0), ts(0, 0), ts(-1, 0), ts(i64::MAX, 0)] {
            let e = at(bad).unwrap_err().to_string();
            assert!(e.starts_with("revoked_at is out of range"), "{bad:?}: {e}");
        }
        let e = at(ts(1_800_000_000, 2_000_000_000))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("revoked_at.nanos must be"), "{e}");
        // With this machine's clock: exactly a day ahead passes, a second more is refused.
        let now = Utc::now();
        let (secs, nanos) = (now.timestamp(), now.timestamp_subsec_nanos() as i32);
        assert!(source_time("event_time", Some(&ts(secs + day, nanos))).is_ok());
        let e = source_time("event_time", Some(&ts(secs + day + 1, nanos))).unwrap_err();
        assert!(e.0.starts_with("event_time is in the future"), "{e}");
        assert!(occurred_at(Some(&ts(secs + day + 1, nanos))).is_err());
        assert!(source_time("event_time", None).is_err());
    }

    #[test]
    fn optional_times_are_absent_or_valid_never_dropped() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let now = Utc::now().timestamp();
        assert_eq!(optional_source_time("created_at", None), Ok(None));
        assert_eq!(
            optional_source_time("created_at", ts(1_700_000_000, 5).as_ref()),
            Ok(DateTime::from_timestamp(1_700_000_000, 5))
        );
        for bad in [
            ts(0, 0),
            ts(-5, 0),
            ts(1_700_000_000, -1),
            ts(1_700_000_000, 2_000_000_000),
            ts(now + 10 * 365 * MAX_AHEAD_SECS, 0),
        ] {
            let e = optional_source_time("tokens_revoked_at", bad.as_ref())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("tokens_revoked_at"), "{bad:?}: {e}");
        }
        assert_eq!(optional_time("range.after_created_at", None), Ok(None));
        assert_eq!(
            optional_time("range.after_created_at", ts(1, 0).as_ref()),
            Ok(DateTime::from_timestamp(1, 0))
        );
        for bad in [ts(1, 1_000_000_000), ts(1, -1), ts(i64::MAX, 0)] {
            assert!(optional_time("range.after_created_at", bad.as_ref()).is_err());
        }
    }

    #[test]
    fn message_bodies_keep_line_breaks_and_tabs() {
        let body = |v: &str| required_multiline_text("body", v, 100);
        for ok in [
            "one\ntwo",
            "a\r\nb",
            "a\rb",
            "col\tcol",
            "  padded\n\tline  ",
        ] {
            assert_eq!(body(ok), Ok(ok.trim().to_owned()), "{ok:?}");
        }
        for bad in ["ring\u{0007}", "nul\0", "esc\u{001B}[31m", "n\u{0085}el"] {
            let e = body(bad).unwrap_err().to_string();
            assert!(
                e.contains("body must not contain control characters"),
                "{bad:?}: {e}"
            );
        }
        assert!(
            body(" \n\t ")
                .unwrap_err()
                .to_string()
                .contains("must not be empty")
        );
        assert!(body(&"a".repeat(101)).is_err());
        // Names and other one-line text still refuse them.
        assert!(required_text("name", "a\nb", 100).is_err());
        assert!(required_name("name", "a\tb", 100).is_err());
    }

    #[test]
    fn names_refuse_invisible_blanks_and_bidi_controls() {
        let name = |v: &str| required_name("name", v, 100);
        for blank in [
            "\u{200B}",
            " \u{200B}\u{200D} ",
            "\u{FEFF}",
            "\u{2060}\u{00AD}",
            "\u{3164}",
            "\u{FE0F}",
            "\u{200E}",
            "\u{2800}",
        ] {
            let e = name(blank).unwrap_err().to_string();
            assert!(e.starts_with("name must not be empty"), "{blank:?}: {e}");
        }
        for spoof in [
            "report\u{202E}fdp.exe",
            "\u{202A}x",
            "a\u{202C}",
            "b\u{2066}c\u{2069}",
            "\u{2067}d",
            "\u{2068}e",
        ] {
            let e = name(spoof).unwrap_err().to_string();
            assert!(
                e.contains("name must not contain bidirectional control characters"),
                "{spoof:?}: {e}"
            );
        }
        assert!(
            name("a\u{2028}b")
                .unwrap_err()
                .to_string()
                .contains("one line")
        );
        assert!(name("a\u{0007}").is_err());
        for ok in [
            "Design review",
            "👨\u{200D}👩\u{200D}👧 family",
            "👨\u{200D}👩\u{200D}👧",
            "❤\u{FE0F}",
            "☃\u{FE0E} snow",
            "🏳\u{FE0F}\u{200D}🌈",
            "שלום 2024\u{200F}",
            "می\u{200C}خواهم",
            "Ünïcödé 名前",
        ] {
            assert_eq!(name(ok), Ok(ok.to_owned()), "{ok:?}");
        }
        assert_eq!(name("  Room  ").unwrap(), "Room");
    }

    #[test]
    fn text_we_cannot_refuse_becomes_a_name_we_would_admit() {
        assert_eq!(displayable("report\u{202E}fdp.exe"), "reportfdp.exe");
        assert_eq!(
            displayable(" \u{2066}Ada\u{2069} Lovelace\u{2028} "),
            "Ada Lovelace"
        );
        assert_eq!(displayable("a\u{0007}b\n"), "ab");
        assert_eq!(displayable("Ada\u{2029}Lovelace"), "Ada Lovelace");
        // Invisible characters at the ends go; inside, they stay (Thai and Khmer words use
        // U+200B, emoji sequences U+200D).
        assert_eq!(
            displayable("report\u{202E}fdp.exe\u{200B}"),
            "reportfdp.exe"
        );
        assert_eq!(displayable("\u{FEFF}\u{200D}Ada\u{3164}\u{2060} "), "Ada");
        assert_eq!(displayable("a\u{200B}b"), "a\u{200B}b");
        for blank in ["\u{200B}", " \u{200B}\u{200D} ", "\u{3164}", "\u{202E}", ""] {
            assert_eq!(displayable(blank), "", "{blank:?}");
        }
        for ok in [
            "👨\u{200D}👩\u{200D}👧",
            "שלום 2024\u{200F}",
            "\u{200F}2024 שלום",
            "Ünïcödé 名前",
            "❤\u{FE0F}",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ] {
            assert_eq!(displayable(ok), ok);
            assert_eq!(required_name("name", ok, 100), Ok(ok.to_owned()));
        }
        for raw in ["x\u{202D}y", "\u{2067}z\u{2069}", " w\u{2029}v "] {
            let shown = displayable(raw);
            assert_eq!(
                required_name("name", &shown, 100),
                Ok(shown.clone()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn normalized_text_is_cut_then_judged_again() {
        let long = format!("  Ada\u{7}{}  ", "é".repeat(300));
        let n = normalized(&long, MAX_NAME_LEN);
        assert_eq!(n.chars().count(), MAX_NAME_LEN);
        assert!(n.starts_with("Adaé") && !n.chars().any(char::is_control));
        assert_eq!(normalized(" \u{0} Acme \n", 256), "Acme");
        // Invisible before the cut (a leading mark is kept), visible only past it: nothing is
        // left.
        let hidden = format!("\u{200F}{}A", "\u{200B}".repeat(300));
        assert_eq!(normalized(&hidden, 256), "");
        // Leading invisible characters go before the cut; trailing ones the cut leaves go too.
        assert_eq!(
            normalized(&format!("{}A", "\u{200B}".repeat(300)), 256),
            "A"
        );
        let tail = format!("Ada{}x", "\u{200B}".repeat(300));
        assert_eq!(normalized(&tail, 256), "Ada");
    }

    #[test]
    fn claimed_names_and_pictures_are_made_fit_to_show() {
        assert_eq!(
            claimed_name("report\u{202E}fdp.exe\u{200B}").as_deref(),
            Some("reportfdp.exe")
        );
        for blank in ["\u{200B}\u{3164}", " \u{202E} ", ""] {
            assert_eq!(claimed_name(blank), None, "{blank:?}");
        }
        assert_eq!(
            claimed_name(&"x".repeat(300)).map(|n| n.chars().count()),
            Some(MAX_NAME_LEN)
        );
        let ok = "https://img.clerk.com/ada.png";
        assert_eq!(claimed_image_url(ok), Some(ok));
        for bad in [
            "http://img.clerk.com/ada.png",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://img.clerk.com/a\u{7}.png",
            &format!("https://img.clerk.com/{}", "a".repeat(MAX_URL_LEN)),
            "",
        ] {
            assert_eq!(claimed_image_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0, 50, 500), Ok(50));
        assert_eq!(page_size(500, 50, 500), Ok(500));
        assert!(page_size(501, 50, 500).is_err());
        assert!(page_size(-1, 50, 500).is_err());
    }

    #[test]
    fn emails() {
        assert!(email("a@b.co").is_ok());
        assert!(email("").is_ok());
        for bad in ["a", "@b.co", "a@", "a@b", "a b@c.de", "a@b@c.de", "a@.com"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }
}
