//! What one member's room tokens may take of the project's Liveblocks key: a rate per user
//! (`USER_ROOM_TOKENS_PER_MINUTE`), checked before Liveblocks is asked.

use crate::room_access::{ORG, ask, fixture, token_of};
use crate::support;
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
