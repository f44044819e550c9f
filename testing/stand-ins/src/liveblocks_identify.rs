//! `POST /v2/identify-user` of the Liveblocks stand-in: checks the body as Liveblocks
//! describes it (a `userId`, optional `groupIds`, `userInfo` and `organizationId`) and answers
//! `{"token": "<JWT>"}`. The token is shaped like Liveblocks' ID tokens (`k: "id"`, `uid`,
//! `gids`, `ui`, an hour's `exp`): it carries no permissions (those are kept on the rooms) and
//! no valid signature: only the stand-in's own records say whom it identifies.

use crate::liveblocks_authorize::{MAX_ID, Refusal, TOKEN_SECS, invalid, json_object, user};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// One ID token the stand-in issued: whom it identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// `userId`.
    pub user_id: String,
    /// `groupIds`, in the order sent (empty when absent).
    pub group_ids: Vec<String>,
    /// `userInfo` (an empty object when absent).
    pub user_info: Value,
    /// `organizationId`, when sent.
    pub organization_id: Option<String>,
}

fn id_string(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID)
        .map(Into::into)
}

/// Checks a request body.
pub fn check(body: &[u8]) -> Result<Identification, Refusal> {
    let obj = json_object(body)?;
    let (user_id, user_info) = user(&obj)?;
    let group_ids =
        match obj.get("groupIds") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(id_string).collect::<Option<_>>().ok_or_else(
                || {
                    invalid(
                        "groupIds must be an array of non-empty strings of at most 128 characters.",
                    )
                },
            )?,
            Some(_) => return Err(invalid("groupIds must be an array of strings.")),
        };
    let organization_id = match obj.get("organizationId") {
        None => None,
        Some(v) => Some(id_string(v).ok_or_else(|| {
            invalid("organizationId must be a non-empty string of at most 128 characters.")
        })?),
    };
    Ok(Identification {
        user_id,
        group_ids,
        user_info,
        organization_id,
    })
}

/// An ID-token-shaped JWT for `i` (header, claims, a placeholder signature).
pub fn token(i: &Identification, serial: u64, now: u64) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let mut claims = json!({
        "k": "id", "pid": "standin", "uid": i.user_id, "gids": i.group_ids, "ui": i.user_info,
        "iat": now, "exp": now + TOKEN_SECS, "jti": format!("standin-id-{serial}"),
    });
    if let Some(org) = &i.organization_id {
        claims["oid"] = json!(org);
    }
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.standin-signature", part(&header), part(&claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_as_liveblocks_describes_them() {
        let ok = check(
            br#"{"userId":"u","groupIds":["g1","g2"],"userInfo":{"name":"Ada","avatar":"https://a/b.png"}}"#,
        )
        .unwrap();
        assert_eq!(ok.user_id, "u");
        assert_eq!(ok.group_ids, vec!["g1".to_owned(), "g2".to_owned()]);
        assert_eq!(ok.user_info["name"], "Ada");
        assert_eq!(ok.organization_id, None);
        let bare = check(br#"{"userId":"u"}"#).unwrap();
        assert!(bare.group_ids.is_empty() && bare.user_info == json!({}));
        for (bad, status) in [
            (&b"not json"[..], 400),
            (br#"["u"]"#, 422),
            (br#"{}"#, 422),
            (br#"{"userId":""}"#, 422),
            (br#"{"userId":7}"#, 422),
            (br#"{"userId":"u","groupIds":"g"}"#, 422),
            (br#"{"userId":"u","groupIds":[""]}"#, 422),
            (br#"{"userId":"u","groupIds":[1]}"#, 422),
            (br#"{"userId":"u","userInfo":"Ada"}"#, 422),
            (br#"{"userId":"u","userInfo":{"avatar":1}}"#, 422),
            (br#"{"userId":"u","organizationId":""}"#, 422),
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
    fn the_token_identifies_without_permissions() {
        let i = check(br#"{"userId":"u","groupIds":["g"],"organizationId":"o"}"#).unwrap();
        let t = token(&i, 3, 1_000);
        let claims = t.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["k"], "id");
        assert_eq!(claims["uid"], "u");
        assert_eq!(claims["gids"], json!(["g"]));
        assert_eq!(claims["oid"], "o");
        assert_eq!(claims["exp"], 1_000 + TOKEN_SECS);
        assert!(claims.get("perms").is_none());
    }
}
