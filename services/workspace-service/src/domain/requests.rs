//! Request ids of creates (AIP-155): a client picks a UUID per create and sends it again with
//! every retry. The create records which row it made under that id in its own transaction
//! (`create_requests`), so a retry after a lost answer (the create committed, the client saw
//! UNAVAILABLE or DEADLINE_EXCEEDED) answers that row instead of creating a second one.

use super::access::Caller;
use crate::error::Error;
use crate::model::ItemKind;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use std::time::Duration;
use uuid::Uuid;

/// How long a request id answers its create: a day, far beyond any client's retries.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The field, as the API names it.
pub const FIELD: &str = "request_id";

/// Parses a request's `request_id`: empty is none; anything else must be a UUID other than
/// the nil UUID (which every create of a careless client would share).
pub fn parse(value: &str) -> Result<Option<Uuid>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    let id = input_validation::uuid(FIELD, value)?;
    if id.is_nil() {
        return Err(Error::Invalid(format!(
            "{FIELD} must be a fresh UUID per create, not the nil UUID"
        )));
    }
    Ok(Some(id))
}

/// What a create makes (`create_requests.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Room,
    Item(ItemKind),
    Meeting,
}

impl Kind {
    /// The text stored (the table's CHECK lists the same six).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Room => "room",
            Kind::Item(ItemKind::Document) => "document",
            Kind::Item(ItemKind::CodeFile) => "code_file",
            Kind::Item(ItemKind::Whiteboard) => "whiteboard",
            Kind::Meeting => "meeting",
        }
    }

    /// What the answer calls one row of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Item(i) => i.noun(),
            other => other.as_str(),
        }
    }
}

/// Whose request ids a create is looked up among: a user's own, or, for a service, its
/// messages' author (`service:<author>`) or `service`. Clerk user ids start with `user_`, so
/// the two never meet.
pub fn requester(caller: &Caller, author: Option<&str>) -> String {
    match (caller.user_id(), author) {
        (Some(user), _) => user.to_owned(),
        (None, Some(author)) => format!("service:{author}"),
        (None, None) => "service".to_owned(),
    }
}

/// A create that carries a request id.
#[derive(Debug, Clone)]
pub struct Request {
    pub workspace: Uuid,
    pub requester: String,
    pub id: Uuid,
    pub kind: Kind,
    /// The channel, room or workspace the row is created in.
    pub parent: Uuid,
}

/// What [`claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The id is new: create the row with the id offered.
    New,
    /// An earlier attempt of this request created this row: answer it, create nothing.
    Earlier(Uuid),
}

/// Records, in the create's transaction and before the row is written, that `request`
/// creates the row `fresh`, unless an earlier attempt did already. A concurrent attempt with
/// the same id waits on the key until the first commits (then answers its row) or rolls back
/// (then claims the id itself). Reused for another kind or parent: INVALID_ARGUMENT.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    request: &Request,
    fresh: Uuid,
) -> Result<Claimed, Error> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = SqlUuid)]
        parent_id: Uuid,
        #[diesel(sql_type = SqlUuid)]
        resource_id: Uuid,
    }
    // The no-op update returns the row an earlier attempt committed (locked until this
    // transaction ends), in the same statement that would insert it.
    let held: Held = prepared(
        "INSERT INTO create_requests (workspace_id, requester, request_id, kind, parent_id, resource_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (workspace_id, requester, request_id) DO UPDATE SET kind = create_requests.kind
         RETURNING kind, parent_id, resource_id",
    )
    .bind::<SqlUuid, _>(request.workspace)
    .bind::<Text, _>(&request.requester)
    .bind::<SqlUuid, _>(request.id)
    .bind::<Text, _>(request.kind.as_str())
    .bind::<SqlUuid, _>(request.parent)
    .bind::<SqlUuid, _>(fresh)
    .one(conn)
    .await?;
    if held.resource_id == fresh {
        return Ok(Claimed::New);
    }
    if held.kind != request.kind.as_str() || held.parent_id != request.parent {
        return Err(Error::Invalid(format!(
            "{FIELD} was already used for another request (one that created a {}): pick a new UUID for each create, and reuse it only to retry that create",
            held.kind.replace('_', " ")
        )));
    }
    Ok(Claimed::Earlier(held.resource_id))
}

/// The answer to a retry whose row was deleted since the first attempt created it.
pub fn deleted_since(kind: Kind) -> Error {
    Error::NotFound(format!(
        "the {} this {FIELD} created was deleted since",
        kind.noun()
    ))
}

/// Deletes request ids older than `keep`, in batches; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, keep: Duration) -> diesel::QueryResult<usize> {
    const BATCH: i64 = 5000;
    let mut total = 0;
    loop {
        let n = prepared(
            "DELETE FROM create_requests WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM create_requests
                  WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
        )
        .bind::<Double, _>(keep.as_secs_f64())
        .bind::<BigInt, _>(BATCH)
        .execute(conn)
        .await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuids_or_empty() {
        assert_eq!(parse("").unwrap(), None);
        let id = Uuid::now_v7();
        assert_eq!(parse(&id.to_string()).unwrap(), Some(id));
        for bad in ["x", "1234", "00000000-0000-0000-0000-000000000000"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(FIELD), "{e}");
        }
    }

    #[test]
    fn users_and_services_never_share_request_ids() {
        let service = Caller::Service;
        assert_eq!(requester(&service, Some("user_a")), "service:user_a");
        assert_eq!(requester(&service, None), "service");
        assert!(!requester(&service, Some("user_a")).starts_with("user_"));
    }
}
