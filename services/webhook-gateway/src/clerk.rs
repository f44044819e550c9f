//! Typed Clerk resources and webhook events, and their mapping onto our sync commands: the one
//! mapping, used by webhooks and by reconcile alike.
//!
//! Shapes follow Clerk's published specification (many fields nullable or optional, unknown
//! fields ignored): an email address entry may lack its `id` (it is then skipped), a membership
//! may lack `public_user_data` (its command cannot be made: the delivery is quarantined, and a
//! listing counts it refused). The delivery id (`svix-id`) becomes every command's
//! `event_id`; the resource's `updated_at` becomes `occurred_at` (ordering is by the resource's
//! own clock), and the envelope `timestamp` becomes `event_time` (a tie-break). Clerk documents
//! that timestamp in milliseconds while every example of its webhook specification is in
//! seconds: a value below 10^11 (March 1973 in milliseconds) is read as seconds. Deletes of
//! users and organizations carry the envelope `timestamp` when there is one and nothing
//! otherwise: the delivery time (`svix-timestamp`, which a retry hours later moves) never
//! orders anything. Every command names the Clerk instance the envelope came from
//! (`instance_id`), which the services record.

use input_validation::{displayable, normalized};
use serde::Deserialize;
use vbase_proto::identity::v1 as idp;
use vbase_proto::timestamp_from_millis;
use vbase_proto::workspace::v1 as wsp;

/// Longest name or slug the services store.
pub const MAX_NAME_CHARS: usize = input_validation::MAX_NAME_LEN;

/// Longest role stored (workspace-service's limit); Clerk's custom role keys can be longer.
pub const MAX_ROLE: usize = 64;

/// An envelope `timestamp` below this is in seconds (10^11 ms is March 1973; 10^11 s is the
/// year 5138).
pub const SECONDS_BELOW: i64 = 100_000_000_000;

/// The envelope of every Clerk webhook.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// e.g. `user.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource (or a deleted-object stub).
    #[serde(default)]
    pub data: serde_json::Value,
    /// When the event occurred: milliseconds since the epoch as documented, or seconds as in
    /// the specification's examples (see [`Envelope::event_time`]). Read as any JSON, and
    /// checked only for the types we apply: an ignored type is acknowledged whatever it holds.
    #[serde(default)]
    pub timestamp: serde_json::Value,
    /// The Clerk instance, `ins_...`; any JSON, checked as `timestamp` is.
    #[serde(default)]
    pub instance_id: serde_json::Value,
}

impl Envelope {
    /// The envelope `timestamp` as a time: below [`SECONDS_BELOW`] it is seconds.
    pub fn event_time(&self) -> Result<Option<prost_types::Timestamp>, Malformed> {
        if self.timestamp.is_null() {
            return Ok(None);
        }
        match self.timestamp.as_i64() {
            None => Err(Malformed(
                "the envelope timestamp is not a whole number of milliseconds".into(),
            )),
            Some(t) if t < 0 => Err(Malformed("the envelope timestamp is negative".into())),
            Some(t) if t < SECONDS_BELOW => Ok(Some(timestamp_from_millis(t * 1000))),
            Some(t) => Ok(Some(timestamp_from_millis(t))),
        }
    }

    /// The instance id, checked (empty when the envelope has none).
    pub fn instance(&self) -> Result<&str, Malformed> {
        let id = match &self.instance_id {
            serde_json::Value::Null => "",
            serde_json::Value::String(id) => id,
            _ => {
                return Err(Malformed(
                    "instance_id is not a Clerk instance id (ins_...)".into(),
                ));
            }
        };
        let ok = id.is_empty()
            || (id.len() <= 64
                && id.strip_prefix("ins_").is_some_and(|r| {
                    !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric())
                }));
        if ok {
            Ok(id)
        } else {
            Err(Malformed(
                "instance_id is not a Clerk instance id (ins_...)".into(),
            ))
        }
    }
}

/// Where a command comes from: the delivery's (or the reconcile run's) event id, when the
/// source said it, and the Clerk instance of the webhook (empty for reconcile: a listing names
/// no instance the services should record).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub event_id: &'a str,
    pub event_time: Option<prost_types::Timestamp>,
    pub instance_id: &'a str,
}

/// `EmailAddressJSON` (the fields we read). The specification does not require `id`.
#[derive(Debug, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub id: Option<String>,
    pub email_address: String,
}

/// `UserJSON` (the fields we read). `locked` is not read: a lock (too many failed sign-ins, or
/// the Backend API's "lock") only stops new sign-ins, and anyone can trigger one by guessing at
/// an account, so it revokes no session and no token of ours.
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
    #[serde(default, deserialize_with = "null_as_default")]
    pub email_addresses: Vec<EmailAddress>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub profile_image_url: Option<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    pub updated_at: i64,
    /// Banned in Clerk: every session revoked, no sign-in allowed (see [`User::command`]).
    #[serde(default, deserialize_with = "null_as_default")]
    pub banned: bool,
    /// Deprovisioned (removed from the organization's directory by Directory Sync): Clerk
    /// deactivates the user and revokes every session at once, as for a ban.
    #[serde(default, deserialize_with = "null_as_default")]
    pub deprovisioned: bool,
}

/// A field Clerk may send as `null`: read like a missing one, as its default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl User {
    /// The address whose id is `primary_email_address_id` (never simply the first one; an
    /// entry without an id is never it).
    pub fn primary_email(&self) -> Option<&str> {
        let primary = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .iter()
            .find(|e| e.id.as_deref() == Some(primary))
            .map(|e| e.email_address.as_str())
    }

    /// First + last name, trimmed; else the username; else nothing. Never the email: the name
    /// is what other users see, the email only its owner.
    /// Each part is made displayable first, so a name of invisible characters or bidirectional
    /// controls alone falls back like an empty one.
    /// The result is as stored ([`normalized`]): the fallback is chosen on what would be
    /// stored, so a name whose visible part lies past the cut falls back too.
    pub fn display_name(&self) -> String {
        let shown = |part: &Option<String>| displayable(part.as_deref().unwrap_or_default());
        let full = format!("{} {}", shown(&self.first_name), shown(&self.last_name));
        let full = normalized(&full, MAX_NAME_CHARS);
        if !full.is_empty() {
            return full;
        }
        normalized(&shown(&self.username), MAX_NAME_CHARS)
    }
}

impl User {
    /// What this state asks of the services: the upsert, and for a banned or deprovisioned
    /// user the revocation of every token issued before too.
    pub fn command(&self, origin: Origin) -> Command {
        match self.revocation(origin) {
            Some(revoke) => Command::BanUser(self.upsert(origin), revoke),
            None => Command::UpsertUser(self.upsert(origin)),
        }
    }

    /// For a banned or deprovisioned user, the revocation of every token issued before
    /// [`User::revoked_at`].
    pub fn revocation(&self, origin: Origin) -> Option<wsp::RevokeUserTokensCommand> {
        Some(wsp::RevokeUserTokensCommand {
            event_id: origin.event_id.to_owned(),
            revoked_at: Some(self.revoked_at(origin)?),
            clerk_user_id: self.id.clone(),
            instance_id: origin.instance_id.to_owned(),
        })
    }

    /// For a banned (or deprovisioned) user, the later of its `updated_at` and the origin's
    /// time. Clerk's ban revokes all the user's sessions and forbids sign-in, so no token is
    /// issued while the user stays banned: a time at or after the ban at which the user is still
    /// banned refuses exactly the tokens issued before the ban. Tokens issued after an unban
    /// carry a later `iat` and pass. A deprovisioned user is the same to us: Directory Sync's
    /// removal deactivates the user and revokes every session at once.
    fn revoked_at(&self, origin: Origin) -> Option<prost_types::Timestamp> {
        if !(self.banned || self.deprovisioned) {
            return None;
        }
        let updated = timestamp_from_millis(self.updated_at);
        Some(match origin.event_time {
            Some(t) if (t.seconds, t.nanos) > (updated.seconds, updated.nanos) => t,
            _ => updated,
        })
    }

    /// The upsert that makes our copy equal to this state (with the ban's revocation, which
    /// identity-service keeps too).
    pub fn upsert(&self, origin: Origin) -> idp::UpsertUserCommand {
        idp::UpsertUserCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: Some(timestamp_from_millis(self.updated_at)),
            name: self.display_name(),
            email: self.primary_email().unwrap_or_default().to_owned(),
            image_url: self
                .image_url
                .clone()
                .or(self.profile_image_url.clone())
                .unwrap_or_default(),
            created_at: self.created_at.map(timestamp_from_millis),
            clerk_id: self.id.clone(),
            event_time: origin.event_time,
            instance_id: origin.instance_id.to_owned(),
            tokens_revoked_at: self.revoked_at(origin),
        }
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
    #[serde(default)]
    pub created_at: Option<i64>,
    pub updated_at: i64,
}

impl Organization {
    /// The name as stored; when nothing of it can be shown (invisible characters alone), the
    /// slug, else the id: the services refuse an empty name, which would quarantine the event.
    fn shown_name(&self) -> String {
        [self.name.as_str(), self.slug.as_deref().unwrap_or_default()]
            .into_iter()
            .map(|n| normalized(n, MAX_NAME_CHARS))
            .find(|n| !n.is_empty())
            .unwrap_or_else(|| self.id.clone())
    }

    /// The upsert that makes our copy equal to this state (with the ban's revocation, which
    /// identity-service keeps too).
    pub fn upsert(&self, origin: Origin) -> wsp::UpsertWorkspaceCommand {
        wsp::UpsertWorkspaceCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: Some(timestamp_from_millis(self.updated_at)),
            clerk_org_id: self.id.clone(),
            name: self.shown_name(),
            slug: normalized(self.slug.as_deref().unwrap_or_default(), MAX_NAME_CHARS),
            owner_clerk_id: self.created_by.clone().unwrap_or_default(),
            event_time: origin.event_time,
            created_at: self.created_at.map(timestamp_from_millis),
            instance_id: origin.instance_id.to_owned(),
        }
    }
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

/// `OrganizationMembershipJSON` (the fields we read). The specification does not require
/// `public_user_data`; without it the membership's user is unknown and no command can be made.
#[derive(Debug, Deserialize)]
pub struct Membership {
    /// `orgmem_...`
    pub id: String,
    pub role: String,
    pub organization: OrganizationRef,
    #[serde(default)]
    pub public_user_data: Option<PublicUserData>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Membership {
    /// The member's user id, from `public_user_data`.
    pub fn user_id(&self) -> Result<&str, Malformed> {
        self.public_user_data
            .as_ref()
            .map(|p| p.user_id.as_str())
            .ok_or_else(|| {
                Malformed("the membership has no public_user_data: its user is unknown".into())
            })
    }

    /// The upsert that makes our copy equal to this state (with the ban's revocation, which
    /// identity-service keeps too).
    pub fn upsert(&self, origin: Origin) -> Result<wsp::UpsertMembershipCommand, Malformed> {
        Ok(wsp::UpsertMembershipCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: Some(timestamp_from_millis(self.updated_at)),
            clerk_org_id: self.organization.id.clone(),
            clerk_user_id: self.user_id()?.to_owned(),
            role: normalized(&self.role, MAX_ROLE),
            clerk_membership_id: self.id.clone(),
            membership_created_at: Some(timestamp_from_millis(self.created_at)),
            event_time: origin.event_time,
            instance_id: origin.instance_id.to_owned(),
        })
    }

    /// The delete of this membership; the origin's `event_time` is when access ended, when
    /// known.
    pub fn delete(&self, origin: Origin) -> Result<wsp::DeleteMembershipCommand, Malformed> {
        Ok(wsp::DeleteMembershipCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: Some(timestamp_from_millis(self.updated_at)),
            clerk_org_id: self.organization.id.clone(),
            clerk_user_id: self.user_id()?.to_owned(),
            clerk_membership_id: self.id.clone(),
            membership_created_at: Some(timestamp_from_millis(self.created_at)),
            event_time: origin.event_time,
            instance_id: origin.instance_id.to_owned(),
        })
    }
}

/// The commands that delete a user: the user in identity, memberships and receipts in
/// workspace. The origin's `event_time`: when Clerk deleted it, when known.
pub fn delete_user(origin: Origin, user: &str) -> Command {
    Command::DeleteUser(
        idp::DeleteUserCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: origin.event_time,
            clerk_id: user.to_owned(),
            instance_id: origin.instance_id.to_owned(),
        },
        wsp::RemoveUserCommand {
            event_id: origin.event_id.to_owned(),
            occurred_at: origin.event_time,
            clerk_user_id: user.to_owned(),
            instance_id: origin.instance_id.to_owned(),
        },
    )
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
    /// `user.created` / `user.updated` of a banned user: the upsert in identity, and in
    /// workspace the revocation of every token issued before the ban.
    BanUser(idp::UpsertUserCommand, wsp::RevokeUserTokensCommand),
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
pub fn describe(e: &serde_json::Error) -> String {
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
        format!("{detail} (line {}, column {})", e.line(), e.column())
    } else {
        detail
    }
}

fn reason(what: &str, e: &serde_json::Error) -> Malformed {
    Malformed(format!("{what}: {}", describe(e)))
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: &str,
    data: serde_json::Value,
) -> Result<T, Malformed> {
    serde_json::from_value(data).map_err(|e| reason(&format!("{kind} payload"), &e))
}

/// A verified body, parsed: its event type, the command it asks for, and the envelope
/// `timestamp` as a time (when Clerk says the event happened; the same on every Svix retry).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: String,
    pub command: Command,
    pub event_time: Option<prost_types::Timestamp>,
}

/// Maps a verified body onto the command to send: its event type and the command.
pub fn to_command(event_id: &str, body: &[u8]) -> Result<(String, Command), Malformed> {
    to_event(event_id, body).map(|e| (e.kind, e.command))
}

/// The event types [`to_event`] applies (every other type is acknowledged and ignored).
pub const HANDLED_EVENT_TYPES: [&str; 9] = [
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

/// An event type as logs and metric labels carry it: at most 100 printable ASCII characters.
/// Types we apply are Clerk's own; an ignored one is whatever the signed body said.
pub fn printable_type(kind: &str) -> String {
    kind.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect()
}

/// Maps a verified body onto the command to send, with its event type and time.
pub fn to_event(event_id: &str, body: &[u8]) -> Result<Event, Malformed> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| reason("not a Clerk event", &e))?;
    if !HANDLED_EVENT_TYPES.contains(&env.kind.as_str()) {
        // Acknowledged whatever else its envelope holds: nothing of it is applied.
        return Ok(Event {
            event_time: env.event_time().ok().flatten(),
            kind: printable_type(&env.kind),
            command: Command::Ignored,
        });
    }
    let instance = env.instance()?.to_owned();
    let origin = Origin {
        event_id,
        event_time: env.event_time()?,
        instance_id: &instance,
    };
    let deleted_id = |kind: &str, data: serde_json::Value| -> Result<String, Malformed> {
        parse::<Deleted>(kind, data)?
            .id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Malformed(format!("{kind} payload has no id")))
    };
    let command = match env.kind.as_str() {
        "user.created" | "user.updated" => parse::<User>(&env.kind, env.data)?.command(origin),
        "user.deleted" => delete_user(origin, &deleted_id(&env.kind, env.data)?),
        "organization.created" | "organization.updated" => {
            Command::UpsertWorkspace(parse::<Organization>(&env.kind, env.data)?.upsert(origin))
        }
        "organization.deleted" => Command::DeleteWorkspace(wsp::DeleteWorkspaceCommand {
            event_id: event_id.to_owned(),
            occurred_at: origin.event_time,
            clerk_org_id: deleted_id(&env.kind, env.data)?,
            instance_id: origin.instance_id.to_owned(),
        }),
        "organizationMembership.created" | "organizationMembership.updated" => {
            Command::UpsertMembership(parse::<Membership>(&env.kind, env.data)?.upsert(origin)?)
        }
        "organizationMembership.deleted" => {
            Command::DeleteMembership(parse::<Membership>(&env.kind, env.data)?.delete(origin)?)
        }
        _ => Command::Ignored,
    };
    Ok(Event {
        kind: env.kind,
        command,
        event_time: origin.event_time,
    })
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
        let (kind, cmd) = to_command("msg_1", &body(payload)).unwrap();
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
    fn names_fall_back_to_username_never_to_email() {
        let mk = |first: Option<&str>, last: Option<&str>, username: Option<&str>| User {
            id: "user_1".into(),
            first_name: first.map(Into::into),
            last_name: last.map(Into::into),
            username: username.map(Into::into),
            primary_email_address_id: Some("idn_1".into()),
            email_addresses: vec![EmailAddress {
                id: Some("idn_1".into()),
                email_address: "a@b.co".into(),
            }],
            image_url: None,
            profile_image_url: None,
            created_at: None,
            updated_at: 1,
            banned: false,
            deprovisioned: false,
        };
        assert_eq!(mk(Some(" Ada "), None, Some("ada")).display_name(), "Ada");
        assert_eq!(mk(None, Some("Lovelace"), None).display_name(), "Lovelace");
        assert_eq!(mk(None, None, Some("ada99")).display_name(), "ada99");
        assert_eq!(mk(Some(" "), None, None).display_name(), "");
        assert_eq!(
            mk(Some("\u{200B}"), Some("\u{202E}"), Some("ada99")).display_name(),
            "ada99",
            "a name of invisible characters alone falls back"
        );
        assert_eq!(
            mk(Some("Ada\u{202E}"), Some("\u{2066}Lovelace"), None).display_name(),
            "Ada Lovelace"
        );
        // Visible only past the cut at 256 characters: what would be stored is invisible.
        let hidden = format!("\u{200F}{}y", "\u{3164}".repeat(300));
        assert_eq!(
            mk(Some(&hidden), Some("x"), Some("ada99")).display_name(),
            "ada99"
        );
        assert_eq!(
            normalized(&format!("\u{200F}{}A", "\u{200B}".repeat(300)), 256),
            ""
        );
    }

    #[test]
    fn a_banned_user_also_revokes_the_tokens_issued_before_the_ban() {
        let user = |banned: bool, timestamp: Option<i64>| {
            let mut env = json!({"type": "user.updated", "object": "event", "instance_id": "ins_1",
                "data": {"id": "user_1", "updated_at": 1700000005000_i64, "banned": banned,
                         "locked": true, "lockout_expires_in_seconds": 3600}});
            if let Some(t) = timestamp {
                env["timestamp"] = json!(t);
            }
            to_command("msg_b", &body(env)).unwrap().1
        };
        let Command::BanUser(upsert, revoke) = user(true, Some(1700000009000)) else {
            panic!("a banned user's state revokes tokens")
        };
        assert_eq!(
            (upsert.clerk_id.as_str(), upsert.event_id.as_str()),
            ("user_1", "msg_b")
        );
        assert_eq!(
            (revoke.clerk_user_id.as_str(), revoke.event_id.as_str()),
            ("user_1", "msg_b")
        );
        assert_eq!(revoke.instance_id, "ins_1");
        // identity-service keeps the same time.
        assert_eq!(upsert.tokens_revoked_at, revoke.revoked_at);
        // The later of the event's time and the user's `updated_at`.
        assert_eq!(revoke.revoked_at.unwrap().seconds, 1700000009);
        let Command::BanUser(_, revoke) = user(true, Some(1700000001000)) else {
            panic!()
        };
        assert_eq!(revoke.revoked_at.unwrap().seconds, 1700000005);
        let Command::BanUser(_, revoke) = user(true, None) else {
            panic!()
        };
        assert_eq!(revoke.revoked_at.unwrap().seconds, 1700000005);
        // Not banned (a lock alone, or an unban): an ordinary upsert, revoking nothing.
        let Command::UpsertUser(upsert) = user(false, None) else {
            panic!("an unbanned user's state only upserts")
        };
        assert_eq!(upsert.tokens_revoked_at, None);
    }

    #[test]
    fn a_deprovisioned_user_revokes_the_tokens_issued_before_like_a_ban() {
        let env = json!({"type": "user.updated", "object": "event", "instance_id": "ins_1",
            "timestamp": 1700000009000_i64,
            "data": {"id": "user_1", "updated_at": 1700000005000_i64, "banned": false,
                     "deprovisioned": true}});
        let Command::BanUser(upsert, revoke) = to_command("msg_d", &body(env)).unwrap().1 else {
            panic!("a deprovisioned user's state revokes tokens")
        };
        assert_eq!(revoke.clerk_user_id, "user_1");
        assert_eq!(revoke.revoked_at.unwrap().seconds, 1700000009);
        assert_eq!(upsert.tokens_revoked_at, revoke.revoked_at);
    }

    #[test]
    fn deletes_use_the_envelope_timestamp() {
        let payload = json!({"data": {"deleted": true, "id": "user_29wBMCtzATuFJut8jO2VNTVekS4", "object": "user"},
            "object": "event", "timestamp": 1661861640000_i64, "type": "user.deleted"});
        let (_, cmd) = to_command("msg_2", &body(payload)).unwrap();
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
        // Without an envelope timestamp the time stays unknown: the delivery time is never used.
        let payload = json!({"data": {"deleted": true, "id": "org_1", "object": "organization"}, "object": "event", "type": "organization.deleted"});
        let (_, cmd) = to_command("msg_3", &body(payload)).unwrap();
        let Command::DeleteWorkspace(d) = cmd else {
            panic!()
        };
        assert_eq!(d.occurred_at, None);
    }

    #[test]
    fn organizations_and_memberships_map_to_workspace_commands() {
        let org = json!({"data": {"created_at": 1654013202977_i64, "created_by": "user_1vq84bqWzw7qmFgqSwN4CH1Wp0n",
            "id": "org_29w9IfBrPmcpi0IeBVaKtA7R94W", "image_url": "https://img.clerk.com/xxxxxx", "logo_url": null, "name": "Acme Inc",
            "object": "organization", "public_metadata": {}, "slug": null, "updated_at": 1654013202977_i64},
            "object": "event", "timestamp": 1654013202977_i64, "type": "organization.created"});
        let (_, cmd) = to_command("m", &body(org)).unwrap();
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
        let (_, cmd) = to_command("m", &body(mem.clone())).unwrap();
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
        let (_, cmd) = to_command("m", &body(del)).unwrap();
        let Command::DeleteMembership(d) = cmd else {
            panic!()
        };
        // Ordered by the membership's own clock; the envelope time says when access ended.
        assert_eq!(d.occurred_at.unwrap(), timestamp_from_millis(1654013203217));
        assert_eq!(d.event_time.unwrap().seconds, 1654013999);
        assert_eq!(d.clerk_membership_id, "orgmem_1");
    }

    /// `null` where Clerk's types declare a list or a flag reads as a missing field would.
    #[test]
    fn null_lists_and_flags_read_as_their_defaults() {
        let payload = json!({
            "type": "user.updated", "object": "event", "timestamp": 1654012591835_i64,
            "data": {"id": "user_n", "first_name": "Null", "last_name": "Fields",
                     "email_addresses": null, "banned": null, "deprovisioned": null,
                     "updated_at": 1654012591835_i64}
        });
        let (_, cmd) = to_command("m", &body(payload)).unwrap();
        let Command::UpsertUser(c) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!((c.name.as_str(), c.email.as_str()), ("Null Fields", ""));
        assert_eq!(c.tokens_revoked_at, None, "not banned");
    }

    #[test]
    fn unknown_types_are_ignored_and_broken_payloads_are_malformed() {
        let (_, cmd) = to_command(
            "m",
            br#"{"type":"session.created","data":{},"object":"event"}"#,
        )
        .unwrap();
        assert_eq!(cmd, Command::Ignored);
        // An ignored type is acknowledged whatever its envelope says beyond its type.
        for odd in [
            r#""timestamp":-1"#,
            r#""timestamp":1654012591835.5"#,
            r#""timestamp":"1654012591835""#,
            r#""timestamp":{}"#,
            r#""instance_id":"not an instance""#,
            r#""instance_id":"""#,
            r#""instance_id":7"#,
        ] {
            let body = format!(r#"{{"type":"email.created","data":{{}},"object":"event",{odd}}}"#);
            assert_eq!(
                to_command("m", body.as_bytes()).unwrap().1,
                Command::Ignored,
                "{odd}"
            );
        }
        // Its type is labelled and logged printable and bounded.
        let odd = format!(r#"{{"type":"a\nb {}","data":{{}}}}"#, "x".repeat(300));
        let (kind, cmd) = to_command("m", odd.as_bytes()).unwrap();
        assert_eq!(cmd, Command::Ignored);
        assert_eq!(kind, format!("ab{}", "x".repeat(98)));
        // Nor does it need a `data`.
        let bare = to_command("m", br#"{"type":"email.created","object":"event"}"#);
        assert_eq!(bare.unwrap().1, Command::Ignored);
        // A handled type's envelope is checked.
        for (odd, says) in [
            (r#""timestamp":1654012591835.5"#, "not a whole number"),
            (r#""timestamp":"1654012591835""#, "not a whole number"),
            (r#""timestamp":-1"#, "negative"),
            (r#""instance_id":7"#, "instance_id"),
        ] {
            let body = format!(
                r#"{{"type":"user.deleted","data":{{"id":"user_1","deleted":true}},"object":"event",{odd}}}"#
            );
            let refused = to_command("m", body.as_bytes()).unwrap_err();
            assert!(refused.0.contains(says), "{odd}: {refused:?}");
        }
        assert!(to_command("m", b"not json").is_err());
        assert!(to_command("m", br#"{"type":"user.created","data":{"id":"user_1"}}"#).is_err());
        assert!(to_command("m", br#"{"type":"user.deleted","data":{"deleted":true}}"#).is_err());
        // Every type listed as handled reads its payload (an empty one is refused, not ignored).
        for kind in HANDLED_EVENT_TYPES {
            let body = format!(r#"{{"type":"{kind}","data":{{}},"object":"event"}}"#);
            assert!(to_command("m", body.as_bytes()).is_err(), "{kind}");
        }
    }

    /// Any JSON in a Clerk envelope of any handled type maps to a command or a refusal
    /// (never a panic), and a refusal quotes no value of the payload.
    #[test]
    fn arbitrary_payloads_map_or_are_refused_without_panicking() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z_@.]{0,12}secret".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("updated_at".to_owned()),
                        Just("created_at".to_owned()),
                        Just("role".to_owned()),
                        Just("organization".to_owned()),
                        Just("public_user_data".to_owned()),
                        Just("user_id".to_owned()),
                        Just("name".to_owned()),
                        Just("email_addresses".to_owned()),
                        "[a-z_]{1,10}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        let kinds = prop_oneof![
            Just("user.created"),
            Just("user.deleted"),
            Just("organization.updated"),
            Just("organization.deleted"),
            Just("organizationMembership.created"),
            Just("organizationMembership.deleted"),
            Just("session.created"),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 3000,
            ..Config::default()
        });
        runner
            .run(
                &(
                    kinds,
                    value,
                    proptest::option::of(any::<i64>()),
                    any::<Vec<u8>>(),
                ),
                |(kind, data, ts, raw)| {
                    let mut env =
                        serde_json::json!({"type": kind, "data": data, "object": "event"});
                    if let Some(ts) = ts {
                        env["timestamp"] = serde_json::json!(ts);
                    }
                    if let Err(Malformed(reason)) = to_command("msg_p", &body(env)) {
                        prop_assert!(!reason.contains("secret"), "{}", reason);
                    }
                    let _ = to_command("msg_p", &raw);
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn envelope_timestamps_in_seconds_are_read_as_seconds() {
        let at = |ts: i64| {
            let env = json!({"type": "organization.deleted", "object": "event", "timestamp": ts,
                             "data": {"deleted": true, "id": "org_1", "object": "organization"}});
            to_command("m", &body(env)).map(|(_, c)| match c {
                Command::DeleteWorkspace(d) => d.occurred_at.unwrap(),
                other => panic!("{other:?}"),
            })
        };
        // The specification's examples (seconds) and the documented unit (milliseconds).
        assert_eq!(at(1716883200).unwrap().seconds, 1716883200);
        assert_eq!(
            at(1716883200123).unwrap(),
            timestamp_from_millis(1716883200123)
        );
        assert_eq!(at(SECONDS_BELOW - 1).unwrap().seconds, SECONDS_BELOW - 1);
        assert_eq!(
            at(SECONDS_BELOW).unwrap(),
            timestamp_from_millis(SECONDS_BELOW)
        );
        assert!(at(-1).is_err());
    }

    #[test]
    fn an_email_entry_without_an_id_is_skipped() {
        let env = json!({"type": "user.created", "object": "event", "instance_id": "ins_1",
            "data": {"id": "user_1", "primary_email_address_id": "idn_2", "updated_at": 5,
                     "email_addresses": [{"email_address": "noid@example.org", "object": "email_address"},
                                         {"id": "idn_2", "email_address": "p@example.org"}]}});
        let (_, cmd) = to_command("m", &body(env)).unwrap();
        let Command::UpsertUser(u) = cmd else {
            panic!()
        };
        assert_eq!(
            (u.email.as_str(), u.instance_id.as_str()),
            ("p@example.org", "ins_1")
        );
    }

    #[test]
    fn a_membership_without_public_user_data_cannot_be_applied_and_says_why() {
        let env = json!({"type": "organizationMembership.deleted", "object": "event",
            "data": {"id": "orgmem_1", "role": "org:member", "organization": {"id": "org_1"},
                     "created_at": 1, "updated_at": 2}});
        let Err(Malformed(reason)) = to_command("m", &body(env)) else {
            panic!("a membership without its user cannot be applied")
        };
        assert!(reason.contains("public_user_data"), "{reason}");
    }

    #[test]
    fn commands_carry_the_envelope_instance() {
        let env = |instance: serde_json::Value| {
            json!({"type": "organization.updated", "object": "event", "instance_id": instance,
                   "data": {"id": "org_1", "name": "A", "created_at": 7, "updated_at": 9}})
        };
        let (_, cmd) =
            to_command("m", &body(env(json!("ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S")))).unwrap();
        let Command::UpsertWorkspace(w) = cmd else {
            panic!()
        };
        assert_eq!(w.instance_id, "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S");
        assert_eq!(w.created_at, Some(timestamp_from_millis(7)));
        assert!(to_command("m", &body(env(json!("not an id")))).is_err());
    }

    #[test]
    fn names_are_normalised_not_refused() {
        let long = format!("  Ada\u{7}{}  ", "é".repeat(300));
        let n = normalized(&long, MAX_NAME_CHARS);
        assert_eq!(n.chars().count(), MAX_NAME_CHARS);
        assert!(n.starts_with("Adaé") && !n.chars().any(char::is_control));
        assert_eq!(normalized(" \u{0} Acme \n", 256), "Acme");
        let org = json!({"data": {"id": "org_1", "name": format!("{}\u{1b}", "x".repeat(400)), "slug": "s\tlug",
            "updated_at": 1}, "object": "event", "timestamp": 1, "type": "organization.updated"});
        let (_, cmd) = to_command("m", &body(org)).unwrap();
        let Command::UpsertWorkspace(w) = cmd else {
            panic!()
        };
        assert_eq!((w.name.len(), w.slug.as_str()), (256, "slug"));
        for (name, slug, shown) in [
            ("Acme\u{202E}gnp", Some("acme"), "Acmegnp"),
            ("\u{200B}\u{202E}", Some("acme"), "acme"),
            ("\u{3164}", None, "org_1"),
        ] {
            let org = json!({"data": {"id": "org_1", "name": name, "slug": slug, "updated_at": 1},
                "object": "event", "timestamp": 1, "type": "organization.updated"});
            let (_, cmd) = to_command("m", &body(org)).unwrap();
            let Command::UpsertWorkspace(w) = cmd else {
                panic!()
            };
            assert_eq!(w.name, shown, "{name:?}");
        }
    }
}
