//! The reconcile rows: `webhook-gateway reconcile` (the release binary) over data already in
//! step, against paging the Clerk stand-in alone with the reconciler's own client and parser,
//! one page after another (the part of a run that is Clerk's, not ours).
//!
//! - Users: 100,000 users, paged by cursor.
//! - Organizations and memberships: 100,000 organizations of 10 members each, paged by
//!   offset. The services' rows are written straight into the database (a backfill through
//!   the commands would take minutes), then a first untimed run checks every one compares as
//!   held (nothing created or updated) and places anything else held.

use crate::load::{Bench, pg, settle};
use crate::probes::{cpu_secs, machine_counters, postgres_cpu, vm_hwm_mib};
use crate::report::{Report, TableRow};
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use stand_ins::ClerkApiStandIn;
use std::time::{Duration, Instant};
use vbase_stack::{Stack, Which};
use webhook_gateway::clerk_api::{ClerkHttp, HttpSettings, ListQuery, Start, list_page};

/// Clerk's clock of the seeded data (ms).
const T0: i64 = 1_760_000_000_000;
/// Members per organization.
const PER_ORG: usize = 10;

/// What a run of the binary did: wall time, peak RSS (MiB), CPU seconds, the `--json` summary.
struct Ran {
    took: Duration,
    rss: f64,
    cpu: f64,
    summary: Value,
}

/// Runs `webhook-gateway reconcile --only <only>` with no rate limit, polling its memory and
/// CPU while it runs. The first run of a row deletes what the earlier rows left (their users
/// and workspaces are not in the stand-in, so none of its users is held here yet), more than
/// the deletion budget: the runs move the stack to the stand-in's instance
/// (`--move-to-instance` with `--allow-mass-delete`).
async fn run_reconcile(stack: &Stack, only: &str) -> Result<Ran> {
    let log = stack.state_dir().join("logs").join("reconcile-bench.log");
    let mut cmd = stack.reconcile_command();
    cmd.args([
        "--only",
        only,
        "--json",
        "--move-to-instance",
        vbase_stack::DEV_CLERK_INSTANCE,
        "--allow-mass-delete",
    ])
    .env("CLERK_API_MAX_REQUESTS", "10000")
    .env("CLERK_API_WINDOW_SECS", "1")
    .env("LOG_FORMAT", "json")
    .stdout(std::process::Stdio::piped())
    .stderr(std::fs::File::create(&log)?);
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (mut rss, mut cpu) = (0.0_f64, 0.0_f64);
    let status = loop {
        if let Some(mib) = vm_hwm_mib(pid) {
            rss = rss.max(mib);
        }
        cpu = cpu.max(cpu_secs(pid).0);
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = t.elapsed();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().context("stdout")?, &mut out)?;
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "reconcile failed: {out}{}",
        err.lines().last().unwrap_or_default()
    );
    let summary: Value = serde_json::from_str(&out)?;
    anyhow::ensure!(
        summary["completed"] == json!(true),
        "reconcile stopped: {out}"
    );
    Ok(Ran {
        took,
        rss,
        cpu,
        summary,
    })
}

/// (created, updated, unchanged, deleted) of a kind in a summary.
fn counts(summary: &Value, kind: &str) -> (u64, u64, u64, u64) {
    let k = summary["kinds"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kind"] == kind))
        .cloned()
        .unwrap_or(Value::Null);
    let n = |f: &str| k[f].as_u64().unwrap_or(u64::MAX);
    (n("created"), n("updated"), n("unchanged"), n("deleted"))
}

fn client(api: &ClerkApiStandIn) -> Result<ClerkHttp> {
    ClerkHttp::new(HttpSettings {
        base_url: api.base_url(),
        secret_key: "sk_test_local_stand_in".into(),
        max_requests: 10_000,
        window: Duration::from_secs(1),
        max_retries: 0,
        retry_base: Duration::from_millis(100),
        timeout: Duration::from_secs(30),
    })
    .map_err(anyhow::Error::msg)
}

/// Pages every user of the stand-in by cursor, page size 500, one page after another.
async fn page_users_alone(api: &ClerkApiStandIn) -> Result<Duration> {
    let client = client(api)?;
    let t = Instant::now();
    let mut cursor: Option<String> = None;
    loop {
        let q = ListQuery {
            limit: 500,
            start: Start::After(cursor.as_deref()),
            oldest_first: true,
            filter: &[],
        };
        let page = list_page::<webhook_gateway::clerk::User>(&client, "/users", &q).await?;
        anyhow::ensure!(page.items.iter().all(Result::is_ok), "a user did not parse");
        if page.last {
            return Ok(t.elapsed());
        }
        cursor = page.last_id;
    }
}

/// Pages `path` of the stand-in by offset, oldest first, page size 500, one page after
/// another; returns the time and the items.
async fn page_offset_alone<T: DeserializeOwned>(
    client: &ClerkHttp,
    path: &str,
) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let mut offset = 0;
    loop {
        let q = ListQuery {
            limit: 500,
            start: Start::Offset(offset),
            oldest_first: true,
            filter: &[],
        };
        let page = list_page::<T>(client, path, &q).await?;
        anyhow::ensure!(
            page.items.iter().all(Result::is_ok),
            "an item did not parse"
        );
        offset += page.items.len();
        if page.last {
            return Ok((t.elapsed(), offset));
        }
    }
}

/// Reconcile of users already in step: the row and a line of where the CPU went.
pub async fn users_row(stack: &Stack, smoke: bool) -> Result<(TableRow, String)> {
    let api = stack.clerk_api.as_ref().context("Clerk API stand-in")?;
    let (small, n) = if smoke {
        (200, 2_000)
    } else {
        (10_000, 100_000)
    };
    let add_users = |from: usize, to: usize| {
        for i in from..to {
            let id = format!("user_bench{i:07}");
            let t = T0 + i as i64;
            api.put_user(stand_ins::user_json(
                &id,
                "Bench",
                &format!("{id}@example.org"),
                t,
                t,
            ));
        }
    };
    add_users(0, small);
    run_reconcile(stack, "users").await?; // backfill, not timed
    let small_rss = run_reconcile(stack, "users").await?.rss;
    add_users(small, n);
    run_reconcile(stack, "users").await?;
    // The backfill's writes vacuumed and checkpointed, so the timed run does not pay them.
    settle(&*pg(&stack.identity_db).await?).await?;
    let me = std::process::id();
    let identity = stack.pid(Which::Identity).context("identity-service pid")?;
    let before = (
        machine_counters().0,
        cpu_secs(me).0,
        cpu_secs(identity).0,
        postgres_cpu(),
    );
    let ran = run_reconcile(stack, "users").await?;
    let after = (
        machine_counters().0,
        cpu_secs(me).0,
        cpu_secs(identity).0,
        postgres_cpu(),
    );
    let paging_before = (machine_counters().0, cpu_secs(me).0);
    let paging = page_users_alone(api).await?;
    let paging_after = (machine_counters().0, cpu_secs(me).0);
    let machine = after.0 - before.0;
    let (standin, id_cpu, pg_cpu) = (after.1 - before.1, after.2 - before.2, after.3 - before.3);
    let cpu = format!(
        "reconcile of users in step: {machine:.2} CPU-s on the machine: webhook-gateway {:.2}, \
         identity-service {id_cpu:.2}, the Clerk stand-in {standin:.2}, PostgreSQL {pg_cpu:.2}, the rest {:.2}; \
         paging alone: {:.2} CPU-s ({:.2} in this process: stand-in and client)",
        ran.cpu,
        machine - ran.cpu - id_cpu - standin - pg_cpu,
        paging_after.0 - paging_before.0,
        paging_after.1 - paging_before.1
    );
    let users = n + 3; // and the development stack's own three
    let took = ran.took.as_secs_f64();
    let row = [
        format!("Reconcile of {n} users already in step (Clerk stand-in answering at once)"),
        format!(
            "{:.0} users/s ({took:.2} s; peak RSS {:.1} MiB, {small_rss:.1} MiB at {small} users)",
            users as f64 / took,
            ran.rss
        ),
        format!(
            "{:.0} users/s (paging the stand-in alone by cursor, same client: {:.2} s)",
            users as f64 / paging.as_secs_f64(),
            paging.as_secs_f64()
        ),
        format!(
            "{:.2}x of the paging time (goal <= 1.5)",
            took / paging.as_secs_f64()
        ),
    ];
    Ok((row, cpu))
}

fn org_id(o: usize) -> String {
    format!("org_rb{o:07}")
}

/// The organizations and memberships of the row, into the stand-in.
fn seed_clerk(api: &ClerkApiStandIn, orgs: usize) {
    for o in 0..orgs {
        let t = T0 + o as i64;
        api.put_org(stand_ins::org_json(
            &org_id(o),
            &format!("Org {o}"),
            "user_rb0000000",
            t,
            t,
        ));
        for k in 0..PER_ORG {
            let t = T0 + (o * PER_ORG + k) as i64;
            api.put_membership(stand_ins::membership_json(
                &format!("orgmem_rb{o}x{k}"),
                &org_id(o),
                &format!("user_rb{:07}", (o * 7 + k) % 100_000),
                "org:member",
                t,
                t,
            ));
        }
    }
}

/// The same rows as workspace-service holds them after a backfill (a day old).
fn seed_sql(orgs: usize) -> String {
    format!(
        "INSERT INTO workspaces (id, clerk_org_id, name, slug, owner_clerk_id, source_updated_at,
                                 created_at, updated_at, source_event_id, clerk_created_at)
         SELECT gen_random_uuid(), 'org_rb' || lpad(o::text, 7, '0'), 'Org ' || o, 'org-' || o,
                'user_rb0000000', ts, now() - interval '1 day', now() - interval '1 day', 'seed', ts
           FROM generate_series(0, {last}) o,
                LATERAL (SELECT timestamptz 'epoch' + ({T0} + o) * interval '1 millisecond' AS ts) t;
         INSERT INTO memberships (workspace_id, clerk_org_id, clerk_user_id, role, deleted, source_updated_at,
                                  clerk_membership_id, membership_created_at, source_event_id, recorded_at)
         SELECT w.id, w.clerk_org_id, 'user_rb' || lpad(((o * 7 + k) % 100000)::text, 7, '0'),
                'org:member', false, ts, 'orgmem_rb' || o || 'x' || k, ts, 'seed', now() - interval '1 day'
           FROM generate_series(0, {last}) o, generate_series(0, {k_last}) k,
                LATERAL (SELECT timestamptz 'epoch' + ({T0} + o * {PER_ORG} + k) * interval '1 millisecond' AS ts) t,
                LATERAL (SELECT id, clerk_org_id FROM workspaces
                          WHERE clerk_org_id = 'org_rb' || lpad(o::text, 7, '0')) w",
        last = orgs - 1,
        k_last = PER_ORG - 1,
    )
}

/// Reconcile of organizations and memberships already in step.
pub async fn orgs_row(stack: &Stack, smoke: bool) -> Result<(TableRow, String)> {
    let api = stack.clerk_api.as_ref().context("Clerk API stand-in")?;
    let orgs = if smoke { 1_000 } else { 100_000 };
    seed_clerk(api, orgs);
    let wdb = pg(&stack.workspace_db).await?;
    wdb.batch_execute(&seed_sql(orgs)).await?;
    settle(&wdb).await?;
    // Untimed: places and deletes what else the earlier rows left, and checks the seed is in
    // step.
    let first = run_reconcile(stack, "organizations,memberships").await?;
    // (The development stack's own organization and two members are created.)
    let (_, u, same, _) = counts(&first.summary, "memberships");
    anyhow::ensure!(
        u == 0 && same >= (orgs * PER_ORG) as u64,
        "the seeded memberships do not compare as held: {}",
        first.summary
    );
    settle(&wdb).await?;
    let me = std::process::id();
    let workspace = stack
        .pid(Which::Workspace)
        .context("workspace-service pid")?;
    let before = (
        machine_counters().0,
        cpu_secs(me).0,
        cpu_secs(workspace).0,
        postgres_cpu(),
    );
    let ran = run_reconcile(stack, "organizations,memberships").await?;
    let after = (
        machine_counters().0,
        cpu_secs(me).0,
        cpu_secs(workspace).0,
        postgres_cpu(),
    );
    let memberships = orgs * PER_ORG;
    for (kind, n) in [("organizations", orgs), ("memberships", memberships)] {
        let (c, u, same, d) = counts(&ran.summary, kind);
        anyhow::ensure!(
            (c, u, d) == (0, 0, 0) && same >= n as u64,
            "{kind} not in step: {}",
            ran.summary
        );
    }
    let client = client(api)?;
    let paging_before = (machine_counters().0, cpu_secs(me).0);
    let (orgs_paged, listed_orgs) =
        page_offset_alone::<webhook_gateway::clerk::Organization>(&client, "/organizations")
            .await?;
    let (members_paged, listed_members) = page_offset_alone::<webhook_gateway::clerk::Membership>(
        &client,
        "/organization_memberships",
    )
    .await?;
    let paging_after = (machine_counters().0, cpu_secs(me).0);
    let paging = orgs_paged + members_paged;
    let machine = after.0 - before.0;
    let (standin, ws_cpu, pg_cpu) = (after.1 - before.1, after.2 - before.2, after.3 - before.3);
    let cpu = format!(
        "reconcile of organizations and memberships in step: {machine:.2} CPU-s on the machine: \
         webhook-gateway {:.2}, workspace-service {ws_cpu:.2}, the Clerk stand-in {standin:.2}, \
         PostgreSQL {pg_cpu:.2}, the rest {:.2}; paging alone: {:.2} CPU-s ({:.2} in this process)",
        ran.cpu,
        machine - ran.cpu - ws_cpu - standin - pg_cpu,
        paging_after.0 - paging_before.0,
        paging_after.1 - paging_before.1
    );
    let items = (listed_orgs + listed_members) as f64;
    let took = ran.took.as_secs_f64();
    let row = [
        format!(
            "Reconcile of {orgs} organizations and {memberships} memberships already in step (Clerk stand-in answering at once)"
        ),
        format!(
            "{:.0} items/s ({took:.2} s; peak RSS {:.1} MiB)",
            items / took,
            ran.rss
        ),
        format!(
            "{:.0} items/s (paging the stand-in alone by offset, same client: {:.2} s)",
            items / paging.as_secs_f64(),
            paging.as_secs_f64()
        ),
        format!(
            "{:.2}x of the paging time (goal <= 1.5)",
            took / paging.as_secs_f64()
        ),
    ];
    Ok((row, cpu))
}

/// The two reconcile rows: users (by cursor), then organizations and memberships (by offset),
/// each against the Clerk stand-in answering at once.
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    for (row, cpu) in [
        users_row(b.stack, b.smoke).await?,
        orgs_row(b.stack, b.smoke).await?,
    ] {
        report.rows.push(row);
        report.cpu.push(cpu);
    }
    Ok(())
}
