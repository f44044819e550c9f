//! Keyset pages and their opaque tokens: stable under concurrent inserts (no offsets). A page
//! holds at most its size in rows and its byte budget (`RESPONSE_MAX_BYTES`) in answer bytes:
//! one that would be larger ends early, and its next token continues after its last row.

use crate::error::Error;
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Default and maximum page sizes.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page.
pub const MAX_PAGE: i64 = 500;
/// Bytes an answer may carry when no other budget is set (`RESPONSE_MAX_BYTES`' default).
pub const DEFAULT_RESPONSE_BYTES: usize = 256 * 1024;
/// What an answer adds to its rows at most: the gRPC prefix, the next page token, and the
/// other fields of a response.
const ENVELOPE: usize = 256;
/// An upper bound of what a protobuf field adds to its value: its tag and its length.
pub const FIELD: usize = 5;
/// An upper bound of an encoded `google.protobuf.Timestamp` field.
pub const TIMESTAMP: usize = 24;
/// An upper bound of a UUID field.
pub const UUID: usize = 36 + FIELD;
/// An upper bound of a Liveblocks room id field (`<prefix>:<uuid>`).
pub const LIVEBLOCKS_ID: usize = 64 + FIELD;
/// An upper bound of an enum or a bool field.
pub const SMALL: usize = 12;

/// An upper bound of a text field holding `s`.
pub fn text(s: &str) -> usize {
    s.len() + FIELD
}

/// The bytes the rows of an answer of `max_bytes` may take.
pub fn row_budget(max_bytes: usize) -> usize {
    max_bytes.saturating_sub(ENVELOPE)
}

/// A row that knows an upper bound of its size in an answer, in bytes.
pub trait WireSize {
    fn wire_size(&self) -> usize;
}

/// A page of results and the token of the next one (empty on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// A requested page: its size and where it starts.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Rows per page, already checked against [`MAX_PAGE`].
    pub size: i64,
    /// Start after this row (`None`: the first page).
    pub after: Option<Cursor>,
    /// Bytes the answer may carry.
    pub max_bytes: usize,
}

impl PageRequest {
    /// Checks `page_size` (0 means [`DEFAULT_PAGE`]) and decodes `token`.
    pub fn parse(page_size: i32, token: &str) -> Result<Self, Error> {
        Ok(Self {
            size: input_validation::page_size(page_size, DEFAULT_PAGE, MAX_PAGE)?,
            after: decode(token)?,
            max_bytes: DEFAULT_RESPONSE_BYTES,
        })
    }

    /// This page within `max_bytes` of answer.
    pub fn within(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The bytes the rows of the page may take (the answer's budget less its envelope).
    pub fn row_bytes(&self) -> usize {
        row_budget(self.max_bytes)
    }

    /// The cursor's time and id as nullable query parameters.
    pub fn after_parts(&self) -> (Option<DateTime<Utc>>, Option<Uuid>) {
        (self.after.map(|c| c.at), self.after.map(|c| c.id))
    }

    /// The `LIMIT` to query: one more row than the page, to learn whether another follows.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts `rows` (queried with [`PageRequest::limit`]) to a page with the next token: at
    /// most the page's size, and rows of at most [`PageRequest::row_bytes`] (at least one row).
    pub fn page<T: WireSize>(&self, mut rows: Vec<T>, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
        let keep = fitting(&rows, self.size as usize, self.row_bytes());
        let more = rows.len() > keep;
        rows.truncate(keep);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode(cursor(last)),
            _ => String::new(),
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

/// How many of `rows` (at least one) fit in `max_rows` and `max_bytes`.
pub fn fitting<T: WireSize>(rows: &[T], max_rows: usize, max_bytes: usize) -> usize {
    let mut total = 0;
    let mut keep = 0;
    for r in rows.iter().take(max_rows) {
        total += r.wire_size();
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    keep
}

/// Position after the last row of a page ordered by `(time, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// Encodes a cursor.
pub fn encode(c: Cursor) -> String {
    ENGINE.encode(format!("{}:{}", c.at.timestamp_micros(), c.id))
}

/// Decodes a page token (empty = first page).
pub fn decode(token: &str) -> Result<Option<Cursor>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::Invalid("page_token is not one this service issued".into());
    let raw = ENGINE.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?)
        // Before PostgreSQL's earliest time (4713 BC): never a row's, and the database would
        // refuse it.
        .filter(|at| at.year() > -4712)
        .ok_or_else(bad)?;
    Ok(Some(Cursor {
        at,
        id: Uuid::parse_str(id).map_err(|_| bad())?,
    }))
}

/// Encodes a string key (e.g. a member's user id).
pub fn encode_key(key: &str) -> String {
    ENGINE.encode(key)
}

/// Decodes a page token of a user id key (a member's; empty = first page). Only a Clerk user
/// id is one of ours: anything else (text PostgreSQL would refuse, such as NUL, included) is
/// INVALID_ARGUMENT here rather than an error of the query.
pub fn decode_user_key(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::Invalid("page_token is not one this service issued".into());
    let key = String::from_utf8(ENGINE.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    input_validation::user_id("page_token", &key).map_err(|_| bad())?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Cursor {
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode(&encode(c)).unwrap(), Some(c));
        assert!(decode("garbage!").is_err());
        // Before PostgreSQL's earliest time: refused here, not by the database.
        let id = Uuid::now_v7();
        let ancient = ENGINE.encode(format!("-1000000000000000000:{id}"));
        assert!(decode(&ancient).is_err());
        let old = chrono::NaiveDate::from_ymd_opt(-3999, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let c = Cursor { at: old, id };
        assert_eq!(decode(&encode(c)).unwrap(), Some(c), "4001 BC is held");
        assert_eq!(decode("").unwrap(), None);
    }

    #[test]
    fn user_key_tokens_hold_only_user_ids() {
        let key = "user_29w83sxmDNGwOuEthce5gg56FcC";
        assert_eq!(
            decode_user_key(&encode_key(key)).unwrap().as_deref(),
            Some(key)
        );
        assert_eq!(decode_user_key("").unwrap(), None);
        // "AA" is one NUL byte: PostgreSQL refuses NUL in text.
        for bad in [
            "AA",
            &encode_key("user_\0x"),
            &encode_key("org_1"),
            &encode_key("x"),
            "!!",
        ] {
            let e = decode_user_key(bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains("page_token")),
                "{bad}: {e:?}"
            );
        }
    }

    struct Sized(usize);
    impl WireSize for Sized {
        fn wire_size(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_page_ends_at_its_rows_or_its_bytes_whichever_comes_first() {
        let rows = |sizes: &[usize]| sizes.iter().map(|s| Sized(*s)).collect::<Vec<_>>();
        assert_eq!(fitting(&rows(&[10, 10, 10]), 2, 100), 2);
        assert_eq!(fitting(&rows(&[40, 40, 40]), 10, 100), 2);
        assert_eq!(fitting(&rows(&[500, 1]), 10, 100), 1, "at least one row");
        assert_eq!(fitting(&rows(&[]), 10, 100), 0);
        let page = PageRequest {
            size: 10,
            after: None,
            max_bytes: 256 + 100,
        };
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let cut = page.page(rows(&[40, 40, 40]), |_| Cursor {
            at,
            id: Uuid::nil(),
        });
        assert_eq!(cut.items.len(), 2);
        assert!(
            !cut.next_page_token.is_empty(),
            "a page cut by bytes says more follow"
        );
        let whole = page.page(rows(&[40, 40]), |_| Cursor {
            at,
            id: Uuid::nil(),
        });
        assert!(whole.next_page_token.is_empty());
    }
}
