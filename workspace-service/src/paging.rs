//! Opaque keyset page tokens: stable under concurrent inserts (no offsets).

use crate::error::Error;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Default and maximum page sizes.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page.
pub const MAX_PAGE: i64 = 500;

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
