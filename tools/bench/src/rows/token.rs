//! The token check per call against the bare signature verification of the same token: on
//! first sight of each token, and on tokens seen before (the verified-token cache).

use crate::load::Bench;
use crate::report::Report;
use anyhow::Result;
use serde_json::json;
use stand_ins::JwksServer;
use std::time::{Duration, Instant};
use token_auth::signing::{SigningKey, now_secs};

/// The two token rows.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let s = &b.scale;
    let rows = &mut report.rows;
    // 3. Token check cost per call vs the bare signature verification of the same token.
    let vkey = SigningKey::generate_rsa()?;
    let jwks = JwksServer::start(SigningKey::jwks(&[&vkey])).await?;
    let auth = token_auth::Authenticator::new(
        Some(token_auth::ClerkSettings {
            issuer: jwks.issuer(),
            jwks: token_auth::KeySource::Url(jwks.jwks_url()),
            audience: "convex".into(),
            authorized_parties: vec![],
            require_azp: true,
            leeway_secs: 5,
            max_lifetime_secs: 3600,
            accept_pending_sessions: false,
        }),
        None,
        token_auth::KeyStoreOptions::default(),
    );
    for st in auth.key_stores() {
        st.wait_ready(Duration::from_secs(5)).await;
    }
    let now = now_secs();
    // Every token is distinct (its `sid`), so a first sight cannot hit the verified-token cache.
    let distinct = (s.verifies / 10).max(50);
    let sign = |i: usize| {
        vkey.sign(&json!({"iss": jwks.issuer(), "sub": "user_1", "sid": format!("sess_{i}"), "aud": "convex", "iat": now, "nbf": now, "exp": now + 3600, "org_id": "org_1", "org_role": "org:admin"}))
    };
    let rounds: [Vec<String>; 2] = [
        (0..distinct).map(sign).collect::<Result<_, _>>()?,
        (distinct..2 * distinct)
            .map(sign)
            .collect::<Result<_, _>>()?,
    ];
    let decoding =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(vkey.public_jwk())?)?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["convex"]);
    v.set_issuer(&[jwks.issuer()]);
    let bare = |t: &str| jsonwebtoken::decode::<serde_json::Value>(t, &decoding, &v).is_ok();
    let ours = |t: &str| auth.verify(t).is_ok();
    let time = |tokens: &[String], passes: usize, f: &dyn Fn(&str) -> bool| {
        let t = Instant::now();
        let mut ok = 0;
        for _ in 0..passes {
            for token in tokens {
                ok += usize::from(f(token));
            }
        }
        (
            t.elapsed().as_secs_f64() * 1e6 / (passes * tokens.len()) as f64,
            ok,
        )
    };
    // First sight: interleaved rounds on fresh tokens, the better of two each.
    let (b1, _) = time(&rounds[0], 1, &bare);
    let (o1, ok1) = time(&rounds[0], 1, &ours);
    let (b2, _) = time(&rounds[1], 1, &bare);
    let (o2, ok2) = time(&rounds[1], 1, &ours);
    let (ours_us, base_us) = (o1.min(o2), b1.min(b2));
    rows.push([
        format!(
            "token check per call, first sight of each token, cached key ({} tokens)",
            2 * distinct
        ),
        format!("{ours_us:.1} µs ({} verified)", ok1 + ok2),
        format!("{base_us:.1} µs (jsonwebtoken decode)"),
        format!("{:.2}x (goal <= 1.2)", ours_us / base_us),
    ]);
    // Repeats: the same tokens again (a client reuses its token until it expires).
    let passes = (s.verifies / distinct).max(1);
    let (rb, _) = time(&rounds[0], passes, &bare);
    let (ro, okr) = time(&rounds[0], passes, &ours);
    rows.push([
        format!(
            "token check per call, a token seen before ({} calls)",
            passes * distinct
        ),
        format!("{ro:.1} µs ({okr} verified)"),
        format!("{rb:.1} µs (jsonwebtoken decode)"),
        format!("{:.2}x (no goal: the verified-token cache)", ro / rb),
    ]);
    Ok(())
}
