//! What the stand-in answers, route by route, as Clerk's Backend API specification
//! (2026-05-12) documents it:
//!
//! - Routes live under `/v1`; any other path answers a plain `404 page not found` (text, not
//!   Clerk's error shape: Clerk does not document its answer to an unknown route).
//! - A missing resource answers 404 with Clerk's error shape and code `resource_not_found`.
//! - Each route takes the query parameters its specification lists; any other answers 422
//!   `form_param_unknown`. Parameters it lists but the stand-in does not model answer 501, so
//!   a test using one fails loudly instead of getting a made-up answer.
//! - `GET /v1/users` answers a bare array; the other lists `{data, total_count}`. `limit` is
//!   1 to 500 (else 422), lists are newest first unless `order_by=+created_at`, and
//!   `GET /v1/users` pages with `starting_after` (a `created_at` ordering only, and not with a
//!   non-zero `offset`: 422 otherwise). The specification does not say what a cursor naming no
//!   user answers; its documented errors for the route are 400 and 422 ("invalid request
//!   parameters"), and Clerk deletes users for good, so a cursor naming an unknown or deleted
//!   user answers 422 `form_param_value_invalid` (never a page from where the user was).
//! - `GET /v1/instance` answers the instance the key belongs to.

use super::store::{Key, Ordered};
use super::{EmptyList, State};
use crate::http_server::{SeenRequest, json_response};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

type Response = hyper::Response<Full<Bytes>>;

/// Clerk's error shape.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"errors": [{"message": message, "long_message": message, "code": code}],
                "clerk_trace_id": "standin"}),
    )
}

/// What an unknown route answers.
pub fn no_route() -> Response {
    hyper::Response::builder()
        .status(404)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(b"404 page not found\n")))
        .expect("static response parts are valid")
}

fn not_found(what: &str) -> Response {
    error(
        404,
        "resource_not_found",
        &format!("No {what} was found with that id"),
    )
}

/// Decodes a form-encoded query value (`+` is a space, `%XX` a byte).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's parameters, decoded, in order.
pub fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// The parameters of `GET /v1/users` the specification lists.
const USERS: &[&str] = &[
    "email_address",
    "phone_number",
    "external_id",
    "username",
    "web3_wallet",
    "user_id",
    "organization_id",
    "query",
    "email_address_query",
    "phone_number_query",
    "username_query",
    "name_query",
    "banned",
    "last_active_at_before",
    "last_active_at_after",
    "last_active_at_since",
    "created_at_before",
    "created_at_after",
    "last_sign_in_at_before",
    "last_sign_in_at_after",
    "provider",
    "provider_user_id",
    "limit",
    "offset",
    "starting_after",
    "order_by",
];
/// `GET /v1/organizations`.
const ORGS: &[&str] = &[
    "include_members_count",
    "include_missing_member_with_elevated_permissions",
    "query",
    "user_id",
    "organization_id",
    "order_by",
    "limit",
    "offset",
];
/// `GET /v1/organizations/{id}`.
const ORG: &[&str] = &[
    "include_members_count",
    "include_missing_member_with_elevated_permissions",
];
/// `GET /v1/organizations/{id}/memberships`.
const ORG_MEMBERSHIPS: &[&str] = &[
    "order_by",
    "user_id",
    "email_address",
    "phone_number",
    "username",
    "web3_wallet",
    "role",
    "query",
    "email_address_query",
    "phone_number_query",
    "username_query",
    "name_query",
    "last_active_at_before",
    "last_active_at_after",
    "created_at_before",
    "created_at_after",
    "limit",
    "offset",
];
/// `GET /v1/users/{id}/organization_memberships`.
const USER_MEMBERSHIPS: &[&str] = &["limit", "offset"];
/// `GET /v1/organization_memberships`.
const MEMBERSHIPS: &[&str] = &["order_by", "limit", "offset"];
/// The parameters the stand-in answers as Clerk does; the others it lists are refused (501).
const MODELLED: &[&str] = &["limit", "offset", "order_by", "starting_after", "user_id"];

/// Whether `path` is one of the list routes (for `fail_lists_after`).
pub fn is_list(path: &str) -> bool {
    let Some(path) = path.strip_prefix("/v1/") else {
        return false;
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["users"]
            | ["organizations"]
            | ["organization_memberships"]
            | ["organizations", _, "memberships"]
            | ["users", _, "organization_memberships"]
    )
}

/// A checked list request.
struct List {
    limit: usize,
    offset: usize,
    oldest_first: bool,
    starting_after: Option<String>,
    user_ids: Vec<String>,
}

/// Checks `params` against the route's documented ones and reads the list parameters.
fn checked(params: &[(String, String)], documented: &[&str]) -> Result<List, Response> {
    for (name, _) in params {
        if !documented.contains(&name.as_str()) {
            return Err(error(
                422,
                "form_param_unknown",
                &format!("{name} is not a valid parameter for this request."),
            ));
        }
        if !MODELLED.contains(&name.as_str()) {
            return Err(error(
                501,
                "stand_in_unmodelled",
                &format!("the stand-in does not model the parameter {name}"),
            ));
        }
    }
    let one = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match one("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        Some(_) => {
            return Err(error(
                422,
                "form_param_value_invalid",
                "limit must be between 1 and 500",
            ));
        }
    };
    let offset = match one("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => {
            return Err(error(
                422,
                "form_param_value_invalid",
                "offset must be an integer greater or equal to zero",
            ));
        }
    };
    let oldest_first = match one("order_by") {
        None | Some("-created_at") => false,
        Some("created_at" | "+created_at") => true,
        Some(other) => {
            return Err(error(
                501,
                "stand_in_unmodelled",
                &format!("the stand-in does not model order_by={other}"),
            ));
        }
    };
    let starting_after = one("starting_after").map(str::to_owned);
    if starting_after.is_some() && offset > 0 {
        return Err(error(
            422,
            "form_param_value_invalid",
            "starting_after cannot be combined with a non-zero offset",
        ));
    }
    let mut user_ids = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "user_id") {
        match v.strip_prefix('+').unwrap_or(v) {
            id if id.starts_with('-') => {
                return Err(error(
                    501,
                    "stand_in_unmodelled",
                    "the stand-in does not model excluding user ids",
                ));
            }
            id => user_ids.push(id.to_owned()),
        }
    }
    Ok(List {
        limit,
        offset,
        oldest_first,
        starting_after,
        user_ids,
    })
}

/// The page `q` asks for of `keys` (in ascending order).
fn page_of(keys: &[Key], q: &List) -> Vec<Key> {
    let take = |it: &mut dyn Iterator<Item = &Key>| {
        it.skip(q.offset).take(q.limit).cloned().collect::<Vec<_>>()
    };
    if q.oldest_first {
        take(&mut keys.iter())
    } else {
        take(&mut keys.iter().rev())
    }
}

fn wrapped(values: Vec<Value>, total: usize) -> Response {
    json_response(200, &json!({"data": values, "total_count": total}))
}

/// What a wrapped list answers while [`State::empty_lists`] says so, as a proxy or a cache in
/// front of Clerk might.
fn emptied(shape: EmptyList) -> Response {
    match shape {
        EmptyList::Wrapped => json_response(200, &json!({"data": []})),
        EmptyList::Bare => json_response(200, &json!([])),
    }
}

/// The answer to an authorized GET.
pub fn answer(state: &mut State, req: &SeenRequest) -> Response {
    let Some(path) = req.path.strip_prefix("/v1/") else {
        return no_route();
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let params = params(&req.query);
    let documented: &[&str] = match segments.as_slice() {
        ["instance"] | ["users", _] => &[],
        ["users"] => USERS,
        ["users", _, "organization_memberships"] => USER_MEMBERSHIPS,
        ["organizations"] => ORGS,
        ["organizations", _] => ORG,
        ["organizations", _, "memberships"] => ORG_MEMBERSHIPS,
        ["organization_memberships"] => MEMBERSHIPS,
        _ => return no_route(),
    };
    let q = match checked(&params, documented) {
        Ok(q) => q,
        Err(refusal) => return refusal,
    };
    let members = |state: &State, keys: &[Key]| -> Vec<Value> {
        keys.iter()
            .filter_map(|k| state.memberships.all.by_key(k).cloned())
            .collect()
    };
    let listing = matches!(
        segments.as_slice(),
        ["organizations"]
            | ["organization_memberships"]
            | ["organizations", _, "memberships"]
            | ["users", _, "organization_memberships"]
    );
    if let (Some(shape), true) = (state.empty_lists, listing) {
        return emptied(shape);
    }
    match segments.as_slice() {
        ["instance"] => json_response(
            200,
            &json!({"object": "instance", "id": state.instance_id, "environment_type": "development",
                    "allowed_origins": null, "workspace_id": null}),
        ),
        ["users"] => users_page(state, &q),
        ["users", id] => state
            .users
            .get(id)
            .map_or_else(|| not_found("user"), |u| json_response(200, u)),
        ["users", id, "organization_memberships"] => {
            let keys = state.memberships.of_user(id);
            let page = page_of(&keys, &q);
            wrapped(members(state, &page), keys.len())
        }
        ["organizations"] => {
            let keys = state.orgs.keys().to_vec();
            let page = page_of(&keys, &q);
            let data: Vec<Value> = page
                .iter()
                .filter_map(|k| state.orgs.by_key(k).cloned())
                .collect();
            listed(&mut state.remove_orgs_when_listed, &mut state.orgs, &data);
            wrapped(data, keys.len())
        }
        ["organizations", id] => state
            .orgs
            .get(id)
            .map_or_else(|| not_found("organization"), |o| json_response(200, o)),
        ["organizations", id, "memberships"] => {
            if state.orgs.get(id).is_none() {
                return not_found("organization");
            }
            let mut keys = state.memberships.of_org(id);
            if !q.user_ids.is_empty() {
                keys.retain(|k| {
                    state.memberships.all.by_key(k).is_some_and(|m| {
                        q.user_ids
                            .iter()
                            .any(|u| m["public_user_data"]["user_id"] == u.as_str())
                    })
                });
            }
            by_user(state, &mut keys);
            let page = page_of(&keys, &q);
            wrapped(members(state, &page), keys.len())
        }
        ["organization_memberships"] => {
            let mut keys = state.memberships.all.keys().to_vec();
            by_user(state, &mut keys);
            let page = page_of(&keys, &q);
            wrapped(members(state, &page), keys.len())
        }
        _ => no_route(),
    }
}

/// Orders membership `keys` by their user while [`State::memberships_by_user`] says so.
fn by_user(state: &State, keys: &mut [Key]) {
    if state.memberships_by_user {
        keys.sort_by_cached_key(|k| {
            state
                .memberships
                .all
                .by_key(k)
                .and_then(|m| m["public_user_data"]["user_id"].as_str().map(str::to_owned))
        });
    }
}

/// Removes the resources of `page` that were to go once listed (deleted in Clerk between pages,
/// or right after a page named them).
fn listed(pending: &mut Vec<String>, store: &mut Ordered, page: &[Value]) {
    for id in page.iter().filter_map(|v| v["id"].as_str()) {
        if let Some(i) = pending.iter().position(|r| r == id) {
            pending.swap_remove(i);
            store.remove(id);
        }
    }
}

/// `GET /v1/users`: a bare array, by offset or after a cursor.
fn users_page(state: &mut State, q: &List) -> Response {
    let cursor = q.starting_after.as_ref().filter(|_| !state.ignore_cursor);
    let Some(cursor) = cursor else {
        let page = page_of(state.users.keys(), q);
        let data: Vec<Value> = page
            .iter()
            .filter_map(|k| state.users.by_key(k).cloned())
            .collect();
        listed(&mut state.remove_when_listed, &mut state.users, &data);
        return json_response(200, &Value::Array(data));
    };
    let Some(at) = state.users.position(cursor).cloned() else {
        return error(
            422,
            "form_param_value_invalid",
            "starting_after does not name a user of this instance",
        );
    };
    let data = if q.oldest_first {
        state.users.after(&at, q.limit)
    } else {
        state.users.before(&at, q.limit)
    };
    listed(&mut state.remove_when_listed, &mut state.users, &data);
    json_response(200, &Value::Array(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_as_forms() {
        assert_eq!(
            params("order_by=%2Bcreated_at&user_id=user_1&x"),
            vec![
                ("order_by".into(), "+created_at".into()),
                ("user_id".into(), "user_1".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(decode("a+b%2"), "a b%2");
    }
}
