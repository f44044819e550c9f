//! How long a Liveblocks access token lives, read from its own claims: the sweep after a
//! deletion (`LIVEBLOCKS_SWEEP_AFTER_SECS`) is only sound while every token issued before the
//! deletion has expired by then, and Liveblocks publishes no lifetime. The claims are read
//! without checking the signature (as liveblocks-core's `parseAuthToken` does): the token came
//! straight from Liveblocks over the authenticated call, and only its times are used.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use std::time::Duration;

/// The clock skew between Liveblocks and us that [`token_lifetime`] forgives.
pub const SKEW_SECS: u64 = 300;

/// How long `token` lets its holder in: `exp - iat` when it has an `iat` (both Liveblocks'
/// clock, so no skew between its clock and ours counts), and never less than `exp - now` less
/// [`SKEW_SECS`] (an `iat` set just before a far `exp` does not hide it). Without an `iat`,
/// `exp - now`. `Err` says why it cannot be told (no JWT, no numeric `exp`, `exp` not after
/// `iat`): never a part of the token.
pub fn token_lifetime(token: &str, now_unix: u64) -> Result<Duration, &'static str> {
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a JWT");
    };
    // Some encoders pad base64url; the JWT form has none.
    let claims = URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|_| "the token's claims are not base64url")?;
    let claims: Value =
        serde_json::from_slice(&claims).map_err(|_| "the token's claims are not JSON")?;
    let exp = claims
        .get("exp")
        .and_then(seconds)
        .ok_or("the token has no numeric exp")?;
    let from = match claims.get("iat") {
        None | Some(Value::Null) => now_unix,
        Some(iat) => seconds(iat).ok_or("the token's iat is not a number")?,
    };
    let left = exp.saturating_sub(now_unix).saturating_sub(SKEW_SECS);
    match exp.checked_sub(from) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs.max(left))),
        _ => Err("the token's exp is not after its iat (or now)"),
    }
}

/// A JWT time (NumericDate): whole seconds; a fraction is rounded up (the longer lifetime).
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            .map(|f| f.ceil() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", part(&json!({"alg": "RS256"})), part(&claims))
    }

    #[test]
    fn the_lifetime_is_exp_minus_iat_or_exp_minus_now() {
        let now = 1_700_000_000;
        assert_eq!(
            token_lifetime(&jwt(json!({"iat": now - 100, "exp": now + 3500})), now),
            Ok(Duration::from_secs(3600)),
            "issued by a clock 100 s behind ours: still an hour"
        );
        assert_eq!(
            token_lifetime(&jwt(json!({"exp": now + 7200})), now),
            Ok(Duration::from_secs(7200))
        );
        assert_eq!(
            token_lifetime(&jwt(json!({"iat": now, "exp": now as f64 + 59.5})), now),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            token_lifetime(&jwt(json!({"iat": now + 5, "exp": now + 3605})), now),
            Ok(Duration::from_secs(3600)),
            "issued by a clock 5 s ahead of ours: still an hour"
        );
        // An iat just before a far exp does not make a day-long token an hour's.
        assert_eq!(
            token_lifetime(
                &jwt(json!({"iat": now + 86_400 - 3600, "exp": now + 86_400})),
                now
            ),
            Ok(Duration::from_secs(86_400 - SKEW_SECS))
        );
    }

    #[test]
    fn a_token_whose_lifetime_cannot_be_told_is_an_error() {
        let now = 1_700_000_000;
        for bad in [
            "not-a-jwt".to_owned(),
            "a.b".to_owned(),
            "a.!!!.c".to_owned(),
            format!("a.{}.c", URL_SAFE_NO_PAD.encode("not json")),
            jwt(json!({"iat": now})),
            jwt(json!({"exp": "soon"})),
            jwt(json!({"exp": -5})),
            jwt(json!({"iat": "x", "exp": now + 60})),
            jwt(json!({"iat": now, "exp": now})),
            jwt(json!({"exp": now - 1})),
        ] {
            assert!(token_lifetime(&bad, now).is_err(), "{bad}");
        }
    }
}
