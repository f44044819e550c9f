//! A Liveblocks room token (`AuthorizeLiveblocksRoom`) with a user token against the stand-in
//! answering `authorize-user` in 20 ms, against bare HTTP clients asking the stand-in the same
//! at the same latency: what our checks (token, organization, revocation, room owner) add.

use crate::load::Bench;
use crate::load::{
    Stats, bench_members, bench_workspace, drop_bench_workspace, load, pg, settle, stack_signers,
};
use crate::probes::CpuProbe;
use crate::report::Report;
use anyhow::{Context, Result};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::dev_user_claims;

const ORG: &str = "org_broomtoken";
const USERS: usize = 100;
/// The stand-in's fixed latency for both sides.
const LATENCY: Duration = Duration::from_millis(20);

/// A document room in the bench workspace with `USERS` members: its Liveblocks room id.
async fn document_room(wsc: &mut WorkspaceServiceClient<Channel>, token: &str) -> Result<String> {
    bench_workspace(wsc, token, ORG, "Room tokens").await?;
    bench_members(wsc, token, ORG, "user_rt", USERS).await?;
    let room = wsc
        .create_room(service_harness::bearer(
            wsp::CreateRoomRequest {
                clerk_org_id: ORG.into(),
                kind: wsp::RoomKind::Document.into(),
                name: "Docs".into(),
                request_id: String::new(),
            },
            token,
        ))
        .await?
        .into_inner()
        .room
        .context("room")?;
    Ok(wsc
        .create_room_item(service_harness::bearer(
            wsp::CreateRoomItemRequest {
                room_id: room.id,
                kind: wsp::ItemKind::Document.into(),
                name: "Plan".into(),
                language: String::new(),
                request_id: String::new(),
            },
            token,
        ))
        .await?
        .into_inner()
        .item
        .context("item")?
        .liveblocks_room_id)
}

/// `total` calls of the stand-in's `authorize-user` from `c` bare HTTP clients, with the body
/// our service sends.
async fn bare(base_url: &str, room: &str, total: usize, c: usize) -> Stats {
    let http = reqwest::Client::new();
    let url = format!("{base_url}/v2/authorize-user");
    let room = room.to_owned();
    load(vec![(); c], total, move |(), i| {
        let (http, url, room) = (http.clone(), url.clone(), room.clone());
        async move {
            let body = json!({"userId": format!("user_rt{}", i % USERS),
                              "userInfo": {"name": "R"},
                              "permissions": {room: ["room:write"]}});
            http.post(url)
                .bearer_auth(vbase_stack::DEV_LIVEBLOCKS_SECRET)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await
}

/// The room-token row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, c) = (b.stack, b.concurrency);
    let total = if b.smoke { 200 } else { 5_000 };
    let live = stack.liveblocks.as_ref().context("liveblocks stand-in")?;
    let (key, minter) = stack_signers(stack)?;
    let mut wsc = WorkspaceServiceClient::new(
        Channel::from_shared(format!("http://{}", stack.workspace_addr))?
            .connect()
            .await?,
    );
    let token = minter.token_for("workspace-service")?;
    let room = document_room(&mut wsc, &token).await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..USERS)
            .map(|u| {
                let claims = dev_user_claims(
                    &stack.state,
                    &format!("user_rt{u}"),
                    Some(ORG),
                    "org:member",
                    "R",
                    "r@example.org",
                );
                key.sign(&claims).map_err(anyhow::Error::from)
            })
            .collect::<Result<_>>()?,
    );
    let mut clients = Vec::new();
    for _ in 0..c {
        let ch = Channel::from_shared(format!("http://{}", stack.workspace_addr))?;
        clients.push(WorkspaceServiceClient::new(ch.connect().await?));
    }
    live.set_latency(LATENCY);
    live.set_mode(stand_ins::LiveblocksMode::Up);
    let wdb = pg(&stack.workspace_db).await?;
    settle(&wdb).await?;
    let probe = CpuProbe::start(stack);
    let (toks, r) = (tokens.clone(), room.clone());
    let ours = load(
        clients,
        total,
        move |mut cl: WorkspaceServiceClient<Channel>, i| {
            let (tok, room_id) = (toks[i % toks.len()].clone(), r.clone());
            async move {
                let req = wsp::AuthorizeLiveblocksRoomRequest { room_id };
                cl.authorize_liveblocks_room(service_harness::bearer(req, &tok))
                    .await
                    .is_ok_and(|a| !a.into_inner().token.is_empty())
            }
        },
    )
    .await;
    report
        .cpu
        .push(format!("room token, ours: {}", probe.per_call(total)));
    let raw = bare(&live.base_url(), &room, total, c).await;
    live.set_latency(Duration::ZERO);
    report.rows.push([
        format!("Liveblocks room token `AuthorizeLiveblocksRoom`, stand-in at 20 ms, concurrency {c}"),
        format!(
            "{:.0} RPS, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
            ours.rate(),
            ours.pct(0.5),
            ours.pct(0.99),
            ours.errors
        ),
        format!(
            "{c} bare HTTP clients on the stand-in's authorize-user: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
            raw.rate(),
            raw.pct(0.5),
            raw.pct(0.99),
            raw.errors
        ),
        format!(
            "{:.2}x of the bare clients; p50 +{:.1} ms",
            ours.rate() / raw.rate(),
            ours.pct(0.5) - raw.pct(0.5)
        ),
    ]);
    drop_bench_workspace(&mut wsc, &minter.token_for("workspace-service")?, &wdb, ORG).await
}
