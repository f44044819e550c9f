//! A workspace read (`ListChannels`) with a user token: the organization and revocation checks
//! and the page, against the same statements sent straight to PostgreSQL, and against them
//! without the revocation check (what the check costs).

use crate::load::{
    Bench, bench_members, bench_workspace, drop_bench_workspace, load, pg, settle, stack_signers,
};
use crate::probes::CpuProbe;
use crate::report::Report;
use anyhow::Result;
use std::sync::Arc;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::dev_user_claims;

/// The statements of a `ListChannels` call that misses the access cache, prepared once per
/// connection: the workspace with what decides the caller's access (membership, removal) in
/// one statement, then the page; and, to see what the check costs, the workspace alone.
#[derive(Clone)]
pub struct WsDirect {
    pub db: Arc<tokio_postgres::Client>,
    pub checked: tokio_postgres::Statement,
    pub workspace: tokio_postgres::Statement,
    pub page: tokio_postgres::Statement,
}

impl WsDirect {
    pub async fn connect(url: &str) -> Result<Self> {
        let db = pg(url).await?;
        let checked = db
            .prepare(
                "SELECT w.id::text, w.clerk_org_id, w.name, w.slug, w.owner_clerk_id, w.source_updated_at,
                        w.created_at, w.updated_at,
                        (SELECT removed_at FROM removed_users WHERE clerk_user_id = $2) AS removed_at,
                        m.deleted AS membership_deleted, m.role,
                        CASE WHEN m.deleted THEN m.deleted_at ELSE m.source_updated_at END AS membership_changed_at
                   FROM (SELECT 1) one
                   LEFT JOIN workspaces w ON w.clerk_org_id = $1 AND w.deleted_at IS NULL
                   LEFT JOIN memberships m ON m.workspace_id = w.id AND m.clerk_user_id = $2",
            )
            .await?;
        let workspace = db
            .prepare(
                "SELECT id::text, clerk_org_id, name, slug, owner_clerk_id, source_updated_at, created_at, updated_at
                 FROM workspaces WHERE clerk_org_id = $1 AND deleted_at IS NULL LIMIT 1",
            )
            .await?;
        let page = db
            .prepare(
                "SELECT id, workspace_id, name, created_by, created_at, updated_at FROM channels
                 WHERE workspace_id = $1::text::uuid ORDER BY created_at, id LIMIT 51",
            )
            .await?;
        Ok(Self {
            db,
            checked,
            workspace,
            page,
        })
    }

    pub async fn read(&self, user: &str, with_check: bool) -> Result<()> {
        let ws = if with_check {
            self.db
                .query_one(&self.checked, &[&"org_bread", &user])
                .await?
        } else {
            self.db.query_one(&self.workspace, &[&"org_bread"]).await?
        };
        let id: String = ws.get(0);
        self.db.query(&self.page, &[&id]).await?;
        Ok(())
    }
}

/// The workspace-read row.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, s, c) = (b.stack, &b.scale, b.concurrency);
    let (rows, cpu) = (&mut report.rows, &mut report.cpu);
    // 3b. A workspace read with a user token: the organization and revocation checks and
    //     the page, against the same three statements sent straight to PostgreSQL, and
    //     against the two without the revocation check (what the check costs).
    let (key, minter) = stack_signers(stack)?;
    let ws_channel = Channel::from_shared(format!("http://{}", stack.workspace_addr))?
        .connect()
        .await?;
    let mut wsc = WorkspaceServiceClient::new(ws_channel.clone());
    let token = minter.token_for("workspace-service")?;
    bench_workspace(&mut wsc, &token, "org_bread", "Reads").await?;
    let readers = 100;
    bench_members(&mut wsc, &token, "org_bread", "user_r", readers).await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..readers)
            .map(|u| {
                key.sign(&dev_user_claims(
                    &stack.state,
                    &format!("user_r{u}"),
                    Some("org_bread"),
                    "org:member",
                    "R",
                    "r@example.org",
                ))
                .unwrap()
            })
            .collect(),
    );
    let mut opened = Vec::new();
    for _ in 0..c {
        opened.push(
            Channel::from_shared(format!("http://{}", stack.workspace_addr))?
                .connect()
                .await?,
        );
    }
    let clients: Vec<_> = opened
        .into_iter()
        .map(WorkspaceServiceClient::new)
        .collect();
    let wdb = pg(&stack.workspace_db).await?;
    settle(&wdb).await?;
    let probe = CpuProbe::start(stack);
    let toks = tokens.clone();
    let ours = load(
        clients,
        s.reads,
        move |mut cl: WorkspaceServiceClient<Channel>, i| {
            let tok = toks[i % toks.len()].clone();
            async move {
                cl.list_channels(service_harness::bearer(
                    wsp::ListChannelsRequest {
                        clerk_org_id: "org_bread".into(),
                        page_size: 0,
                        page_token: String::new(),
                    },
                    &tok,
                ))
                .await
                .is_ok()
            }
        },
    )
    .await;
    cpu.push(format!("workspace read, ours: {}", probe.per_call(s.reads)));
    let mut direct = Vec::new();
    for _ in 0..c {
        direct.push(WsDirect::connect(&stack.workspace_db).await?);
    }
    let base = |with_check: bool| {
        let direct = direct.clone();
        async move {
            load(direct, s.reads, move |d: WsDirect, i| async move {
                d.read(&format!("user_r{}", i % 100), with_check)
                    .await
                    .is_ok()
            })
            .await
        }
    };
    settle(&wdb).await?;
    let probe = CpuProbe::start(stack);
    let full = base(true).await;
    cpu.push(format!(
        "workspace read, baseline: {}",
        probe.per_call(s.reads)
    ));
    let unchecked = base(false).await;
    rows.push([
        format!(
            "authenticated workspace read `ListChannels` (org and revocation checks), concurrency {c}, {}",
            if b.cold {
                "cold (access cache off: every read a miss)"
            } else {
                "warm (access and channel caches on: 100 members reading repeatedly)"
            }
        ),
        format!(
            "{:.0} RPS, p99 {:.1} ms ({} errors)",
            ours.rate(),
            ours.pct(0.99),
            ours.errors
        ),
        format!(
            "{:.0}/s its two statements straight to PostgreSQL, p99 {:.1} ms; {:.0}/s without the revocation check in the first ({:.0} % more)",
            full.rate(),
            full.pct(0.99),
            unchecked.rate(),
            (unchecked.rate() / full.rate() - 1.0) * 100.0
        ),
        format!(
            "{:.2}x (goal >= {})",
            ours.rate() / full.rate(),
            if b.cold { "0.5" } else { "0.7" }
        ),
    ]);
    // Leave nothing behind for the rows that count the workspace tables.
    drop_bench_workspace(
        &mut wsc,
        &minter.token_for("workspace-service")?,
        &wdb,
        "org_bread",
    )
    .await?;
    Ok(())
}
