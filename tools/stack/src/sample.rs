//! `vbase-stack send-sample`: one signed Clerk event of any type the gateway handles, the
//! gateway's answer, and the one grpcurl command that shows what it changed.

use crate::admin_rpc;
use anyhow::{Result, bail};
use vbase_stack::StackState;
use vbase_stack::clerk_events::{self, Sample};

/// The service that owns an event type (and keeps it in quarantine when it is malformed).
pub fn owner(kind: &str) -> &'static str {
    if kind.starts_with("user.") {
        "identity-service"
    } else {
        "workspace-service"
    }
}

/// The grpcurl command that shows the effect of `kind` about `s` on the running stack.
pub fn effect_command(state: &StackState, kind: &str, s: &Sample, malformed: bool) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "vbase-stack".into());
    let service = owner(kind);
    let addr = if service == "identity-service" {
        &state.identity_addr
    } else {
        &state.workspace_addr
    };
    let (token, data, method) = if malformed {
        (
            format!("--operator {service}"),
            "{}".to_owned(),
            admin_rpc::list_quarantined_method(),
        )
    } else if kind.starts_with("user.") {
        (
            format!("--service {service}"),
            format!(r#"{{"clerk_id":"{}"}}"#, s.user),
            "vbase.identity.v1.IdentityService/GetUser".to_owned(),
        )
    } else {
        let method = if kind.starts_with("organization.") {
            "GetWorkspace"
        } else {
            "ListMembers"
        };
        (
            format!("--service {service}"),
            format!(r#"{{"clerk_org_id":"{}"}}"#, s.org),
            format!("vbase.workspace.v1.WorkspaceService/{method}"),
        )
    };
    format!(
        "grpcurl -plaintext -H \"authorization: Bearer $({exe} mint-token {token})\" -d '{data}' {addr} {method}"
    )
}

/// Sends one sample and prints what happened; fails unless the gateway answered 2xx.
pub async fn send(state: &StackState, kind: &str, s: &Sample, malformed: bool) -> Result<()> {
    let body = clerk_events::event(kind, s, malformed)?;
    let about = if kind.starts_with("user.") {
        s.user.clone()
    } else if kind.starts_with("organization.") {
        s.org.clone()
    } else {
        format!("{} in {} ({})", s.user, s.org, s.role)
    };
    let d = clerk_events::deliver(state, &body).await?;
    println!(
        "sent {}{kind} about {about} (svix-id {})",
        if malformed { "a malformed " } else { "" },
        d.svix_id
    );
    println!("gateway answered: {} {}", d.status, d.body);
    if !(200..300).contains(&d.status) {
        bail!("the gateway did not accept the delivery");
    }
    println!("its effect:");
    println!("  {}", effect_command(state, kind, s, malformed));
    Ok(())
}
