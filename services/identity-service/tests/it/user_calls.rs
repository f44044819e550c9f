//! Every user call of identity-service made with one token, for the tests of refused callers
//! (bans, deletions).

use crate::support::{Env, bearer};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;

pub type Answers = Vec<(&'static str, Result<(), Code>)>;

/// A request with `user`'s token issued at `iat`.
pub fn as_user<T>(env: &Env, user: &str, iat: i64, msg: T) -> Request<T> {
    let mut claims = env
        .issuers
        .clerk
        .claims(user, "Token Name", "token@example.org", None);
    claims["iat"] = iat.into();
    claims["nbf"] = iat.into();
    bearer(msg, &env.issuers.clerk.sign(&claims))
}

/// What each user call answers to `user`'s token issued at `iat` (another user asked for is
/// `user_other`): Ok, or the status code, a PERMISSION_DENIED checked to say `refusal`.
pub async fn calls(
    env: &Env,
    c: &mut IdentityServiceClient<Channel>,
    user: &str,
    iat: i64,
    refusal: &str,
) -> Answers {
    let code = |r: Result<(), tonic::Status>| {
        r.map_err(|s| {
            if s.code() == Code::PermissionDenied {
                assert!(s.message().contains(refusal), "{s:?}");
            }
            s.code()
        })
    };
    let get = |id: &str| pb::GetUserRequest {
        clerk_id: id.into(),
    };
    let batch = pb::BatchGetUsersRequest {
        clerk_ids: vec![user.into(), "user_other".into()],
    };
    let current = c.get_current_user(as_user(env, user, iat, pb::GetCurrentUserRequest {}));
    let current = code(current.await.map(drop));
    let own = code(
        c.get_user(as_user(env, user, iat, get(user)))
            .await
            .map(drop),
    );
    let other = c.get_user(as_user(env, user, iat, get("user_other")));
    let other = code(other.await.map(drop));
    let batch = code(
        c.batch_get_users(as_user(env, user, iat, batch))
            .await
            .map(drop),
    );
    let store = c.store_user(as_user(env, user, iat, pb::StoreUserRequest {}));
    let store = code(store.await.map(drop));
    vec![
        ("GetCurrentUser", current),
        ("GetUser self", own),
        ("GetUser other", other),
        ("BatchGetUsers", batch),
        ("StoreUser", store),
    ]
}

/// Every call answering `r`.
pub fn all(r: Result<(), Code>) -> Answers {
    let methods = [
        "GetCurrentUser",
        "GetUser self",
        "GetUser other",
        "BatchGetUsers",
        "StoreUser",
    ];
    methods.into_iter().map(|m| (m, r)).collect()
}
