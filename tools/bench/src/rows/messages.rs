//! Messages posted at full rate (issue #36): members of one workspace post into a few channels
//! through `PostMessage` with their own user tokens, as fast as the concurrent clients go,
//! against the rows one post writes sent straight to PostgreSQL: the message insert and its
//! change-log entry (with its `pg_notify`) in one transaction, the statements of
//! `services/workspace-service/src/domain/messages.rs` (`post_message`) and `changes.rs`
//! (`record`), prepared once per connection.

use crate::load::{
    Bench, bench_members, bench_workspace, drop_bench_workspace, load, pg, settle, stack_signers,
};
use crate::probes::CpuProbe;
use crate::report::Report;
use anyhow::{Context, Result};
use prost::Message as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use uuid::Uuid;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::channel_event::Event;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::dev_user_claims;

const ORG: &str = "org_bmsg";
/// Members posting (one token each).
const MEMBERS: usize = 100;
/// Channels they post into.
const CHANNELS: usize = 4;

/// The body of post `i`: a short chat line, the same on both sides.
fn body(i: usize) -> String {
    format!("bench message {i}: a short line of chat, as typed into a channel")
}

/// The statements of one post's transaction, prepared once per connection: the message insert
/// (`RETURNING` the columns the service reads back, with its `author_deleted` check), and the
/// change-log entry that numbers it in its workspace and notifies the watchers.
#[derive(Clone)]
pub struct PostDirect {
    pub db: Arc<tokio_postgres::Client>,
    pub insert: tokio_postgres::Statement,
    pub record: tokio_postgres::Statement,
}

impl PostDirect {
    pub async fn connect(url: &str) -> Result<Self> {
        let db = pg(url).await?;
        let insert = db
            .prepare(
                "INSERT INTO messages (id, channel_id, author_clerk_id, body, created_at, workspace_id)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, channel_id, author_clerk_id, body,
                 (author_deleted OR EXISTS (SELECT 1 FROM removed_users u WHERE u.clerk_user_id = author_clerk_id))
                   AS author_deleted,
                 created_at, edited_at",
            )
            .await?;
        let record = db
            .prepare(
                "WITH head AS (
                     INSERT INTO change_heads AS h (workspace_id, seq) VALUES ($1, 1)
                     ON CONFLICT (workspace_id) DO UPDATE SET seq = h.seq + 1
                     RETURNING seq),
                 woken AS (SELECT pg_notify($4, $1::text))
                 INSERT INTO change_log (workspace_id, seq, channel_id, payload, message_id)
                 SELECT $1, head.seq, $2, $3, $5 FROM head, woken
                 RETURNING seq",
            )
            .await?;
        Ok(Self { db, insert, record })
    }

    /// One post: BEGIN, the insert, the change-log entry carrying the posted message as a
    /// watcher receives it, COMMIT (rolled back on an error), as the service's transaction.
    pub async fn post(&self, workspace: Uuid, channel: Uuid, author: &str, body: &str) -> bool {
        if self.db.batch_execute("BEGIN").await.is_err() {
            return false;
        }
        match self.statements(workspace, channel, author, body).await {
            Ok(()) => self.db.batch_execute("COMMIT").await.is_ok(),
            Err(_) => {
                let _ = self.db.batch_execute("ROLLBACK").await;
                false
            }
        }
    }

    async fn statements(
        &self,
        workspace: Uuid,
        channel: Uuid,
        author: &str,
        body: &str,
    ) -> Result<()> {
        let m = self
            .db
            .query_one(
                &self.insert,
                &[
                    &Uuid::now_v7(),
                    &channel,
                    &author,
                    &body,
                    &SystemTime::now(),
                    &workspace,
                ],
            )
            .await?;
        let id: Uuid = m.get(0);
        let created_at: SystemTime = m.get(5);
        let edited_at: Option<SystemTime> = m.get(6);
        let millis = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        let payload = wsp::ChannelEvent {
            event: Some(Event::MessagePosted(wsp::Message {
                id: id.to_string(),
                channel_id: m.get::<_, Uuid>(1).to_string(),
                author_clerk_id: m.get(2),
                body: m.get(3),
                created_at: Some(vbase_proto::timestamp_from_millis(millis(created_at))),
                edited_at: edited_at.map(|t| vbase_proto::timestamp_from_millis(millis(t))),
                author_deleted: m.get(4),
            })),
            ..Default::default()
        }
        .encode_to_vec();
        self.db
            .query_one(
                &self.record,
                &[
                    &workspace,
                    &Some(channel),
                    &payload,
                    &"vbase_changes",
                    &Some(id),
                ],
            )
            .await?;
        Ok(())
    }
}

/// The messages row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, c, total) = (b.stack, b.concurrency, b.scale.messages);
    let (rows, cpu) = (&mut report.rows, &mut report.cpu);
    let (key, minter) = stack_signers(stack)?;
    let service = minter.token_for("workspace-service")?;
    let mut wsc = WorkspaceServiceClient::new(
        Channel::from_shared(format!("http://{}", stack.workspace_addr))?
            .connect()
            .await?,
    );
    bench_workspace(&mut wsc, &service, ORG, "Messages").await?;
    bench_members(&mut wsc, &service, ORG, "user_m", MEMBERS).await?;
    let mut channels = Vec::new();
    for n in 0..CHANNELS {
        let ch = wsc
            .create_channel(service_harness::bearer(
                wsp::CreateChannelRequest {
                    clerk_org_id: ORG.into(),
                    name: format!("chat-{n}"),
                },
                &service,
            ))
            .await?
            .into_inner()
            .channel
            .context("channel")?;
        channels.push(ch.id);
    }
    let channels = Arc::new(channels);
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..MEMBERS)
            .map(|u| {
                key.sign(&dev_user_claims(
                    &stack.state,
                    &format!("user_m{u}"),
                    Some(ORG),
                    "org:member",
                    "M",
                    "m@example.org",
                ))
            })
            .collect::<Result<_, _>>()?,
    );
    // One HTTP/2 connection per concurrent client, as the read rows.
    let mut clients = Vec::new();
    for _ in 0..c {
        clients.push(WorkspaceServiceClient::new(
            Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                .connect()
                .await?,
        ));
    }
    let reported = Arc::new(AtomicBool::new(false));
    let post = {
        let (tokens, channels) = (tokens.clone(), channels.clone());
        move |mut cl: WorkspaceServiceClient<Channel>, i: usize| {
            let tok = tokens[i % MEMBERS].clone();
            let channel_id = channels[i % CHANNELS].clone();
            let reported = reported.clone();
            async move {
                let r = cl
                    .post_message(service_harness::bearer(
                        wsp::PostMessageRequest {
                            channel_id,
                            body: body(i),
                            author_clerk_id: String::new(),
                            request_id: String::new(),
                        },
                        &tok,
                    ))
                    .await;
                if let Err(e) = &r
                    && !reported.swap(true, Ordering::Relaxed)
                {
                    eprintln!("messages: first failed post: {e}");
                }
                r.is_ok()
            }
        }
    };
    // Warm-up, not measured: the service opens its pooled connections, prepares its statements
    // and fills its access cache, as the baseline's connections are opened and prepared before
    // its clock starts.
    load(clients.clone(), 8 * c, post.clone()).await;
    let wdb = pg(&stack.workspace_db).await?;
    settle(&wdb).await?;
    let probe = CpuProbe::start(stack);
    let ours = load(clients, total, post).await;
    cpu.push(format!("messages, ours: {}", probe.per_call(total)));

    let workspace: Uuid = wdb
        .query_one(
            "SELECT id FROM workspaces WHERE clerk_org_id = $1 AND deleted_at IS NULL",
            &[&ORG],
        )
        .await?
        .get(0);
    let channel_ids: Arc<Vec<Uuid>> = Arc::new(
        channels
            .iter()
            .map(|c| Uuid::parse_str(c))
            .collect::<Result<_, _>>()?,
    );
    let mut direct = Vec::new();
    for _ in 0..c {
        direct.push(PostDirect::connect(&stack.workspace_db).await?);
    }
    settle(&wdb).await?;
    let probe = CpuProbe::start(stack);
    let base = load(direct, total, move |d: PostDirect, i| {
        let channel = channel_ids[i % CHANNELS];
        async move {
            d.post(
                workspace,
                channel,
                &format!("user_m{}", i % MEMBERS),
                &body(i),
            )
            .await
        }
    })
    .await;
    cpu.push(format!("messages, baseline: {}", probe.per_call(total)));
    rows.push([
        format!(
            "messages posted at full rate `PostMessage`, {total} by {MEMBERS} members (user tokens) into {CHANNELS} channels of one workspace, concurrency {c}"
        ),
        format!(
            "{:.0} messages/s, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
            ours.rate(),
            ours.pct(0.5),
            ours.pct(0.99),
            ours.errors
        ),
        format!(
            "{:.0} posts/s the message insert and its change-log entry in one transaction straight to PostgreSQL, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
            base.rate(),
            base.pct(0.5),
            base.pct(0.99),
            base.errors
        ),
        format!(
            "{:.2}x rate (no goal stated)",
            ours.rate() / base.rate()
        ),
    ]);
    // Leave nothing behind for the rows that count the workspace tables.
    drop_bench_workspace(&mut wsc, &minter.token_for("workspace-service")?, &wdb, ORG).await?;
    Ok(())
}
