//! `vbase-stack story`: the product's life in eight steps against the running stack, each a
//! signed Clerk webhook or a user's call, followed by what changed as the services answer it.

use crate::grpc::{bearer, connect, status_line};
use crate::{admin_rpc, tokens};
use anyhow::{Context, Result, bail, ensure};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::channel_event::Event;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::StackState;
use vbase_stack::clerk_events::{self, Sample};

/// The people and the organization of one run (fresh ids each run, so it can run again).
struct Cast {
    ada: String,
    ben: String,
    org: String,
}

struct Story<'a> {
    state: &'a StackState,
    cast: Cast,
    identity: IdentityServiceClient<Channel>,
    workspace: WorkspaceServiceClient<Channel>,
    workspace_channel: Channel,
    step: usize,
    /// Filled in as the story goes: the workspace's id, its #general, the two users' tokens.
    workspace_id: String,
    general: String,
    ada_token: String,
    ben_token: String,
}

fn sample(user: &str, org: &str, role: &str, name: &str) -> Sample {
    Sample {
        user: user.into(),
        org: org.into(),
        role: role.into(),
        name: name.into(),
    }
}

impl Story<'_> {
    fn title(&mut self, what: &str) {
        self.step += 1;
        println!("\n{}. {what}", self.step);
    }

    /// Sends one signed event through the gateway; it must be applied.
    async fn webhook(&self, kind: &str, s: Sample) -> Result<()> {
        let d = clerk_events::deliver(self.state, &clerk_events::event(kind, &s, false)?).await?;
        println!("   webhook {kind} -> {} {}", d.status, d.body);
        ensure!(
            d.status == 200 && d.body.contains("applied"),
            "{kind} was not applied"
        );
        Ok(())
    }

    fn user_token(&self, user: &str, role: &str) -> Result<String> {
        tokens::user(
            self.state,
            user,
            Some(&self.cast.org),
            role,
            user,
            &format!("{user}@example.com"),
        )
    }

    async fn user_shown(&mut self, user: &str) -> Result<()> {
        let token = tokens::stack_caller(self.state, "identity-service")?;
        let u = self
            .identity
            .get_user(bearer(
                idp::GetUserRequest {
                    clerk_id: user.into(),
                },
                &token,
            ))
            .await?
            .into_inner()
            .user
            .context("no user")?;
        println!(
            "   changed: identity-service holds {} ({}, {})",
            u.clerk_id, u.name, u.email
        );
        Ok(())
    }

    async fn members(&mut self, token: &str) -> Result<String> {
        let members = self
            .workspace
            .list_members(bearer(
                wsp::ListMembersRequest {
                    clerk_org_id: self.cast.org.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .members;
        Ok(members
            .iter()
            .map(|m| format!("{} ({})", m.clerk_user_id, m.role))
            .collect::<Vec<_>>()
            .join(", "))
    }

    async fn general(&mut self, token: &str) -> Result<String> {
        let channels = self
            .workspace
            .list_channels(bearer(
                wsp::ListChannelsRequest {
                    clerk_org_id: self.cast.org.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner()
            .channels;
        channels
            .into_iter()
            .find(|c| c.name == "general")
            .map(|c| c.id)
            .context("the workspace has no general channel")
    }

    async fn post(&mut self, token: &str, channel: &str, body: &str) -> Result<(), tonic::Status> {
        self.workspace
            .post_message(bearer(
                wsp::PostMessageRequest {
                    channel_id: channel.into(),
                    body: body.into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ())
    }
}

/// The next message (or the end) of a watch, within `wait`.
async fn next_message(
    watch: &mut tonic::Streaming<wsp::ChannelEvent>,
    wait: Duration,
) -> Result<std::result::Result<wsp::Message, String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, watch.message()).await {
            Err(_) => bail!("nothing arrived within {wait:?}"),
            Ok(Ok(Some(e))) => {
                if let Some(Event::MessagePosted(m)) = e.event {
                    return Ok(Ok(m));
                }
            }
            Ok(Ok(None)) => return Ok(Err("the stream ended".into())),
            Ok(Err(s)) => return Ok(Err(status_line(&s))),
        }
    }
}

/// Steps 1 and 2: two users sign up.
async fn sign_up(s: &mut Story<'_>) -> Result<()> {
    for (user, name) in [(s.cast.ada.clone(), "Ada"), (s.cast.ben.clone(), "Ben")] {
        s.title(&format!("{name} signs up (Clerk sends user.created)"));
        s.webhook("user.created", sample(&user, &s.cast.org, "", name))
            .await?;
        s.user_shown(&user).await?;
    }
    Ok(())
}

/// Step 3: Ada creates the organization, and with it her membership.
async fn found(s: &mut Story<'_>) -> Result<()> {
    let (ada, org) = (s.cast.ada.clone(), s.cast.org.clone());
    s.title(
        "Ada creates the organization \"Story Co\" (organization.created, then her membership)",
    );
    s.webhook("organization.created", sample(&ada, &org, "", "Story Co"))
        .await?;
    s.webhook(
        "organizationMembership.created",
        sample(&ada, &org, "org:admin", "Story Co"),
    )
    .await?;
    s.ada_token = s.user_token(&ada, "org:admin")?;
    let token = s.ada_token.clone();
    let w = s
        .workspace
        .get_workspace(bearer(
            wsp::GetWorkspaceRequest { clerk_org_id: org },
            &token,
        ))
        .await?
        .into_inner()
        .workspace
        .context("no workspace")?;
    s.workspace_id = w.id.clone();
    s.general = s.general(&token).await?;
    println!(
        "   changed: workspace \"{}\" ({}) exists with its #general channel; members: {}",
        w.name,
        w.id,
        s.members(&token).await?
    );
    Ok(())
}

/// Step 4: Ben becomes a member.
async fn invite(s: &mut Story<'_>) -> Result<()> {
    let (ben, org) = (s.cast.ben.clone(), s.cast.org.clone());
    s.title("Ada invites Ben, who accepts (organizationMembership.created)");
    s.webhook(
        "organizationMembership.created",
        sample(&ben, &org, "org:member", "Story Co"),
    )
    .await?;
    s.ben_token = s.user_token(&ben, "org:member")?;
    let token = s.ben_token.clone();
    println!("   changed: members: {}", s.members(&token).await?);
    Ok(())
}

/// Step 5: Ben watches #general, Ada posts, Ben answers. Returns Ben's open watch.
async fn chat(s: &mut Story<'_>) -> Result<tonic::Streaming<wsp::ChannelEvent>> {
    s.title("They chat in #general: Ben watches live, Ada posts, Ben answers");
    let (general, ada_token, ben_token) =
        (s.general.clone(), s.ada_token.clone(), s.ben_token.clone());
    let mut watch = s
        .workspace
        .watch_channel(bearer(
            wsp::WatchChannelRequest {
                channel_id: general.clone(),
                resume_token: String::new(),
            },
            &ben_token,
        ))
        .await?
        .into_inner();
    let posted = Instant::now();
    s.post(&ada_token, &general, "Hi Ben, welcome to Story Co!")
        .await?;
    match next_message(&mut watch, Duration::from_secs(5)).await? {
        Ok(m) => println!(
            "   Ben's watch received {:?} from {} after {} ms",
            m.body,
            m.author_clerk_id,
            posted.elapsed().as_millis()
        ),
        Err(e) => bail!("Ben's watch ended: {e}"),
    }
    s.post(&ben_token, &general, "Thanks Ada!").await?;
    let messages = s
        .workspace
        .list_messages(bearer(
            wsp::ListMessagesRequest {
                channel_id: general,
                ..Default::default()
            },
            &ada_token,
        ))
        .await?
        .into_inner()
        .messages;
    println!("   changed: #general holds {} messages", messages.len());
    Ok(watch)
}

/// Step 6: Ben's membership is deleted; his calls are refused and his open watch ends.
async fn remove(s: &mut Story<'_>, mut watch: tonic::Streaming<wsp::ChannelEvent>) -> Result<()> {
    let (ben, org) = (s.cast.ben.clone(), s.cast.org.clone());
    s.title("Ben is removed from the organization (organizationMembership.deleted)");
    s.webhook(
        "organizationMembership.deleted",
        sample(&ben, &org, "org:member", "Story Co"),
    )
    .await?;
    let (general, ada_token, ben_token) =
        (s.general.clone(), s.ada_token.clone(), s.ben_token.clone());
    match s.post(&ben_token, &general, "still here?").await {
        Ok(()) => bail!("Ben could still post after his removal"),
        Err(e) => println!("   changed: Ben's post is refused: {}", status_line(&e)),
    }
    // An open watch learns of the removal at its next access re-check
    // (WATCH_ACCESS_RECHECK_SECS: 2 s in the local stack, 30 s by default).
    let removed = Instant::now();
    loop {
        match next_message(&mut watch, Duration::from_secs(35)).await {
            Ok(Err(e)) => {
                println!(
                    "   Ben's open watch ended at its access re-check, {} ms later: {e}",
                    removed.elapsed().as_millis()
                );
                break;
            }
            Ok(Ok(_)) => continue,
            Err(e) => bail!("Ben's watch was not closed: {e}"),
        }
    }
    println!("   members: {}", s.members(&ada_token).await?);
    Ok(())
}

/// Steps 7 and 8: the organization is deleted, then purged in the background.
async fn delete_and_purge(s: &mut Story<'_>) -> Result<()> {
    let (ada, org) = (s.cast.ada.clone(), s.cast.org.clone());
    s.title("Ada deletes the organization (organization.deleted)");
    s.webhook("organization.deleted", sample(&ada, &org, "", "Story Co"))
        .await?;
    let service = tokens::stack_caller(s.state, "workspace-service")?;
    match s
        .workspace
        .get_workspace(bearer(
            wsp::GetWorkspaceRequest { clerk_org_id: org },
            &service,
        ))
        .await
    {
        Ok(_) => bail!("the workspace is still there"),
        Err(e) => println!(
            "   changed: the workspace is gone for every call: {}",
            status_line(&e)
        ),
    }

    s.title("Its rows are purged in the background (the purge job queue)");
    let operator = tokens::operator(s.state, "workspace-service")?;
    let id = s.workspace_id.clone();
    let started = Instant::now();
    let mut seen = false;
    loop {
        let left = admin_rpc::purge_jobs_for(s.workspace_channel.clone(), &operator, &id).await?;
        if left == 0 {
            break;
        }
        if !seen {
            println!("   the purge job of workspace {id} is queued");
            seen = true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the purge of {id} did not finish within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "   changed: no purge job left for workspace {id} ({} ms): its channels and messages are deleted",
        started.elapsed().as_millis()
    );
    Ok(())
}

pub async fn run(state: &StackState) -> Result<()> {
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let cast = Cast {
        ada: format!("user_ada_{tag}"),
        ben: format!("user_ben_{tag}"),
        org: format!("org_story_{tag}"),
    };
    println!(
        "The story of {}: Ada ({}) and Ben ({}).",
        cast.org, cast.ada, cast.ben
    );
    let workspace_channel = connect(&state.workspace_addr).await?;
    let mut s = Story {
        state,
        identity: IdentityServiceClient::new(connect(&state.identity_addr).await?),
        workspace: WorkspaceServiceClient::new(workspace_channel.clone()),
        workspace_channel,
        cast,
        step: 0,
        workspace_id: String::new(),
        general: String::new(),
        ada_token: String::new(),
        ben_token: String::new(),
    };
    sign_up(&mut s).await?;
    found(&mut s).await?;
    invite(&mut s).await?;
    let watch = chat(&mut s).await?;
    remove(&mut s, watch).await?;
    delete_and_purge(&mut s).await?;
    println!("\nThe story ran to its end.");
    Ok(())
}
