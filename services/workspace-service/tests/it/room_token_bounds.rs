//! What one member's room tokens may take of the project's Liveblocks key: a rate per user
//! (`USER_ROOM_TOKENS_PER_MINUTE`), checked before Liveblocks is asked; and Liveblocks
//! rate-limiting one caller (429) tells that caller when to retry without closing the gate
//! that refuses every user's tokens during an outage.

use crate::room_access::{ORG, ask, fixture, token_of};
use crate::support;
use stand_ins::LiveblocksMode;
use tonic::Code;

#[tokio::test]
async fn a_member_over_the_room_token_rate_is_refused_while_another_still_gets_tokens() {
    let env = support::start_custom(true, |c| c.watch.calls.user_room_tokens_per_minute = 3).await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let looping = token_of(&env, "user_m", ORG, "org:member");
    for _ in 0..3 {
        c.authorize_liveblocks_room(ask(&looping, &doc))
            .await
            .unwrap();
    }
    let limited = c
        .authorize_liveblocks_room(ask(&looping, &doc))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited.message().contains("too many room tokens"),
        "{limited:?}"
    );
    let retry_after: u64 = limited
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("retry-after");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(
        env.liveblocks.authorize_requests(),
        3,
        "a refused call never reaches Liveblocks"
    );
    // Another member of the same workspace is not affected.
    let other = token_of(&env, "user_a", ORG, "org:admin");
    c.authorize_liveblocks_room(ask(&other, &doc))
        .await
        .expect("another member still gets a token");
}

#[tokio::test]
async fn liveblocks_rate_limiting_one_caller_leaves_the_gate_open_for_the_others() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let looping = token_of(&env, "user_m", ORG, "org:member");
    // More 429s in a row than the failures that close the gate (5): each is asked of
    // Liveblocks and answered UNAVAILABLE with Liveblocks' Retry-After.
    env.liveblocks.set_mode(LiveblocksMode::RateLimited {
        retry_after_secs: 7,
    });
    let asked = env.liveblocks.authorize_requests();
    for _ in 0..8 {
        let e = c
            .authorize_liveblocks_room(ask(&looping, &doc))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("rate-limiting"), "{e:?}");
        assert_eq!(e.metadata().get("retry-after").unwrap(), "7", "{e:?}");
    }
    assert_eq!(env.liveblocks.authorize_requests(), asked + 8);
    // Liveblocks answers again: another member's token is issued at once, not after the
    // gate's 5 s.
    env.liveblocks.set_mode(LiveblocksMode::Up);
    let other = token_of(&env, "user_a", ORG, "org:admin");
    c.authorize_liveblocks_room(ask(&other, &doc))
        .await
        .expect("the gate stayed open");
    assert_eq!(
        env.metric(r#"liveblocks_room_tokens_total{outcome="rate_limited"}"#)
            .await,
        Some(8.0)
    );
}

/// `Retry-After` may also be an HTTP-date (RFC 9110): the caller is told the seconds until it,
/// not the 1 s of an unreadable one.
#[tokio::test]
async fn a_retry_after_given_as_an_http_date_is_passed_on_in_seconds() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let member = token_of(&env, "user_m", ORG, "org:member");
    env.liveblocks.set_mode(LiveblocksMode::RateLimitedUntil {
        retry_after_secs: 120,
    });
    let e = c
        .authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let retry_after: u64 = e
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("retry-after");
    assert!((110..=120).contains(&retry_after), "{retry_after}");
}
