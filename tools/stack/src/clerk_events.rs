//! Signed Clerk webhooks as Clerk sends them, for the local stack's `send-sample` and `story`:
//! one payload per event type the gateway handles, shaped as in Clerk's event catalogue
//! (`UserJSON`, `OrganizationJSON`, `OrganizationMembershipJSON`, `DeletedObjectJSON`).

use crate::DEV_CLERK_INSTANCE;
use anyhow::{Result, bail};
use serde_json::{Value, json};

/// Every event type the gateway turns into a command.
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.deleted",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
];

/// What a sample is about.
#[derive(Debug, Clone)]
pub struct Sample {
    pub user: String,
    pub org: String,
    pub role: String,
    /// The user's first name (`user.*`) or the organization's name (`organization.*`).
    pub name: String,
}

/// The milliseconds since the epoch, as Clerk's timestamps are.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The `data` of one event type at time `at` (ms).
fn data(kind: &str, s: &Sample, at: i64) -> Result<Value> {
    let user = &s.user;
    let org_slug = s.name.to_lowercase().replace(' ', "-");
    let organization = json!({
        "id": s.org, "object": "organization", "name": s.name, "slug": org_slug,
        "image_url": "https://img.clerk.com/sample", "has_image": false, "members_count": 1,
        "max_allowed_memberships": 5, "admin_delete_enabled": true, "public_metadata": {},
        "created_by": user, "created_at": at - 60_000, "updated_at": at
    });
    Ok(match kind {
        "user.created" | "user.updated" => json!({
            "id": user, "object": "user", "username": null, "first_name": s.name, "last_name": "Sample",
            "image_url": "https://img.clerk.com/sample", "has_image": false,
            "primary_email_address_id": format!("idn_{user}"),
            "email_addresses": [{"id": format!("idn_{user}"), "object": "email_address",
                                 "email_address": format!("{user}@example.com"),
                                 "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []}],
            "phone_numbers": [], "web3_wallets": [], "external_accounts": [],
            "public_metadata": {}, "private_metadata": {}, "unsafe_metadata": {},
            "banned": false, "locked": false, "created_at": at - 60_000, "updated_at": at,
            "last_sign_in_at": null, "last_active_at": null
        }),
        "user.deleted" => json!({"deleted": true, "id": user, "object": "user"}),
        "organization.created" | "organization.updated" => organization,
        "organization.deleted" => json!({"deleted": true, "id": s.org, "object": "organization"}),
        "organizationMembership.created"
        | "organizationMembership.updated"
        | "organizationMembership.deleted" => json!({
            "id": format!("orgmem_{}_{}", s.org.trim_start_matches("org_"), user.trim_start_matches("user_")),
            "object": "organization_membership", "role": s.role, "permissions": [],
            "public_metadata": {}, "created_at": at - 60_000, "updated_at": at,
            "organization": organization,
            "public_user_data": {"user_id": user, "identifier": format!("{user}@example.com"),
                                 "first_name": null, "last_name": null,
                                 "image_url": "https://img.clerk.com/sample", "has_image": false}
        }),
        other => bail!(
            "unknown event type {other:?}; one of: {}",
            EVENT_TYPES.join(", ")
        ),
    })
}

/// The whole event as Clerk posts it. `malformed`: signed like any other, but without the
/// resource id every event needs, so the gateway keeps it in quarantine.
pub fn event(kind: &str, s: &Sample, malformed: bool) -> Result<Value> {
    let at = now_ms();
    let mut data = data(kind, s, at)?;
    if malformed && let Some(d) = data.as_object_mut() {
        d.remove("id");
    }
    Ok(json!({
        "data": data, "object": "event", "type": kind, "timestamp": at,
        "instance_id": DEV_CLERK_INSTANCE,
        "event_attributes": {"http_request": {"client_ip": "127.0.0.1", "user_agent": "vbase-stack"}}
    }))
}

/// The gateway's answer to one delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub svix_id: String,
    pub status: u16,
    pub body: String,
}

/// Signs `body` with the stack's webhook secret as Svix does and posts it to the gateway.
pub async fn deliver(state: &crate::StackState, body: &Value) -> Result<Delivered> {
    let bytes = body.to_string().into_bytes();
    let svix_id = format!("msg_local_{:016x}", rand::random::<u64>());
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", state.gateway_url))
        .body(bytes.clone());
    for (k, v) in crate::sign_webhook(&state.webhook_secret, &svix_id, &bytes)? {
        req = req.header(k, v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default().trim().to_owned();
    Ok(Delivered {
        svix_id,
        status,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            user: "user_a".into(),
            org: "org_a".into(),
            role: "org:member".into(),
            name: "Acme".into(),
        }
    }

    #[test]
    fn every_type_has_a_payload_and_malformed_ones_lack_the_id() {
        for kind in EVENT_TYPES {
            let e = event(kind, &sample(), false).unwrap();
            assert_eq!(e["type"], *kind);
            assert!(e["data"]["id"].is_string(), "{kind}");
            let m = event(kind, &sample(), true).unwrap();
            assert!(m["data"].get("id").is_none(), "{kind}");
        }
        assert!(event("session.created", &sample(), false).is_err());
    }
}
