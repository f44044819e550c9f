//! Typed Clerk webhook events and their mapping onto our sync commands.
//!
//! Shapes follow Clerk's JSON types (many fields nullable, unknown fields ignored). The delivery
//! id (`svix-id`) becomes every command's `event_id`; the resource's `updated_at` becomes
//! `occurred_at` (the envelope `timestamp` for deletes, falling back to `svix-timestamp`).

use serde::Deserialize;
use vbase_proto::identity::v1 as idp;
use vbase_proto::timestamp_from_millis;
use vbase_proto::workspace::v1 as wsp;

/// The envelope of every Clerk webhook.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// e.g. `user.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource (or a deleted-object stub).
    pub data: serde_json::Value,
    /// Milliseconds since the epoch when the event occurred.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// `EmailAddressJSON` (the fields we read).
#[derive(Debug, Deserialize)]
pub struct EmailAddress {
    pub id: String,
    pub email_address: String,
}

/// `UserJSON` (the fields we read).
#[derive(Debug, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub primary_email_address_id: Option<String>,
    #[serde(default)]
    pub email_addresses: Vec<EmailAddress>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub profile_image_url: Option<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    pub updated_at: i64,
}

impl User {
    /// The address whose id is `primary_email_address_id` (never simply the first one).
    pub fn primary_email(&self) -> Option<&str> {
        let primary = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .iter()
            .find(|e| e.id == primary)
            .map(|e| e.email_address.as_str())
    }

    /// First + last name, trimmed; else the username; else the primary email.
    pub fn display_name(&self) -> String {
        let full = format!(
            "{} {}",
            self.first_name.as_deref().unwrap_or_default().trim(),
            self.last_name.as_deref().unwrap_or_default().trim()
        );
        let full = full.trim();
        if !full.is_empty() {
            return full.to_owned();
        }
        if let Some(u) = self
            .username
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            return u.to_owned();
        }
        self.primary_email().unwrap_or_default().to_owned()
    }
}

/// `OrganizationJSON` (the fields we read).
#[derive(Debug, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    pub updated_at: i64,
}

/// The organization reference inside a membership.
#[derive(Debug, Deserialize)]
pub struct OrganizationRef {
    pub id: String,
}

/// `public_user_data` of a membership.
#[derive(Debug, Deserialize)]
pub struct PublicUserData {
    pub user_id: String,
}

/// `OrganizationMembershipJSON` (the fields we read).
#[derive(Debug, Deserialize)]
pub struct Membership {
    pub role: String,
    pub organization: OrganizationRef,
    pub public_user_data: PublicUserData,
    pub updated_at: i64,
}

/// `DeletedObjectJSON`.
#[derive(Debug, Deserialize)]
pub struct Deleted {
    #[serde(default)]
    pub id: Option<String>,
}

/// What one webhook asks of the services.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `user.created` / `user.updated`.
    UpsertUser(idp::UpsertUserCommand),
    /// `user.deleted`: the user goes in identity, memberships and receipts in workspace.
    DeleteUser(idp::DeleteUserCommand, wsp::RemoveUserCommand),
    /// `organization.created` / `organization.updated`.
    UpsertWorkspace(wsp::UpsertWorkspaceCommand),
    /// `organization.deleted`.
    DeleteWorkspace(wsp::DeleteWorkspaceCommand),
    /// `organizationMembership.created` / `.updated`.
    UpsertMembership(wsp::UpsertMembershipCommand),
    /// `organizationMembership.deleted`.
    DeleteMembership(wsp::DeleteMembershipCommand),
    /// An event type we do not handle (answered 2xx so Clerk stops retrying).
    Ignored,
}

/// A signed payload we cannot use; answered 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Malformed(pub String);

/// What is wrong with a payload, without quoting any of its values (they can hold emails and
/// names, and the reason is logged and answered): serde's own message names the value it
/// refused, so only its kind of error, a missing field's name and the position are kept.
fn reason(what: &str, e: &serde_json::Error) -> Malformed {
    use serde_json::error::Category;
    let text = e.to_string();
    let detail = match e.classify() {
        Category::Data if text.starts_with("missing field") => text
            .split(" at line")
            .next()
            .unwrap_or("missing field")
            .to_owned(),
        Category::Data => "a field has the wrong type or an unexpected value".to_owned(),
        Category::Syntax => "not valid JSON".to_owned(),
        Category::Eof => "the JSON ends early".to_owned(),
        Category::Io => "unreadable".to_owned(),
    };
    if e.line() > 0 {
        Malformed(format!(
            "{what}: {detail} (line {}, column {})",
            e.line(),
            e.column()
        ))
    } else {
        Malformed(format!("{what}: {detail}"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: &str,
    data: serde_json::Value,
) -> Result<T, Malformed> {
    serde_json::from_value(data).map_err(|e| reason(&format!("{kind} payload"), &e))
}

/// Maps a verified body onto the command to send. `svix_timestamp_secs` is the fallback time of
/// delete events without an envelope `timestamp`.
pub fn to_command(
    event_id: &str,
    svix_timestamp_secs: i64,
    body: &[u8],
) -> Result<(String, Command), Malformed> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| reason("not a Clerk event", &e))?;
    let event_time = timestamp_from_millis(
        env.timestamp
            .unwrap_or(svix_timestamp_secs.saturating_mul(1000)),
    );
    let id = event_id.to_owned();
    let deleted_id = |kind: &str, data: serde_json::Value| -> Result<String, Malformed> {
        parse::<Deleted>(kind, data)?
            .id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Malformed(format!("{kind} payload has no id")))
    };
    let command = match env.kind.as_str() {
        "user.created" | "user.updated" => {
            let u: User = parse(&env.kind, env.data)?;
            Command::UpsertUser(idp::UpsertUserCommand {
                event_id: id,
                occurred_at: Some(timestamp_from_millis(u.updated_at)),
                name: u.display_name(),
                email: u.primary_email().unwrap_or_default().to_owned(),
                image_url: u
                    .image_url
                    .clone()
                    .or(u.profile_image_url.clone())
                    .unwrap_or_default(),
                created_at: u.created_at.map(timestamp_from_millis),
                clerk_id: u.id,
            })
        }
        "user.deleted" => {
            let user = deleted_id(&env.kind, env.data)?;
            Command::DeleteUser(
                idp::DeleteUserCommand {
                    event_id: id.clone(),
                    occurred_at: Some(event_time),
                    clerk_id: user.clone(),
                },
                wsp::RemoveUserCommand {
                    event_id: id,
                    occurred_at: Some(event_time),
                    clerk_user_id: user,
                },
            )
        }
        "organization.created" | "organization.updated" => {
            let o: Organization = parse(&env.kind, env.data)?;
            Command::UpsertWorkspace(wsp::UpsertWorkspaceCommand {
                event_id: id,
                occurred_at: Some(timestamp_from_millis(o.updated_at)),
                clerk_org_id: o.id,
                name: o.name,
                slug: o.slug.unwrap_or_default(),
                owner_clerk_id: o.created_by.unwrap_or_default(),
            })
        }
        "organization.deleted" => Command::DeleteWorkspace(wsp::DeleteWorkspaceCommand {
            event_id: id,
            occurred_at: Some(event_time),
            clerk_org_id: deleted_id(&env.kind, env.data)?,
        }),
        "organizationMembership.created" | "organizationMembership.updated" => {
            let m: Membership = parse(&env.kind, env.data)?;
            Command::UpsertMembership(wsp::UpsertMembershipCommand {
                event_id: id,
                occurred_at: Some(timestamp_from_millis(m.updated_at)),
                clerk_org_id: m.organization.id,
                clerk_user_id: m.public_user_data.user_id,
                role: m.role,
            })
        }
        "organizationMembership.deleted" => {
            let m: Membership = parse(&env.kind, env.data)?;
            Command::DeleteMembership(wsp::DeleteMembershipCommand {
                event_id: id,
                occurred_at: Some(event_time),
                clerk_org_id: m.organization.id,
                clerk_user_id: m.public_user_data.user_id,
            })
        }
        _ => Command::Ignored,
    };
    Ok((env.kind, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn user_created_from_the_reference_payload() {
        let payload = json!({
          "data": {"birthday": "", "created_at": 1654012591514_i64,
            "email_addresses": [
              {"email_address": "other@example.org", "id": "idn_other", "linked_to": [], "object": "email_address"},
              {"email_address": "example@example.org", "id": "idn_29w83yL7CwVlJXylYLxcslromF1", "linked_to": [], "object": "email_address",
               "verification": {"status": "verified", "strategy": "ticket"}}],
            "external_accounts": [], "external_id": "567772", "first_name": "Example", "gender": "",
            "id": "user_29w83sxmDNGwOuEthce5gg56FcC", "image_url": "https://img.clerk.com/xxxxxx", "last_name": "Example",
            "last_sign_in_at": 1654012591514_i64, "object": "user", "password_enabled": true, "phone_numbers": [],
            "primary_email_address_id": "idn_29w83yL7CwVlJXylYLxcslromF1", "primary_phone_number_id": null,
            "primary_web3_wallet_id": null, "private_metadata": {}, "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
            "public_metadata": {}, "two_factor_enabled": false, "unsafe_metadata": {}, "updated_at": 1654012591835_i64,
            "username": null, "web3_wallets": []},
          "event_attributes": {"http_request": {"client_ip": "0.0.0.0", "user_agent": "Mozilla/5.0"}},
          "instance_id": "ins_29w83yT7CwllvXylYLxcslj88O9", "object": "event", "timestamp": 1654012591835_i64, "type": "user.created"
        });
        let (kind, cmd) = to_command("msg_1", 0, &body(payload)).unwrap();
        assert_eq!(kind, "user.created");
        let Command::UpsertUser(c) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(c.clerk_id, "user_29w83sxmDNGwOuEthce5gg56FcC");
        assert_eq!(c.name, "Example Example");
        assert_eq!(
            c.email, "example@example.org",
            "the primary address, not the first one"
        );
        assert_eq!(c.image_url, "https://img.clerk.com/xxxxxx");
        assert_eq!(c.occurred_at.unwrap(), timestamp_from_millis(1654012591835));
        assert_eq!(c.event_id, "msg_1");
    }

    #[test]
    fn names_fall_back_to_username_then_email() {
        let mk = |first: Option<&str>, last: Option<&str>, username: Option<&str>| User {
            id: "user_1".into(),
            first_name: first.map(Into::into),
            last_name: last.map(Into::into),
            username: username.map(Into::into),
            primary_email_address_id: Some("idn_1".into()),
            email_addresses: vec![EmailAddress {
                id: "idn_1".into(),
                email_address: "a@b.co".into(),
            }],
            image_url: None,
            profile_image_url: None,
            created_at: None,
            updated_at: 1,
        };
        assert_eq!(mk(Some(" Ada "), None, Some("ada")).display_name(), "Ada");
        assert_eq!(mk(None, Some("Lovelace"), None).display_name(), "Lovelace");
        assert_eq!(mk(None, None, Some("ada99")).display_name(), "ada99");
        assert_eq!(mk(Some(" "), None, None).display_name(), "a@b.co");
    }

    #[test]
    fn deletes_use_the_envelope_timestamp() {
        let payload = json!({"data": {"deleted": true, "id": "user_29wBMCtzATuFJut8jO2VNTVekS4", "object": "user"},
            "object": "event", "timestamp": 1661861640000_i64, "type": "user.deleted"});
        let (_, cmd) = to_command("msg_2", 0, &body(payload)).unwrap();
        let Command::DeleteUser(a, b) = cmd else {
            panic!()
        };
        assert_eq!(a.occurred_at.unwrap().seconds, 1661861640);
        assert_eq!(
            (a.clerk_id.as_str(), b.clerk_user_id.as_str()),
            (
                "user_29wBMCtzATuFJut8jO2VNTVekS4",
                "user_29wBMCtzATuFJut8jO2VNTVekS4"
            )
        );
        // Without an envelope timestamp the svix-timestamp is used.
        let payload = json!({"data": {"deleted": true, "id": "org_1", "object": "organization"}, "object": "event", "type": "organization.deleted"});
        let (_, cmd) = to_command("msg_3", 1_700_000_000, &body(payload)).unwrap();
        let Command::DeleteWorkspace(d) = cmd else {
            panic!()
        };
        assert_eq!(d.occurred_at.unwrap().seconds, 1_700_000_000);
    }

    #[test]
    fn organizations_and_memberships_map_to_workspace_commands() {
        let org = json!({"data": {"created_at": 1654013202977_i64, "created_by": "user_1vq84bqWzw7qmFgqSwN4CH1Wp0n",
            "id": "org_29w9IfBrPmcpi0IeBVaKtA7R94W", "image_url": "https://img.clerk.com/xxxxxx", "logo_url": null, "name": "Acme Inc",
            "object": "organization", "public_metadata": {}, "slug": null, "updated_at": 1654013202977_i64},
            "object": "event", "timestamp": 1654013202977_i64, "type": "organization.created"});
        let (_, cmd) = to_command("m", 0, &body(org)).unwrap();
        let Command::UpsertWorkspace(w) = cmd else {
            panic!()
        };
        assert_eq!(
            (w.name.as_str(), w.slug.as_str(), w.owner_clerk_id.as_str()),
            ("Acme Inc", "", "user_1vq84bqWzw7qmFgqSwN4CH1Wp0n")
        );
        let mem = json!({"data": {"created_at": 1654013203217_i64, "id": "orgmem_1", "object": "organization_membership",
            "organization": {"id": "org_29w9IfBrPmcpi0IeBVaKtA7R94W", "name": "Acme Inc", "object": "organization", "updated_at": 1, "created_at": 1},
            "public_user_data": {"first_name": "Example", "identifier": "example@example.org", "user_id": "user_29w83sxmDNGwOuEthce5gg56FcC"},
            "role": "admin", "updated_at": 1654013203217_i64}, "object": "event", "timestamp": 1654013203217_i64, "type": "organizationMembership.created"});
        let (_, cmd) = to_command("m", 0, &body(mem.clone())).unwrap();
        let Command::UpsertMembership(m) = cmd else {
            panic!()
        };
        assert_eq!(
            (
                m.clerk_org_id.as_str(),
                m.clerk_user_id.as_str(),
                m.role.as_str()
            ),
            (
                "org_29w9IfBrPmcpi0IeBVaKtA7R94W",
                "user_29w83sxmDNGwOuEthce5gg56FcC",
                "admin"
            )
        );
        let mut del = mem;
        del["type"] = json!("organizationMembership.deleted");
        del["timestamp"] = json!(1654013999000_i64);
        let (_, cmd) = to_command("m", 0, &body(del)).unwrap();
        let Command::DeleteMembership(d) = cmd else {
            panic!()
        };
        assert_eq!(d.occurred_at.unwrap().seconds, 1654013999);
    }

    #[test]
    fn unknown_types_are_ignored_and_broken_payloads_are_malformed() {
        let (_, cmd) = to_command(
            "m",
            0,
            br#"{"type":"session.created","data":{},"object":"event"}"#,
        )
        .unwrap();
        assert_eq!(cmd, Command::Ignored);
        assert!(to_command("m", 0, b"not json").is_err());
        assert!(to_command("m", 0, br#"{"type":"user.created","data":{"id":"user_1"}}"#).is_err());
        assert!(
            to_command(
                "m",
                0,
                br#"{"type":"user.deleted","data":{"deleted":true}}"#
            )
            .is_err()
        );
    }
}
