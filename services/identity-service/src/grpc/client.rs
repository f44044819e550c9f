//! The calls of clients: `StoreUser` from a user's token, the current user, one
//! user or a batch by id (each caller sees what its token allows).

use super::*;

pub(super) async fn store_user(
    api: &IdentityApi,
    req: Request<pb::StoreUserRequest>,
) -> Result<Response<pb::StoreUserResponse>, Status> {
    let p = principal(&req)?;
    let user = p
        .as_user()
        .ok_or_else(|| Status::permission_denied("StoreUser is for user tokens"))?;
    validate::user_id("token sub", &user.user_id)?;
    // Made displayable as the gateway makes Clerk's names: the token's name replaces the
    // gateway's cleaned one when the token is newer. Nothing visible left is no name, which
    // keeps the name held (or makes a new user "Anonymous").
    let name = user.name.as_deref().and_then(validate::claimed_name);
    let email = user.email.clone().filter(|e| validate::email(e).is_ok());
    let issued_at =
        chrono::DateTime::from_timestamp(user.issued_at, 0).unwrap_or_else(chrono::Utc::now);
    let stored = users::store_user(
        &api.pool,
        users::TokenClaims {
            clerk_id: user.user_id.clone(),
            name,
            email,
            issued_at,
        },
    )
    .await;
    api.lookups.forget(&user.user_id);
    let (record, created) = stored?;
    Ok(Response::new(pb::StoreUserResponse {
        user: Some(to_proto(&record, true)),
        created,
    }))
}

pub(super) async fn get_current_user(
    api: &IdentityApi,
    req: Request<pb::GetCurrentUserRequest>,
) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
    let p = principal(&req)?;
    let user = p
        .as_user()
        .ok_or_else(|| Status::permission_denied("GetCurrentUser is for user tokens"))?;
    let seen = api.seen(&req)?;
    let record = api
        .lookups
        .caller(&user.user_id, seen)
        .await?
        .admit(user.issued_at)?
        .ok_or_else(|| {
            Status::not_found("user not synced yet: call StoreUser or wait for the Clerk webhook")
        })?;
    Ok(Response::new(pb::GetCurrentUserResponse {
        user: Some(to_proto(&record, true)),
    }))
}

pub(super) async fn get_user(
    api: &IdentityApi,
    req: Request<pb::GetUserRequest>,
) -> Result<Response<pb::GetUserResponse>, Status> {
    let p = principal(&req)?;
    let seen = api.seen(&req)?;
    refuse_caller(api, &p, seen.clone()).await?;
    let id = req.into_inner().clerk_id;
    validate::user_id("clerk_id", &id)?;
    // A deleted user is not found, as one never held.
    let record = api
        .lookups
        .get(&id, seen)
        .await?
        .live()
        .ok_or_else(|| Status::not_found(format!("no user {id}")))?;
    let full = sees_everything(&p, &id);
    Ok(Response::new(pb::GetUserResponse {
        user: Some(to_proto(&record, full)),
    }))
}

pub(super) async fn batch_get_users(
    api: &IdentityApi,
    req: Request<pb::BatchGetUsersRequest>,
) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
    let p = principal(&req)?;
    let seen = api.seen(&req)?;
    refuse_caller(api, &p, seen.clone()).await?;
    let ids = req.into_inner().clerk_ids;
    if ids.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_BATCH} clerk_ids per call, got {}",
            ids.len()
        )));
    }
    for id in &ids {
        validate::user_id("clerk_ids[]", id)?;
    }
    let unique = distinct(ids);
    let (mut conn, on_replica) = api
        .reads
        .get_routed(seen.as_ref())
        .await
        .map_err(Error::from)?;
    // A read that fails on the replica (lost connection, conflict with recovery) is read
    // again on the primary.
    let found = match users::get_users_on(&mut conn, &unique).await {
        Err(e) if on_replica && service_runtime::replica::read_again_on_primary(&e) => {
            drop(conn);
            let mut conn = api
                .reads
                .primary_after_replica_error(&e)
                .await
                .map_err(Error::from)?;
            users::get_users_on(&mut conn, &unique).await?
        }
        found => found?,
    };
    let found: HashMap<String, UserRecord> =
        found.into_iter().map(|u| (u.clerk_id.clone(), u)).collect();
    let mut users_out = Vec::with_capacity(found.len());
    let mut missing = Vec::new();
    for id in unique {
        match found.get(&id) {
            Some(u) => users_out.push(to_proto(u, sees_everything(&p, &id))),
            None => missing.push(id),
        }
    }
    Ok(Response::new(pb::BatchGetUsersResponse {
        users: users_out,
        missing_clerk_ids: missing,
    }))
}

/// Refuses a user deleted in Clerk, or whose sessions Clerk revoked (a ban) after their token
/// was issued, by the caller's own row (through the user cache, else the primary; a caller
/// never synced passes).
/// Internal callers pass.
async fn refuse_caller(api: &IdentityApi, p: &Principal, seen: Option<Lsn>) -> Result<(), Status> {
    let Principal::User(user) = p else {
        return Ok(());
    };
    api.lookups
        .caller(&user.user_id, seen)
        .await?
        .admit(user.issued_at)?;
    Ok(())
}

/// Each id once, in the order first asked: repeats would make one small request answer
/// hundreds of copies of a record.
fn distinct(ids: Vec<String>) -> Vec<String> {
    let mut asked = HashSet::with_capacity(ids.len());
    ids.into_iter()
        .filter(|id| asked.insert(id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_keeps_the_first_of_each_id_in_order() {
        let ids = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(super::distinct(ids), ["b", "a", "c"]);
    }
}
