//! Signed deliveries that cannot be applied are kept, not refused: the owning service stores
//! the raw body in its quarantine (`QuarantineDelivery`) and the gateway answers 2xx so Svix
//! stops retrying. `webhook-gateway replay-quarantined` later parses each kept body with the
//! current code and applies it through the ordinary commands under its own delivery id, so a
//! delivery applied before (or by an earlier replay) is a duplicate and changes nothing.

use crate::clerk::{self, Malformed};
use crate::forward::{Downstream, ForwardError};
use serde::Serialize;
use tonic::Status;
use vbase_proto::ops::v1 as ops;

/// The service that owns a delivery's data, and so keeps it when it cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Identity,
    Workspace,
}

impl Owner {
    /// `user.*` (and anything whose type is unknown) belongs to identity-service; organizations
    /// and memberships to workspace-service.
    pub fn of(event_type: &str) -> Self {
        if event_type.starts_with("organization") {
            Owner::Workspace
        } else {
            Owner::Identity
        }
    }

    /// The audience of the owner's service tokens, which is its name.
    pub fn audience(self) -> &'static str {
        match self {
            Owner::Identity => "identity-service",
            Owner::Workspace => "workspace-service",
        }
    }

    fn name(self) -> &'static str {
        self.audience()
    }
}

/// The `type` of a Clerk event body, when it has one (at most 100 printable characters).
pub fn event_type_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Typed>(body)
        .ok()
        .and_then(|t| t.kind)
        .and_then(|k| k.as_str().map(clerk::printable_type))
        .unwrap_or_default()
}

fn unavailable(what: &str, s: &Status) -> ForwardError {
    ForwardError::Unavailable(format!("{what}: {:?} {}", s.code(), s.message()))
}

/// What the owner's quarantine did with a delivery it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Kept open (new, or a repeat of an open record), for a replay or a discard.
    Open,
    /// Its record was resolved or discarded before and stays so: nothing was kept.
    Closed,
}

/// Keeps a delivery in its owner's quarantine. An error means the owner could not be asked
/// or failed (answer 503).
pub async fn keep(
    downstream: &Downstream,
    svix_id: &str,
    event_type: &str,
    reason: &str,
    body: &[u8],
) -> Result<Kept, ForwardError> {
    let owner = Owner::of(event_type);
    let req = downstream.request(
        owner.audience(),
        ops::QuarantineDeliveryRequest {
            svix_id: svix_id.to_owned(),
            event_type: event_type.to_owned(),
            reason: reason.to_owned(),
            body: body.to_vec(),
        },
    )?;
    let r = downstream
        .intake(owner.audience())
        .quarantine_delivery(req)
        .await;
    r.map(|r| {
        if r.get_ref().open {
            Kept::Open
        } else {
            Kept::Closed
        }
    })
    .map_err(|s| unavailable("quarantine_delivery", &s))
}

async fn list_open(
    downstream: &Downstream,
    owner: Owner,
    page_token: String,
) -> Result<ops::ListQuarantinedResponse, ForwardError> {
    let req = downstream.request(
        owner.audience(),
        ops::ListQuarantinedRequest {
            page_size: 100,
            page_token,
            state: ops::QuarantineState::Open.into(),
            with_bodies: true,
        },
    )?;
    let r = downstream
        .intake(owner.audience())
        .list_quarantined(req)
        .await;
    r.map(tonic::Response::into_inner)
        .map_err(|s| unavailable("list_quarantined", &s))
}

async fn resolve(
    downstream: &Downstream,
    owner: Owner,
    svix_id: &str,
    resolution: &str,
) -> Result<(), ForwardError> {
    let req = downstream.request(
        owner.audience(),
        ops::ResolveQuarantinedRequest {
            svix_id: svix_id.to_owned(),
            resolution: resolution.to_owned(),
        },
    )?;
    let r = downstream
        .intake(owner.audience())
        .resolve_quarantined(req)
        .await;
    r.map(|_| ())
        .map_err(|s| unavailable("resolve_quarantined", &s))
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Open deliveries looked at.
    pub examined: u64,
    /// Applied now.
    pub applied: u64,
    /// Applied before (the same delivery id): nothing changed.
    pub duplicate: u64,
    /// Older than the data held: nothing changed.
    pub stale: u64,
    /// Of a type the gateway does not handle: nothing to apply.
    pub ignored: u64,
    /// Still refused: kept open with the new reason.
    pub still_refused: u64,
    /// Failed at a service for a reason of its own (INTERNAL, FAILED_PRECONDITION ...): kept
    /// open with the reason; the replay goes on with the next.
    pub failed: u64,
    /// Kept without a body (the retention removed it): only a discard closes them.
    pub without_body: u64,
    /// Why the replay stopped early (a service unavailable, or refusing the gateway), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl ReplaySummary {
    /// One line per count, for a terminal.
    pub fn table(&self) -> String {
        format!(
            "examined {}\napplied {}\nduplicate {}\nstale {}\nignored {}\nstill refused {}\nfailed {}\nwithout body {}\n",
            self.examined,
            self.applied,
            self.duplicate,
            self.stale,
            self.ignored,
            self.still_refused,
            self.failed,
            self.without_body
        )
    }
}

/// Replays the open deliveries of both services (only `only`, when given), oldest first.
pub async fn replay(downstream: &Downstream, only: Option<&str>) -> ReplaySummary {
    let mut summary = ReplaySummary::default();
    for owner in [Owner::Identity, Owner::Workspace] {
        let mut token = String::new();
        loop {
            let page = match list_open(downstream, owner, token).await {
                Ok(p) => p,
                Err(e) => {
                    summary.stopped = Some(format!("listing {}: {e}", owner.name()));
                    return summary;
                }
            };
            for d in page.deliveries {
                if only.is_some_and(|id| id != d.svix_id) {
                    continue;
                }
                summary.examined += 1;
                if let Err(e) = replay_one(downstream, owner, &d, &mut summary).await {
                    summary.stopped = Some(format!("{}: {e}", d.svix_id));
                    return summary;
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    summary
}

/// Replays one delivery; an error means a service was unavailable or refused the gateway
/// (stop the run: every delivery would fail alike).
async fn replay_one(
    downstream: &Downstream,
    owner: Owner,
    d: &ops::QuarantinedDelivery,
    summary: &mut ReplaySummary,
) -> Result<(), ForwardError> {
    if d.body.is_empty() {
        summary.without_body += 1;
        return Ok(());
    }
    // Kept open with the new reason; the deliveries after it are still replayed.
    let kept = |reason: String| async move {
        let kept = keep(downstream, &d.svix_id, &d.event_type, &reason, &d.body).await?;
        match kept {
            Kept::Open => {
                tracing::warn!(svix_id = d.svix_id, event_type = d.event_type, %reason, "replayed delivery not applied; kept")
            }
            // Listed open, closed since (an operator's discard during the run).
            Kept::Closed => {
                tracing::warn!(svix_id = d.svix_id, event_type = d.event_type, %reason, "replayed delivery not applied; its record was closed meanwhile and stays closed")
            }
        }
        Ok(())
    };
    let command = match clerk::to_command(&d.svix_id, &d.body) {
        Ok((_, command)) => command,
        Err(Malformed(reason)) => {
            summary.still_refused += 1;
            return kept(format!("malformed Clerk event: {reason}")).await;
        }
    };
    match downstream.send(command).await {
        Ok(outcome) => {
            match outcome {
                "applied" => summary.applied += 1,
                "duplicate" => summary.duplicate += 1,
                "stale" => summary.stale += 1,
                _ => summary.ignored += 1,
            }
            tracing::info!(
                svix_id = d.svix_id,
                event_type = d.event_type,
                outcome,
                "quarantined delivery replayed"
            );
            resolve(
                downstream,
                owner,
                &d.svix_id,
                &format!("replayed: {outcome}"),
            )
            .await
        }
        Err(ForwardError::Rejected(reason)) => {
            summary.still_refused += 1;
            kept(format!("refused by a service: {reason}")).await
        }
        Err(ForwardError::Failed(reason)) => {
            // This delivery's failure (a service's bug, say), not the run's.
            summary.failed += 1;
            kept(format!("failed at a service: {reason}")).await
        }
        Err(e @ (ForwardError::Unavailable(_) | ForwardError::Denied(_))) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_types() {
        assert_eq!(Owner::of("user.updated"), Owner::Identity);
        assert_eq!(Owner::of(""), Owner::Identity);
        assert_eq!(Owner::of("organization.deleted"), Owner::Workspace);
        assert_eq!(
            Owner::of("organizationMembership.created"),
            Owner::Workspace
        );
        assert_eq!(
            event_type_of(br#"{"type":"user.created","data":1}"#),
            "user.created"
        );
        assert_eq!(event_type_of(br#"{"type":7}"#), "");
        assert_eq!(event_type_of(b"not json"), "");
        assert_eq!(event_type_of(br#"{"type":"a\u0007b"}"#), "ab");
    }
}
