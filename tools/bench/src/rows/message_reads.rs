//! Message reads in a big workspace (issue #36): members page the messages of one channel
//! through `ListMessages` with their own user tokens, in a small workspace (1,000 messages) and
//! in a big one (1,000,000 messages in the channel, bulk-filled with SQL as the delete row
//! fills its workspace); in the big one the first page and a page deep in the history, reached
//! by walking the channel with the API's own page tokens. Each against the statements one call
//! runs with a warm access cache (the channel's scope, then the page: `channel_scope` in
//! `services/workspace-service/src/domain/access.rs` and `list_messages` in
//! `services/workspace-service/src/domain/messages.rs`), prepared once per connection with the
//! plan mode of the pool `ListMessages` reads on (the service's own, `PLANS`:
//! `plan_cache_mode = force_custom_plan`; `READ_PLANS`' generic plans are the hot pool's, which
//! serves `ListChannels`), sent straight to PostgreSQL by as many clients. As a diagnosis, the
//! deep page is also sent planned once for any cursor (`force_generic_plan`), and the page's
//! `EXPLAIN (ANALYZE, BUFFERS)` goes to stderr both ways.

use crate::load::{
    Bench, Stats, bench_members, bench_workspace, drop_bench_workspace, load, pg, settle,
    stack_signers,
};
use crate::probes::CpuProbe;
use crate::report::Report;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};
use tokio_postgres::types::Type;
use tonic::transport::Channel;
use uuid::Uuid;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::dev_user_claims;

/// Members reading each workspace (one token each).
const MEMBERS: usize = 100;
/// Messages in the small workspace's channel.
const SMALL_MESSAGES: usize = 1_000;
/// Rows a page of the walk asks for (the service's `MAX_PAGE`).
const WALK_PAGE: i32 = 500;
/// The `LIMIT` of a default page (`DEFAULT_PAGE` 50, plus the one row that says more follow).
const PAGE_LIMIT: i64 = 51;
/// What a message adds to its body and author in an answer (`MESSAGE_FIXED` in the service:
/// `FIELD + 2 * UUID + 2 * FIELD + 2 * TIMESTAMP + SMALL` = 5 + 82 + 10 + 48 + 12).
const MESSAGE_FIXED: i64 = 157;
/// The bytes a page's rows may take at the default `RESPONSE_MAX_BYTES` (256 KiB less the
/// answer's envelope of 256 bytes: `row_budget`).
const ROW_BYTES: i64 = 256 * 1024 - 256;
/// A deep page's calls run for about this long per side (bounded by the row's count).
const DEEP_PHASE_SECS: f64 = 20.0;

/// The channel scope of a user's call (`CHANNEL_SCOPE.in_workspace`).
const SCOPE_SQL: &str = "SELECT c.workspace_id, w.clerk_org_id, c.name AS detail
          FROM channels c JOIN workspaces w ON w.id = c.workspace_id
         WHERE c.workspace_id = $1 AND c.id = $2 AND w.deleted_at IS NULL";

/// The page of `list_messages`, with `message_columns!()` spelled out.
const PAGE_SQL: &str = "SELECT id, channel_id, author_clerk_id, body,
         (author_deleted OR EXISTS (SELECT 1 FROM removed_users u WHERE u.clerk_user_id = author_clerk_id))
           AS author_deleted,
         created_at, edited_at FROM (
             SELECT id, channel_id, author_clerk_id, body, author_deleted, created_at, edited_at,
                    sum(octet_length(body) + octet_length(author_clerk_id) + $5)
                      OVER (ORDER BY created_at DESC, id DESC) AS upto,
                    octet_length(body) + octet_length(author_clerk_id) + $5 AS own
               FROM (SELECT id, channel_id, author_clerk_id, body, author_deleted, created_at, edited_at
                       FROM messages WHERE workspace_id = $7 AND channel_id = $1
                        AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                      ORDER BY created_at DESC, id DESC LIMIT $4) l) p
          WHERE upto - own < $6
          ORDER BY created_at DESC, id DESC";

/// The parameter types diesel binds for the page (`SqlUuid`, `Nullable<Timestamptz>`,
/// `Nullable<SqlUuid>`, `BigInt` x3, `SqlUuid`).
const PAGE_TYPES: &[Type] = &[
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::UUID,
];

/// Where a page starts: after this message (its time and id), or at the newest.
type After = Option<(SystemTime, Uuid)>;

/// One baseline client: a connection planned as `plans` says (the service's pool for
/// `ListMessages`: `force_custom_plan`), with the two statements of a call prepared once.
#[derive(Clone)]
pub struct ReadDirect {
    pub db: Arc<tokio_postgres::Client>,
    pub scope: tokio_postgres::Statement,
    pub page: tokio_postgres::Statement,
}

impl ReadDirect {
    /// `plans`: the `plan_cache_mode` of the connection.
    pub async fn connect(url: &str, plans: &str) -> Result<Self> {
        let db = pg(url).await?;
        db.batch_execute(&format!("SET plan_cache_mode = {plans}"))
            .await?;
        let scope = db
            .prepare_typed(SCOPE_SQL, &[Type::UUID, Type::UUID])
            .await?;
        let page = db.prepare_typed(PAGE_SQL, PAGE_TYPES).await?;
        Ok(Self { db, scope, page })
    }

    /// One call's statements: the channel's scope, then a default page after `after`; fails
    /// when the page comes back empty.
    pub async fn read(&self, workspace: Uuid, channel: Uuid, after: After) -> Result<()> {
        self.db
            .query_one(&self.scope, &[&workspace, &channel])
            .await?;
        let rows = self
            .db
            .query(
                &self.page,
                &[
                    &channel,
                    &after.map(|a| a.0),
                    &after.map(|a| a.1),
                    &PAGE_LIMIT,
                    &MESSAGE_FIXED,
                    &ROW_BYTES,
                    &workspace,
                ],
            )
            .await?;
        anyhow::ensure!(!rows.is_empty(), "an empty page");
        Ok(())
    }
}

/// A workspace of the row: its organization, ids, and its members' tokens.
struct Ws {
    org: &'static str,
    id: Uuid,
    channel: Uuid,
    tokens: Arc<Vec<String>>,
}

/// Creates the workspace of `org` with `MEMBERS` members and a channel, and fills the channel
/// with `messages` messages, one a second back from now, the oldest written first (as they
/// arrive), by the members in turn.
async fn workspace(
    b: &Bench<'_>,
    wsc: &mut WorkspaceServiceClient<Channel>,
    org: &'static str,
    member_prefix: &str,
    messages: usize,
) -> Result<Ws> {
    let (key, minter) = stack_signers(b.stack)?;
    let service = minter.token_for("workspace-service")?;
    bench_workspace(wsc, &service, org, "Message reads").await?;
    bench_members(wsc, &service, org, member_prefix, MEMBERS).await?;
    let channel = wsc
        .create_channel(service_harness::bearer(
            wsp::CreateChannelRequest {
                clerk_org_id: org.into(),
                name: "history".into(),
            },
            &service,
        ))
        .await?
        .into_inner()
        .channel
        .context("channel")?;
    let channel = Uuid::parse_str(&channel.id)?;
    let id: Uuid = b
        .wdb
        .query_one(
            "SELECT id FROM workspaces WHERE clerk_org_id = $1 AND deleted_at IS NULL",
            &[&org],
        )
        .await?
        .get(0);
    let t = Instant::now();
    b.wdb
        .batch_execute(&format!(
            "INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
               SELECT gen_random_uuid(), '{id}', '{channel}', '{member_prefix}' || (g % {MEMBERS}),
                      'bench message ' || g || ': a short line of chat, as typed into a channel',
                      now() - g * interval '1 second'
                 FROM generate_series({messages}, 1, -1) g"
        ))
        .await?;
    eprintln!(
        "message-reads: {messages} messages into {org} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let tokens = (0..MEMBERS)
        .map(|u| {
            key.sign(&dev_user_claims(
                &b.stack.state,
                &format!("{member_prefix}{u}"),
                Some(org),
                "org:member",
                "L",
                "l@example.org",
            ))
        })
        .collect::<Result<_, _>>()?;
    Ok(Ws {
        org,
        id,
        channel,
        tokens: Arc::new(tokens),
    })
}

/// A phase of `ListMessages` calls by the members of `ws`, each a default page starting at
/// `page_token`: a warm-up (not measured: the service's read connections open and prepare,
/// its access cache fills), then `total` calls with their CPU.
async fn ours(
    b: &Bench<'_>,
    clients: &[WorkspaceServiceClient<Channel>],
    ws: &Ws,
    page_token: &str,
    total: usize,
) -> (Stats, String) {
    let reported = Arc::new(AtomicBool::new(false));
    let call = {
        let (tokens, channel, page_token) = (
            ws.tokens.clone(),
            ws.channel.to_string(),
            page_token.to_owned(),
        );
        move |mut cl: WorkspaceServiceClient<Channel>, i: usize| {
            let tok = tokens[i % tokens.len()].clone();
            let (channel_id, page_token) = (channel.clone(), page_token.clone());
            let reported = reported.clone();
            async move {
                let r = cl
                    .list_messages(service_harness::bearer(
                        wsp::ListMessagesRequest {
                            channel_id,
                            page_size: 0,
                            page_token,
                        },
                        &tok,
                    ))
                    .await;
                match r {
                    Ok(page) if !page.get_ref().messages.is_empty() => true,
                    other => {
                        if !reported.swap(true, Ordering::Relaxed) {
                            eprintln!("message-reads: first failed read: {other:?}");
                        }
                        false
                    }
                }
            }
        }
    };
    load(clients.to_vec(), 8 * b.concurrency, call.clone()).await;
    let probe = CpuProbe::start(b.stack);
    let stats = load(clients.to_vec(), total, call).await;
    let cpu = probe.per_call(total);
    (stats, cpu)
}

/// The same phase sent straight to PostgreSQL by `direct`'s clients.
async fn baseline(
    b: &Bench<'_>,
    direct: &[ReadDirect],
    ws: &Ws,
    after: After,
    total: usize,
) -> (Stats, String) {
    let (workspace, channel) = (ws.id, ws.channel);
    let reported = Arc::new(AtomicBool::new(false));
    let call = move |d: ReadDirect, _i: usize| {
        let reported = reported.clone();
        async move {
            match d.read(workspace, channel, after).await {
                Ok(()) => true,
                Err(e) => {
                    if !reported.swap(true, Ordering::Relaxed) {
                        eprintln!("message-reads: first failed baseline read: {e:#}");
                    }
                    false
                }
            }
        }
    };
    load(direct.to_vec(), 8 * b.concurrency, call.clone()).await;
    let probe = CpuProbe::start(b.stack);
    let stats = load(direct.to_vec(), total, call).await;
    let cpu = probe.per_call(total);
    (stats, cpu)
}

/// What the walk found: the token of the page that starts after `depth` messages, the
/// message that page starts after, and each page's latency.
struct Walk {
    token: String,
    after: (SystemTime, Uuid),
    depth: usize,
    page_ms: Vec<f64>,
}

/// Walks `ws`'s channel from its newest message with `ListMessages` (pages of `WALK_PAGE`, the
/// members' tokens in turn), following each answer's `next_page_token`, until `depth` messages
/// are behind.
async fn walk(
    b: &Bench<'_>,
    cl: &mut WorkspaceServiceClient<Channel>,
    ws: &Ws,
    depth: usize,
) -> Result<Walk> {
    let (mut token, mut seen, mut page_ms) = (String::new(), 0, Vec::new());
    let mut last = None;
    while seen < depth {
        let tok = &ws.tokens[page_ms.len() % ws.tokens.len()];
        let t = Instant::now();
        let page = cl
            .list_messages(service_harness::bearer(
                wsp::ListMessagesRequest {
                    channel_id: ws.channel.to_string(),
                    page_size: WALK_PAGE,
                    page_token: token.clone(),
                },
                tok,
            ))
            .await?
            .into_inner();
        page_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            !page.next_page_token.is_empty(),
            "the channel ended after {seen} messages"
        );
        seen += page.messages.len();
        last = page.messages.last().map(|m| m.id.clone());
        token = page.next_page_token;
    }
    // The message the next page starts after, with its time as stored (the API's timestamps
    // are milliseconds; the cursor holds microseconds).
    let id = Uuid::parse_str(&last.context("no page")?)?;
    let at: SystemTime = b
        .wdb
        .query_one(
            "SELECT created_at FROM messages WHERE workspace_id = $1 AND id = $2",
            &[&ws.id, &id],
        )
        .await?
        .get(0);
    Ok(Walk {
        token,
        after: (at, id),
        depth: seen,
        page_ms,
    })
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the page statement after `after` in `ws`, planned with
/// `plans`, as text.
async fn explain(url: &str, plans: &str, ws: &Ws, after: After) -> Result<String> {
    let db = pg(url).await?;
    let at = match after {
        Some((at, _)) => {
            let t: String = db
                .query_one("SELECT $1::timestamptz::text", &[&at])
                .await?
                .get(0);
            format!("'{t}'")
        }
        None => "NULL".into(),
    };
    let id = after.map_or("NULL".into(), |(_, id)| format!("'{id}'"));
    db.batch_execute(&format!(
        "SET plan_cache_mode = {plans};
         PREPARE page (uuid, timestamptz, uuid, bigint, bigint, bigint, uuid) AS {PAGE_SQL}"
    ))
    .await?;
    let rows = db
        .simple_query(&format!(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE page ('{}', {at}, {id}, {PAGE_LIMIT}, {MESSAGE_FIXED}, {ROW_BYTES}, '{}')",
            ws.channel, ws.id
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Calls for a phase of `d`'s reads after `after`: about `DEEP_PHASE_SECS` of them at the
/// concurrency on two cores, from what ten lone calls take (a page whose cost grew with its
/// depth would otherwise run for hours), from 200 to `most`; and a lone call's milliseconds.
async fn calls_for(d: &ReadDirect, ws: &Ws, after: After, most: usize) -> Result<(usize, f64)> {
    let t = Instant::now();
    for _ in 0..10 {
        d.read(ws.id, ws.channel, after).await?;
    }
    let lone_ms = t.elapsed().as_secs_f64() * 100.0;
    let calls = ((DEEP_PHASE_SECS * 1000.0 * 2.0 / lone_ms) as usize).clamp(200, most);
    Ok((calls, lone_ms))
}

/// The message-reads row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, c, total) = (b.stack, b.concurrency, b.scale.message_reads);
    let (big_messages, deep) = if b.smoke {
        (20_000, 10_000)
    } else {
        (1_000_000, 500_000)
    };
    let (_, minter) = stack_signers(stack)?;
    let mut wsc = WorkspaceServiceClient::new(
        Channel::from_shared(format!("http://{}", stack.workspace_addr))?
            .connect()
            .await?,
    );
    let small = workspace(b, &mut wsc, "org_bmr_small", "user_ls", SMALL_MESSAGES).await?;
    let big = workspace(b, &mut wsc, "org_bmr_big", "user_lb", big_messages).await?;
    settle(&b.wdb).await?;
    // One HTTP/2 connection per concurrent client, as the read rows.
    let mut clients = Vec::new();
    for _ in 0..c {
        clients.push(WorkspaceServiceClient::new(
            Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                .connect()
                .await?,
        ));
    }
    let t = Instant::now();
    let w = walk(b, &mut clients[0].clone(), &big, deep).await?;
    let walked = t.elapsed();
    let mut direct = Vec::new();
    for _ in 0..c {
        direct.push(ReadDirect::connect(&stack.workspace_db, "force_custom_plan").await?);
    }
    let (deep_total, lone_ms) = calls_for(&direct[0], &big, Some(w.after), total).await?;
    eprintln!(
        "message-reads: walked {} messages in {} pages in {:.1} s; a lone deep page's statements take {lone_ms:.2} ms; {deep_total} deep calls per side",
        w.depth,
        w.page_ms.len(),
        walked.as_secs_f64()
    );

    let phases: [(&str, &Ws, &str, After, usize); 3] = [
        ("small workspace, first page", &small, "", None, total),
        ("big workspace, first page", &big, "", None, total),
        (
            "big workspace, deep page",
            &big,
            &w.token,
            Some(w.after),
            deep_total,
        ),
    ];
    let mut results = Vec::new();
    for (name, ws, token, after, n) in phases {
        settle(&b.wdb).await?;
        let (o, o_cpu) = ours(b, &clients, ws, token, n).await;
        settle(&b.wdb).await?;
        let (d, d_cpu) = baseline(b, &direct, ws, after, n).await;
        eprintln!(
            "message-reads: {name} ({}): ours {:.0}/s p99 {:.1} ms, baseline {:.0}/s p99 {:.1} ms",
            ws.org,
            o.rate(),
            o.pct(0.99),
            d.rate(),
            d.pct(0.99)
        );
        report
            .cpu
            .push(format!("message reads, {name}, ours: {o_cpu}"));
        report
            .cpu
            .push(format!("message reads, {name}, baseline: {d_cpu}"));
        results.push((name, n, o, d));
    }
    // The deep page planned once for any cursor (`force_generic_plan`, as the hot pool plans),
    // as a diagnosis of the plan.
    let mut generic = Vec::new();
    for _ in 0..c {
        generic.push(ReadDirect::connect(&stack.workspace_db, "force_generic_plan").await?);
    }
    let (generic_total, generic_ms) = calls_for(&generic[0], &big, Some(w.after), total).await?;
    eprintln!(
        "message-reads: a lone deep page's statements planned for any cursor take {generic_ms:.2} ms; {generic_total} calls"
    );
    settle(&b.wdb).await?;
    let (ge, ge_cpu) = baseline(b, &generic, &big, Some(w.after), generic_total).await;
    report.cpu.push(format!(
        "message reads, big workspace, deep page, its statements planned once for any cursor (force_generic_plan): {ge_cpu}"
    ));
    for (plans, ws, after, what) in [
        (
            "force_generic_plan",
            &big,
            None,
            "big workspace, first page",
        ),
        (
            "force_generic_plan",
            &big,
            Some(w.after),
            "big workspace, deep page",
        ),
        (
            "force_custom_plan",
            &big,
            Some(w.after),
            "big workspace, deep page",
        ),
    ] {
        eprintln!(
            "message-reads: EXPLAIN (ANALYZE, BUFFERS) of the page, {what}, {plans}:\n{}",
            explain(&stack.workspace_db, plans, ws, after).await?
        );
    }

    let small_rate = results[0].2.rate();
    for (name, n, o, d) in &results {
        rows_push(report, c, name, *n, o, d, small_rate);
    }
    // How a page's time grows with its depth, from the walk (one caller, pages of 500).
    let p = &w.page_ms;
    let mean = |from: usize| {
        let s = &p[from.min(p.len() - 1)..(from + 10).min(p.len())];
        s.iter().sum::<f64>() / s.len() as f64
    };
    let at = |f: f64| ((p.len() as f64 * f) as usize).min(p.len().saturating_sub(10));
    report.rows.push([
        format!(
            "the walk to the deep page: {} pages of {WALK_PAGE} by one caller, {} messages deep in a {big_messages}-message channel",
            p.len(),
            w.depth
        ),
        format!(
            "{:.1} s; mean of 10 pages from depth 0: {:.1} ms, from {}: {:.1} ms, from {}: {:.1} ms, last 10: {:.1} ms",
            walked.as_secs_f64(),
            mean(0),
            at(0.2) * WALK_PAGE as usize,
            mean(at(0.2)),
            at(0.5) * WALK_PAGE as usize,
            mean(at(0.5)),
            mean(p.len().saturating_sub(10))
        ),
        format!(
            "deep page's statements planned once for any cursor (force_generic_plan, as the hot pool would), {generic_total} calls: {:.0}/s, p99 {:.1} ms ({} errors)",
            ge.rate(),
            ge.pct(0.99),
            ge.errors
        ),
        "—".into(),
    ]);
    let token = minter.token_for("workspace-service")?;
    for org in [small.org, big.org] {
        drop_bench_workspace(&mut wsc, &token, &b.wdb, org).await?;
    }
    Ok(())
}

fn rows_push(
    report: &mut Report,
    c: usize,
    name: &str,
    n: usize,
    o: &Stats,
    d: &Stats,
    small_rate: f64,
) {
    report.rows.push([
        format!(
            "message reads `ListMessages` (default page of 50, user tokens, warm access cache), {name}, {n} calls, concurrency {c}"
        ),
        format!(
            "{:.0} RPS, p99 {:.1} ms ({} errors); {:.2}x of the small workspace's rate",
            o.rate(),
            o.pct(0.99),
            o.errors,
            o.rate() / small_rate
        ),
        format!(
            "{:.0}/s its two statements straight to PostgreSQL (planned per call, as the service's pool), p99 {:.1} ms ({} errors)",
            d.rate(),
            d.pct(0.99),
            d.errors
        ),
        format!("{:.2}x (no goal stated for this read)", o.rate() / d.rate()),
    ]);
}
