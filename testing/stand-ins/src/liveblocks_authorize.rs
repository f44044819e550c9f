//! `POST /v2/authorize-user` of the Liveblocks stand-in: checks the body as Liveblocks'
//! Node SDK (`Session.ts`, `Permission.ts`) sends it (a `userId`, optional `userInfo`,
//! `permissions` mapping at most 10 room ids or patterns `^([*]|[^*]{1,128}[*]?)$` to known
//! permissions) and answers `{"token": "<JWT>"}`. The token is shaped like Liveblocks' access
//! tokens (`k: "acc"`, `uid`, `perms`, `ui`, `iat`, `exp`: an hour by default, see
//! [`crate::LiveblocksStandIn::set_token_secs`]) and carries no valid signature: only the
//! stand-in's own records say what it grants.
//!
//! Not documented by Liveblocks: its spec lists only 200 and 403 for this endpoint. The 400
//! `INVALID_JSON` and 422 `INVALID_REQUEST` refusals of a malformed body are this stand-in's
//! own, so that a test sees a bad body refused rather than a token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

/// The permissions Liveblocks knows (`Permission.ts` of liveblocks-core): the room-wide and
/// per-feature scopes, then the legacy ones it still accepts. Anything else is refused.
pub const KNOWN_PERMISSIONS: &[&str] = &[
    "room:write",
    "room:read",
    "room:presence:read",
    "room:presence:none",
    "room:storage:read",
    "room:storage:write",
    "room:storage:none",
    "room:comments:read",
    "room:comments:write",
    "room:comments:none",
    "room:feeds:read",
    "room:feeds:write",
    "room:feeds:none",
    // Legacy.
    "room:presence:write",
    "comments:write",
    "comments:read",
    "feeds:write",
];
/// Most room entries one token may grant.
pub const MAX_ENTRIES: usize = 10;
/// Longest `userId` and room id.
pub const MAX_ID: usize = 128;
/// How long a stand-in token lives by default, as Liveblocks' access tokens do (about an hour,
/// by a maintainer's word; no published document states it).
pub const TOKEN_SECS: u64 = 3600;

/// One access token the stand-in issued: what it was asked to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// `userId`.
    pub user_id: String,
    /// `userInfo` (an empty object when absent).
    pub user_info: Value,
    /// Room id or pattern → permissions, in the order sent.
    pub permissions: Vec<(String, Vec<String>)>,
}

/// A refusal: the status and the body's `error` and `message`.
pub type Refusal = (u16, &'static str, String);

pub(crate) fn invalid(message: impl Into<String>) -> Refusal {
    (422, "INVALID_REQUEST", message.into())
}

/// Reads the body as a JSON object (400 `INVALID_JSON` when it is not JSON).
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        (
            400,
            "INVALID_JSON",
            "The body is not valid JSON.".to_owned(),
        )
    })?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(invalid("The body must be an object.")),
    }
}

/// The longest `userInfo` Liveblocks takes, in characters of its JSON.
pub(crate) const MAX_USER_INFO: usize = 1024;

/// `userId` (required, 1 to 128 characters) and `userInfo` (an object whose `name` and
/// `avatar`, when present, are strings, at most 1024 characters as JSON; an empty object when
/// absent).
pub(crate) fn user(obj: &Map<String, Value>) -> Result<(String, Value), Refusal> {
    let user_id = match obj.get("userId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID => s.clone(),
        _ => {
            return Err(invalid(
                "userId must be a non-empty string of at most 128 characters.",
            ));
        }
    };
    let user_info = match obj.get("userInfo") {
        None => Value::Object(Map::new()),
        Some(Value::Object(o)) => {
            for key in ["name", "avatar"] {
                if o.get(key).is_some_and(|v| !v.is_string()) {
                    return Err(invalid(format!("userInfo.{key} must be a string.")));
                }
            }
            let info = Value::Object(o.clone());
            if info.to_string().chars().count() > MAX_USER_INFO {
                return Err(invalid(
                    "userInfo cannot be longer than 1024 characters once serialized to JSON.",
                ));
            }
            info
        }
        Some(_) => return Err(invalid("userInfo must be an object.")),
    };
    Ok((user_id, user_info))
}

/// Checks a request body.
pub fn check(body: &[u8]) -> Result<Authorization, Refusal> {
    let obj = json_object(body)?;
    let (user_id, user_info) = user(&obj)?;
    let Some(Value::Object(perms)) = obj.get("permissions") else {
        return Err(invalid("permissions must be an object."));
    };
    // No entries at all is still taken: the SDK sends it, only warning that it "will not be
    // supported soon".
    if perms.len() > MAX_ENTRIES {
        return Err(invalid("permissions must hold at most 10 entries."));
    }
    let mut permissions = Vec::with_capacity(perms.len());
    for (room, granted) in perms {
        if !room_pattern_ok(room) {
            return Err(invalid(format!("{room:?} is not a room id or pattern.")));
        }
        let list: Option<Vec<String>> = granted.as_array().and_then(|a| {
            a.iter()
                .map(|p| {
                    p.as_str()
                        .filter(|p| KNOWN_PERMISSIONS.contains(p))
                        .map(Into::into)
                })
                .collect()
        });
        match list {
            Some(l) if !l.is_empty() => permissions.push((room.clone(), l)),
            _ => {
                return Err(invalid(format!(
                    "Unknown or missing permissions for {room:?}."
                )));
            }
        }
    }
    Ok(Authorization {
        user_id,
        user_info,
        permissions,
    })
}

/// Whether `room` is a room id or pattern as the SDK checks it: `^([*]|[^*]{1,128}[*]?)$`
/// (`*` alone, or 1 to 128 characters without `*`, then at most one `*`).
fn room_pattern_ok(room: &str) -> bool {
    let base = room.strip_suffix('*').unwrap_or(room);
    room == "*" || (!base.is_empty() && base.chars().count() <= MAX_ID && !base.contains('*'))
}

/// An access-token-shaped JWT for `a` (header, claims, a placeholder signature), living
/// `lifetime` seconds from `now`.
pub fn token(a: &Authorization, serial: u64, now: u64, lifetime: u64) -> String {
    let perms: Map<String, Value> = a
        .permissions
        .iter()
        .map(|(room, p)| (room.clone(), json!(p)))
        .collect();
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let claims = json!({
        "k": "acc", "pid": "standin", "uid": a.user_id, "perms": perms, "ui": a.user_info,
        "iat": now, "exp": now + lifetime, "jti": format!("standin-{serial}"),
    });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.standin-signature", part(&header), part(&claims))
}

/// Whether `token`, one issued by [`token`], lets a client into `room` at `now` (seconds): not
/// expired, and granting the room by its id or by a `prefix*` pattern.
pub fn admits(token: &str, room: &str, now: u64) -> Result<(), String> {
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some("standin-signature"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not an access token of this stand-in".into());
    };
    let claims: Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or("unreadable claims")?;
    if claims["k"] != "acc" {
        return Err("not an access token".into());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err("expired".into());
    }
    let granted = claims["perms"].as_object().is_some_and(|perms| {
        perms.keys().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => p == room,
        })
    });
    if granted {
        Ok(())
    } else {
        Err(format!("the token does not grant {room}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_as_liveblocks_describes_them() {
        let ok = check(
            br#"{"userId":"u","userInfo":{"name":"Ada"},"permissions":{"doc:1":["room:write"]}}"#,
        )
        .unwrap();
        assert_eq!(
            ok.permissions,
            vec![("doc:1".into(), vec!["room:write".into()])]
        );
        for (bad, status) in [
            (&b"not json"[..], 400),
            (br#"{"permissions":{"a":["room:write"]}}"#, 422),
            (br#"{"userId":"","permissions":{"a":["room:write"]}}"#, 422),
            (br#"{"userId":"u"}"#, 422),
            (br#"{"userId":"u","permissions":{"a":["room:admin"]}}"#, 422),
            (br#"{"userId":"u","permissions":{"a":[]}}"#, 422),
            (
                br#"{"userId":"u","permissions":{"a*b":["room:read"]}}"#,
                422,
            ),
            (
                br#"{"userId":"u","permissions":{"a**":["room:read"]}}"#,
                422,
            ),
            (br#"{"userId":"u","permissions":{"**":["room:read"]}}"#, 422),
            (br#"{"userId":"u","permissions":{"":["room:read"]}}"#, 422),
            (
                br#"{"userId":"u","permissions":{"a":["room:storage:admin"]}}"#,
                422,
            ),
            (
                br#"{"userId":"u","userInfo":{"name":1},"permissions":{"a":["room:read"]}}"#,
                422,
            ),
        ] {
            assert_eq!(
                check(bad).unwrap_err().0,
                status,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn room_patterns_are_checked_as_the_sdk_checks_them() {
        let body = |room: &str| {
            json!({"userId": "u", "permissions": {room: ["room:read"]}})
                .to_string()
                .into_bytes()
        };
        let long = "a".repeat(MAX_ID);
        for good in ["*", "a", "a*", "doc:1", &long, &format!("{long}*")] {
            assert!(check(&body(good)).is_ok(), "{good:?} refused");
        }
        for bad in ["", "**", "a**", "*a", "a*b", &format!("{long}a")] {
            assert!(check(&body(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_scope_liveblocks_documents_is_taken_and_no_other() {
        // liveblocks-core's Permission.ts, written out here so that the list above is checked.
        let documented = [
            "room:write",
            "room:read",
            "room:presence:read",
            "room:presence:none",
            "room:storage:read",
            "room:storage:write",
            "room:storage:none",
            "room:comments:write",
            "room:comments:read",
            "room:comments:none",
            "room:feeds:read",
            "room:feeds:write",
            "room:feeds:none",
            "room:presence:write",
            "comments:write",
            "comments:read",
            "feeds:write",
        ];
        for scope in documented {
            let body = json!({"userId": "u", "permissions": {"doc:1": [scope]}});
            assert!(
                check(body.to_string().as_bytes()).is_ok(),
                "{scope} refused"
            );
        }
        for scope in [
            "room:presence:write:x",
            "room:admin",
            "feeds:read",
            "room:everything",
        ] {
            let body = json!({"userId": "u", "permissions": {"doc:1": [scope]}});
            assert!(check(body.to_string().as_bytes()).is_err(), "{scope} taken");
        }
    }

    #[test]
    fn a_token_without_permissions_is_still_issued_as_the_sdk_expects() {
        let a = check(br#"{"userId":"u","permissions":{}}"#).unwrap();
        assert!(a.permissions.is_empty());
        assert!(admits(&token(&a, 0, 1_000, TOKEN_SECS), "doc:1", 1_001).is_err());
    }

    #[test]
    fn the_tokens_lifetime_is_the_one_asked_for() {
        let a = check(br#"{"userId":"u","permissions":{"doc:1":["room:write"]}}"#).unwrap();
        let t = token(&a, 0, 1_000, 7_200);
        assert!(admits(&t, "doc:1", 8_199).is_ok());
        assert!(admits(&t, "doc:1", 8_200).is_err());
    }
}
