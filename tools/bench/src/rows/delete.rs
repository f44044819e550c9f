//! Deletion: the delete webhook's latency and the purge's throughput, against a raw
//! `ON DELETE CASCADE` delete of an identical copy (what a synchronous delete costs).

use crate::load::Scale;
use crate::load::{Bench, Stats, pg, settle, until_empty};
use crate::report::Report;
use anyhow::{Context, Result};
use serde_json::json;
use stand_ins::LiveblocksMode;
use std::time::{Duration, Instant};
use token_auth::signing::{ServiceTokenMinter, SigningKey, now_secs};
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use vbase_stack::{Stack, Which, sign_webhook};

/// The cascade fixture: channels x messages, receipts, 4 kinds of rooms with items/meetings.
///
/// Every child table is filled in the same order on both sides, interleaved across its parents
/// (`ORDER BY g, parent`), as a workspace's messages arrive over time: left to the planner, the
/// join order (and so which pages hold a channel's messages) changed with the tables'
/// statistics, and a delete over channel-clustered pages ran a third faster than over
/// interleaved ones.
pub fn populate_sql(ws: &str, s: &Scale) -> String {
    format!(
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), '{ws}', 'c' || g FROM generate_series(1, 20) g;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_' || (g % 1000), 'message ' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, {m}) g WHERE c.workspace_id = '{ws}' ORDER BY g, c.id;
         INSERT INTO read_receipts (workspace_id, channel_id, clerk_user_id, last_read_at)
           SELECT c.workspace_id, c.id, 'user_' || g, now() FROM channels c, generate_series(1, {r}) g WHERE c.workspace_id = '{ws}' ORDER BY g, c.id;
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), '{ws}', (ARRAY['document','code','whiteboard','conference'])[1 + g % 4], 'r' || g FROM generate_series(0, {rooms}) g;
         INSERT INTO documents (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'd' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'document' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO code_files (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'f' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'code' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO whiteboards (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'w' || g FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'whiteboard' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         INSERT INTO meetings (id, workspace_id, room_id, title, starts_at, ends_at)
           SELECT gen_random_uuid(), r.workspace_id, r.id, 'm' || g, now(), now() + interval '1 hour' FROM rooms r, generate_series(1, {i}) g WHERE r.kind = 'conference' AND r.workspace_id = '{ws}' ORDER BY g, r.id;
         ANALYZE;",
        m = s.messages_per_channel,
        r = s.messages_per_channel / 45,
        rooms = s.rooms - 1,
        i = s.items_per_room
    )
}

/// One deletion of a freshly loaded workspace: the delete webhook's answer, then the purge.
#[derive(Default)]
pub struct OursDeleted {
    /// From sending `organization.deleted` to the gateway's 2xx.
    pub answered: Duration,
    /// From the answer until the purge job is gone.
    pub purged: Duration,
    pub rows_before: i64,
}

/// Loads a workspace of `s`'s size through our schema, deletes it with a signed
/// `organization.deleted` through the gateway, and waits for its purge.
pub async fn delete_ours(
    stack: &Stack,
    wsc: &mut WorkspaceServiceClient<Channel>,
    minter: &ServiceTokenMinter,
    wdb: &tokio_postgres::Client,
    s: &Scale,
    round: usize,
) -> Result<OursDeleted> {
    let org = format!("org_bench{round}");
    let ws = wsc
        .upsert_workspace(service_harness::bearer(
            wsp::UpsertWorkspaceCommand {
                event_id: format!("bench-ws{round}"),
                occurred_at: service_harness::ts(now_secs()),
                clerk_org_id: org.clone(),
                name: "Bench".into(),
                slug: String::new(),
                owner_clerk_id: String::new(),
                event_time: None,
                ..Default::default()
            },
            &minter.token_for("workspace-service")?,
        ))
        .await?
        .into_inner()
        .workspace
        .context("workspace")?;
    wdb.batch_execute(&populate_sql(&ws.id, s)).await?;
    settle(wdb).await?;
    let rows_before = wdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    let body = json!({"data": {"deleted": true, "id": org, "object": "organization"},
                      "object": "event", "type": "organization.deleted", "timestamp": now_secs() * 1000})
    .to_string()
    .into_bytes();
    let headers = sign_webhook(
        &stack.state.webhook_secret,
        &format!("msg_bench_del{round}"),
        &body,
    )?;
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", stack.state.gateway_url))
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let t = Instant::now();
    let resp = req.send().await?;
    let answered = t.elapsed();
    anyhow::ensure!(
        resp.status() == 200,
        "the delete webhook answered {}",
        resp.status()
    );
    let t = Instant::now();
    until_empty(
        wdb,
        "SELECT count(*) FROM purge_jobs",
        Duration::from_millis(5),
    )
    .await?;
    let purged = t.elapsed();
    let rows_after: i64 = wdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    anyhow::ensure!(rows_after == 0, "{rows_after} rows left after the purge");
    // The queued rooms are not part of the next round.
    wdb.batch_execute("DELETE FROM liveblocks_cleanup_jobs")
        .await?;
    Ok(OursDeleted {
        answered,
        purged,
        rows_before,
    })
}

/// Loads an identical copy into a fresh database (workspace-service's migrations, run by its
/// binary, with every foreign key `ON DELETE CASCADE`) and times one raw `DELETE` of
/// its workspace. Returns the time and the number of rows the workspace held (counted as for
/// ours).
pub async fn delete_baseline(stack: &Stack, s: &Scale) -> Result<(Duration, i64)> {
    let admin = pg(&stack.admin_db()).await?;
    admin
        .batch_execute("DROP DATABASE IF EXISTS bench_cascade")
        .await?;
    admin.batch_execute("CREATE DATABASE bench_cascade").await?;
    let url = ephemeral_postgres::with_database(&stack.admin_db(), "bench_cascade");
    let bdb = pg(&url).await?;
    let migrated = tokio::process::Command::new(stack.binary_path(Which::Workspace))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await?;
    anyhow::ensure!(
        migrated.status.success(),
        "migrating the baseline's copy: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    bdb.batch_execute(CASCADE_EVERY_KEY).await?;
    let bws = "01000000-0000-7000-8000-000000000001";
    bdb.execute(
        "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at) VALUES ($1::text::uuid, 'org_b', 'B', now())",
        &[&bws],
    )
    .await?;
    // The channel workspace-service creates with every workspace.
    bdb.execute(
        "INSERT INTO channels (id, workspace_id, name, created_by) VALUES (gen_random_uuid(), $1::text::uuid, 'general', 'system')",
        &[&bws],
    )
    .await?;
    bdb.batch_execute(&populate_sql(bws, s)).await?;
    settle(&bdb).await?;
    let rows: i64 = bdb.query_one(COUNT_ROWS, &[]).await?.get(0);
    let t = Instant::now();
    bdb.execute("DELETE FROM workspaces WHERE id = $1::text::uuid", &[&bws])
        .await?;
    Ok((t.elapsed(), rows))
}

/// Rows in the tables a workspace delete empties (both sides hold one workspace).
pub const COUNT_ROWS: &str = "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM read_receipts) + (SELECT count(*) FROM channels) + (SELECT count(*) FROM rooms) + (SELECT count(*) FROM documents) + (SELECT count(*) FROM code_files) + (SELECT count(*) FROM whiteboards) + (SELECT count(*) FROM meetings)";

/// Turns every foreign key that does not cascade into one that does (the baseline's schema is
/// workspace-service's own, migrated by its binary, with this applied).
pub const CASCADE_EVERY_KEY: &str = "DO $$
DECLARE k record;
BEGIN
  FOR k IN SELECT conrelid::regclass AS tbl, conname, pg_get_constraintdef(oid) AS def
             FROM pg_constraint WHERE contype = 'f' AND confdeltype <> 'c' LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s ON DELETE CASCADE',
                   k.tbl, k.conname, k.conname, k.def);
  END LOOP;
END $$";

/// The delete-latency and purge rows.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, s) = (b.stack, &b.scale);
    let rows = &mut report.rows;
    let live = stack.liveblocks.as_ref().context("liveblocks stand-in")?;
    // 4. Deletion: the delete webhook's latency, and the purge's throughput, against a raw
    //    ON DELETE CASCADE delete of an identical copy (what a synchronous delete costs).
    // Liveblocks down: after a few failed calls the worker's breaker pauses it, so its calls
    // and their bookkeeping stay out of the measurement.
    live.set_mode(LiveblocksMode::Down);
    let minter = ServiceTokenMinter::new(
        SigningKey::from_pem(&std::fs::read_to_string(&stack.service_key_file)?)?,
        "vbase-internal",
        vbase_stack::STACK_CALLER,
        Duration::from_secs(600),
    );
    let mut wsc = WorkspaceServiceClient::new(
        Channel::from_shared(format!("http://{}", stack.workspace_addr))?
            .connect()
            .await?,
    );
    // Which side deletes first alternates by round, so that neither side always runs
    // straight after the other's load and delete.
    let rounds = if b.smoke { 2 } else { 4 };
    let (mut answers, mut purges, mut bases) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows_before = 0;
    for round in 0..rounds {
        let ours_first = round % 2 == 0;
        let mut base = None;
        if !ours_first {
            base = Some(delete_baseline(stack, s).await?);
        }
        let ours = delete_ours(stack, &mut wsc, &minter, &b.wdb, s, round).await?;
        if ours_first {
            base = Some(delete_baseline(stack, s).await?);
        }
        let (took, base_rows) = base.context("the baseline ran")?;
        // An identical copy, or the ratio means nothing.
        anyhow::ensure!(
            base_rows == ours.rows_before,
            "the baseline's copy holds {base_rows} rows, ours {}",
            ours.rows_before
        );
        rows_before = ours.rows_before;
        answers.push(ours.answered.as_secs_f64() * 1000.0);
        purges.push(ours.purged);
        bases.push(took);
    }
    let latency = Stats {
        elapsed: Duration::from_secs(1),
        latencies_ms: answers.clone(),
        errors: 0,
    };
    let base_ms: Vec<f64> = bases.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let base_median = {
        let mut v = base_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push([
        format!("delete webhook latency, {rows_before}-row workspace, {rounds} workspaces (through the gateway)"),
        format!(
            "p50 {:.1} ms, p99 {:.1} ms (runs: {} ms)",
            latency.pct(0.5),
            latency.pct(0.99),
            answers
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "{base_median:.0} ms median (a synchronous raw ON DELETE CASCADE; runs: {} ms)",
            list(&base_ms)
        ),
        format!(
            "{:.3}x time, p99 {:.1} ms (goal <= 100 ms)",
            latency.pct(0.99) / base_median,
            latency.pct(0.99)
        ),
    ]);
    // Throughput: best of the rounds on each side (a delete of a million rows moves by
    // ±20 % between runs on this machine).
    let best_purge = purges.iter().min().copied().unwrap_or_default();
    let best_base = bases.iter().min().copied().unwrap_or_default();
    let rate = |d: Duration| rows_before as f64 / d.as_secs_f64();
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push([
        format!("purge of a {rows_before}-row workspace in the background, best of {rounds}"),
        format!(
            "{:.0} rows/s ({:.2} s; runs: {} s)",
            rate(best_purge),
            best_purge.as_secs_f64(),
            secs(&purges)
        ),
        format!(
            "{:.0} rows/s ({:.2} s raw ON DELETE CASCADE in one statement; runs: {} s)",
            rate(best_base),
            best_base.as_secs_f64(),
            secs(&bases)
        ),
        format!(
            "{:.2}x rate (goal >= 0.8)",
            rate(best_purge) / rate(best_base)
        ),
    ]);
    Ok(())
}
