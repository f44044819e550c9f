//! Keyset pages and their opaque tokens: stable under concurrent inserts (no offsets).

use crate::error::Error;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Default and maximum page sizes.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page.
pub const MAX_PAGE: i64 = 500;

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
}

impl PageRequest {
    /// Checks `page_size` (0 means [`DEFAULT_PAGE`]) and decodes `token`.
    pub fn parse(page_size: i32, token: &str) -> Result<Self, Error> {
        Ok(Self {
            size: input_validation::page_size(page_size, DEFAULT_PAGE, MAX_PAGE)?,
            after: decode(token)?,
        })
    }

    /// The cursor's time and id as nullable query parameters.
    pub fn after_parts(&self) -> (Option<DateTime<Utc>>, Option<Uuid>) {
        (self.after.map(|c| c.at), self.after.map(|c| c.id))
    }

    /// The `LIMIT` to query: one more row than the page, to learn whether another follows.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts `rows` (queried with [`PageRequest::limit`]) to a page with the next token.
    pub fn page<T>(&self, mut rows: Vec<T>, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
        let more = rows.len() as i64 > self.size;
        rows.truncate(self.size as usize);
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
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some(Cursor {
        at,
        id: Uuid::parse_str(id).map_err(|_| bad())?,
    }))
}

/// Encodes a string key (e.g. a member's user id).
pub fn encode_key(key: &str) -> String {
    ENGINE.encode(key)
}

/// Decodes a string key token (empty = first page).
pub fn decode_key(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let raw = ENGINE
        .decode(token)
        .map_err(|_| Error::Invalid("page_token is not one this service issued".into()))?;
    String::from_utf8(raw)
        .map(Some)
        .map_err(|_| Error::Invalid("page_token is not one this service issued".into()))
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
        assert_eq!(decode("").unwrap(), None);
    }
}
