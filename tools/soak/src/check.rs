//! The check after convergence: our data against the model.
//!
//! Users, workspaces and memberships equal to Clerk's end state (name, email, role); nothing
//! deleted present; nothing of a deleted workspace left in any table; each Liveblocks room of
//! a deleted workspace or room deleted once; each answered message as last answered; the
//! quarantine empty. Every difference names the row and the events that touched it.

use crate::model::{Event, Truth};
use crate::traffic::Record;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the check found.
#[derive(Debug, Default)]
pub struct Findings {
    /// In the model, missing here.
    pub lost: Vec<String>,
    /// Applied twice (a message twice, a room deleted at Liveblocks twice is counted apart).
    pub doubled: Vec<String>,
    /// Present but different, or present though deleted.
    pub diverged: Vec<String>,
    /// Rows of deleted workspaces still held, by table.
    pub leftovers: Vec<String>,
    pub rooms_once: usize,
    pub rooms_twice: usize,
    pub rooms_never: Vec<String>,
    pub quarantined: Vec<String>,
    /// Per watcher: changes missing, shown twice or out of order.
    pub watcher_gaps: Vec<String>,
    pub watchers: Vec<String>,
    pub checked: BTreeMap<&'static str, usize>,
}

impl Findings {
    pub fn failed(&self) -> bool {
        !(self.lost.is_empty()
            && self.doubled.is_empty()
            && self.diverged.is_empty()
            && self.leftovers.is_empty()
            && self.rooms_never.is_empty()
            && self.quarantined.is_empty()
            && self.watcher_gaps.is_empty())
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// The events that touched `key`, for a difference's explanation.
pub fn touched(events: &[Event], key: &str) -> String {
    let list: Vec<String> = events
        .iter()
        .filter(|e| e.keys.iter().any(|k| k == key))
        .map(|e| format!("#{} {} {} t={}", e.seq, e.kind, e.svix_id, e.at))
        .collect();
    if list.is_empty() {
        "no event".into()
    } else {
        list.join("; ")
    }
}

/// Compares both databases and the Liveblocks stand-in with the model and the traffic.
pub async fn check(
    identity_db: &str,
    workspace_db: &str,
    truth: &Truth,
    events: &[Event],
    traffic: &Record,
    liveblocks_deleted: &[String],
    liveblocks_repeated: &[String],
) -> Result<Findings> {
    let mut f = Findings::default();
    let idb = connect(identity_db).await?;
    let wdb = connect(workspace_db).await?;
    clerk_data(&idb, &wdb, truth, events, &mut f).await?;
    leftovers(&wdb, &mut f).await?;
    rooms(
        truth,
        traffic,
        liveblocks_deleted,
        liveblocks_repeated,
        &mut f,
    );
    messages(&wdb, truth, traffic, &mut f).await?;
    for (db, name) in [(&idb, "identity"), (&wdb, "workspace")] {
        for r in db
            .query("SELECT svix_id, event_type, reason FROM quarantined_deliveries WHERE state = 'open'", &[])
            .await?
        {
            let id: String = r.get(0);
            let seq = events.iter().find(|e| e.svix_id == id).map(|e| e.seq);
            f.quarantined.push(format!(
                "{name}: {id} (event #{seq:?}) {}: {}",
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            ));
        }
    }
    Ok(f)
}

/// Users, workspaces and memberships against Clerk's end state (the rows differences name are
/// `user:ID`, `org:ID`, `membership:ORG/USER`, each followed by `: `).
pub async fn clerk_data(
    idb: &tokio_postgres::Client,
    wdb: &tokio_postgres::Client,
    truth: &Truth,
    events: &[Event],
    f: &mut Findings,
) -> Result<()> {
    let explain = |key: String, what: String| format!("{key}: {what} [{}]", touched(events, &key));

    // Users.
    let mut held = HashMap::new();
    for r in idb
        .query(
            "SELECT clerk_id, name, email, deleted_at IS NOT NULL FROM users",
            &[],
        )
        .await?
    {
        held.insert(
            r.get::<_, String>(0),
            (
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, bool>(3),
            ),
        );
    }
    f.checked.insert("users", held.len());
    for (id, u) in &truth.users {
        let key = format!("user:{id}");
        match held.get(id) {
            None => f.lost.push(explain(key, "missing".into())),
            Some((_, _, true)) => f
                .diverged
                .push(explain(key, "deleted here, alive in Clerk".into())),
            Some((name, email, false)) if *name != u.name() || *email != u.email => {
                f.diverged.push(explain(
                    key,
                    format!(
                        "held ({name:?}, {email:?}), Clerk ({:?}, {:?})",
                        u.name(),
                        u.email
                    ),
                ))
            }
            _ => {}
        }
    }
    for (id, (name, email, deleted)) in &held {
        if truth.users.contains_key(id) {
            continue;
        }
        let key = format!("user:{id}");
        if !truth.deleted_users.contains(id) {
            f.diverged.push(explain(key, "held, never in Clerk".into()));
        } else if !deleted || !name.is_empty() || !email.is_empty() {
            f.diverged
                .push(explain(key, "deleted in Clerk, held with its data".into()));
        }
    }

    // Workspaces.
    let mut ws = HashMap::new();
    for r in wdb
        .query(
            "SELECT clerk_org_id, name, deleted_at IS NOT NULL FROM workspaces",
            &[],
        )
        .await?
    {
        ws.insert(
            r.get::<_, String>(0),
            (r.get::<_, String>(1), r.get::<_, bool>(2)),
        );
    }
    f.checked.insert("workspaces", ws.len());
    for (id, o) in &truth.orgs {
        let key = format!("org:{id}");
        match ws.get(id) {
            None => f.lost.push(explain(key, "missing".into())),
            Some((_, true)) => f
                .diverged
                .push(explain(key, "deleted here, alive in Clerk".into())),
            Some((name, false)) if *name != o.name => f
                .diverged
                .push(explain(key, format!("held {name:?}, Clerk {:?}", o.name))),
            _ => {}
        }
    }
    for (id, (_, deleted)) in &ws {
        if truth.orgs.contains_key(id) {
            continue;
        }
        let key = format!("org:{id}");
        if truth.deleted_orgs.contains(id) {
            let what = if *deleted {
                "deleted, not purged"
            } else {
                "deleted in Clerk, held"
            };
            f.diverged.push(explain(key, what.into()));
        } else {
            f.diverged.push(explain(key, "held, never in Clerk".into()));
        }
    }

    // Memberships.
    let mut mems = BTreeMap::new();
    for r in wdb
        .query(
            "SELECT clerk_org_id, clerk_user_id, role, deleted FROM memberships",
            &[],
        )
        .await?
    {
        mems.insert(
            (r.get::<_, String>(0), r.get::<_, String>(1)),
            (r.get::<_, String>(2), r.get::<_, bool>(3)),
        );
    }
    f.checked.insert("memberships", mems.len());
    for (k, m) in &truth.memberships {
        let key = format!("membership:{}/{}", k.0, k.1);
        match mems.get(k) {
            None => f.lost.push(explain(key, "missing".into())),
            Some((_, true)) => f
                .lost
                .push(explain(key, "deleted here, alive in Clerk".into())),
            Some((role, false)) if *role != m.role => f
                .diverged
                .push(explain(key, format!("role {role}, Clerk {}", m.role))),
            _ => {}
        }
    }
    for (k, (_, deleted)) in &mems {
        if truth.memberships.contains_key(k) {
            continue;
        }
        let key = format!("membership:{}/{}", k.0, k.1);
        if truth.deleted_orgs.contains(&k.0) {
            f.leftovers
                .push(explain(key, "membership of a deleted workspace".into()));
        } else if !deleted {
            f.diverged.push(explain(key, "held, not in Clerk".into()));
        }
    }

    Ok(())
}

/// Before the final reconcile: the differences no withheld or given-up delivery explains
/// (webhooks alone must have made every other row equal).
pub async fn before_reconcile(
    identity_db: &str,
    workspace_db: &str,
    truth: &Truth,
    events: &[Event],
    unsent: &BTreeSet<usize>,
) -> Result<(Vec<String>, usize)> {
    let mut f = Findings::default();
    clerk_data(
        &connect(identity_db).await?,
        &connect(workspace_db).await?,
        truth,
        events,
        &mut f,
    )
    .await?;
    let explained: BTreeSet<&str> = events
        .iter()
        .filter(|e| unsent.contains(&e.seq))
        .flat_map(|e| e.keys.iter().map(String::as_str))
        .collect();
    // A membership row is explained by an unsent event of its own, of its organization (an
    // unsent deletion leaves even its deleted memberships' rows) or of its user.
    let covers = |key: &str| {
        explained.contains(key)
            || key
                .strip_prefix("membership:")
                .and_then(|m| m.split_once('/'))
                .is_some_and(|(org, user)| {
                    explained.contains(format!("org:{org}").as_str())
                        || explained.contains(format!("user:{user}").as_str())
                })
    };
    let all: Vec<String> = f
        .lost
        .into_iter()
        .chain(f.diverged)
        .chain(f.leftovers)
        .collect();
    let total = all.len();
    let unexplained = all
        .into_iter()
        .filter(|d| !d.split(": ").next().is_some_and(covers))
        .collect();
    Ok((unexplained, total))
}

/// Rows that point at a workspace, channel or room that is gone or deleted.
async fn leftovers(wdb: &tokio_postgres::Client, f: &mut Findings) -> Result<()> {
    let live_ws = "(SELECT id FROM workspaces WHERE deleted_at IS NULL)";
    let mut queries = vec![
        (
            "workspaces (deleted, not purged)".to_owned(),
            "SELECT count(*) FROM workspaces WHERE deleted_at IS NOT NULL".to_owned(),
        ),
        (
            "rooms (deleted, not purged)".to_owned(),
            "SELECT count(*) FROM rooms WHERE deleted_at IS NOT NULL".to_owned(),
        ),
    ];
    for r in wdb
        .query(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'workspace_id' ORDER BY 1",
            &[],
        )
        .await?
    {
        let t: String = r.get(0);
        let sql = match t.as_str() {
            // A deleted workspace keeps its last change (the deletion, for watchers resuming
            // with an older token) and its head until the change log's retention prunes them.
            "change_log" => format!(
                "SELECT count(*) FROM change_log l WHERE workspace_id NOT IN {live_ws}
                   AND seq < (SELECT max(seq) FROM change_log m WHERE m.workspace_id = l.workspace_id)"
            ),
            "change_heads" => continue,
            // A membership may precede its organization's workspace (and hold the id it will
            // get): checked against the model's memberships instead.
            "memberships" => continue,
            _ => format!("SELECT count(*) FROM {t} WHERE workspace_id NOT IN {live_ws}"),
        };
        queries.push((t.clone(), sql));
    }
    for t in ["documents", "code_files", "whiteboards", "meetings"] {
        queries.push((
            t.to_owned(),
            format!("SELECT count(*) FROM {t} WHERE room_id NOT IN (SELECT id FROM rooms WHERE deleted_at IS NULL AND workspace_id IN {live_ws})"),
        ));
    }
    for t in ["messages", "read_receipts"] {
        queries.push((
            t.to_owned(),
            format!("SELECT count(*) FROM {t} WHERE channel_id NOT IN (SELECT id FROM channels WHERE workspace_id IN {live_ws})"),
        ));
    }
    queries.push((
        "purge_jobs".into(),
        "SELECT count(*) FROM purge_jobs".into(),
    ));
    queries.push((
        "liveblocks_cleanup_jobs".into(),
        "SELECT count(*) FROM liveblocks_cleanup_jobs".into(),
    ));
    for (what, sql) in queries {
        let n: i64 = wdb.query_one(&sql, &[]).await?.get(0);
        if n > 0 {
            f.leftovers.push(format!("{what}: {n} rows"));
        }
    }
    Ok(())
}

/// Each Liveblocks room of a deleted workspace or room deleted once at Liveblocks; none of a
/// live one deleted.
fn rooms(
    truth: &Truth,
    traffic: &Record,
    deleted: &[String],
    repeated: &[String],
    f: &mut Findings,
) {
    let mut times: HashMap<&str, usize> = HashMap::new();
    for d in deleted {
        *times.entry(d.as_str()).or_default() += 1;
    }
    let repeated: BTreeSet<&str> = repeated.iter().map(String::as_str).collect();
    let mut expected = 0;
    for room in &traffic.rooms {
        let gone = room.deleted || truth.deleted_orgs.contains(&room.org);
        if room.ambiguous && !gone {
            continue;
        }
        for lb in std::iter::once(&room.liveblocks).chain(&room.items) {
            let n = times.get(lb.as_str()).copied().unwrap_or(0);
            if gone {
                expected += 1;
                match n {
                    0 => f.rooms_never.push(format!(
                        "{lb} (org {}, room deleted: {})",
                        room.org, room.deleted
                    )),
                    _ if n > 1 || repeated.contains(lb.as_str()) => f.rooms_twice += 1,
                    _ => f.rooms_once += 1,
                }
            } else if n > 0 {
                f.diverged.push(format!(
                    "{lb}: deleted at Liveblocks while its room and workspace {} live",
                    room.org
                ));
            }
        }
    }
    f.checked.insert("liveblocks rooms to delete", expected);
}

/// Every answered post or edit in a live workspace is there as last answered; an answered
/// delete is gone; no body is held twice.
async fn messages(
    wdb: &tokio_postgres::Client,
    truth: &Truth,
    traffic: &Record,
    f: &mut Findings,
) -> Result<()> {
    let mut held = HashMap::new();
    for r in wdb
        .query(
            "SELECT id::text, body FROM messages WHERE author_clerk_id = $1",
            &[&crate::traffic::AUTHOR],
        )
        .await?
    {
        held.insert(r.get::<_, String>(0), r.get::<_, String>(1));
    }
    let mut bodies: HashMap<&str, usize> = HashMap::new();
    for b in held.values() {
        *bodies.entry(b.as_str()).or_default() += 1;
    }
    for (b, n) in bodies {
        if n > 1 {
            f.doubled.push(format!("message body {b:?} held {n} times"));
        }
    }
    let mut checked = 0;
    for (id, m) in &traffic.messages {
        if m.ambiguous || !truth.orgs.contains_key(&m.org) {
            continue;
        }
        checked += 1;
        match (held.get(id), m.deleted) {
            (None, false) => f.lost.push(format!("message {id} in {}: missing", m.org)),
            (Some(_), true) => f
                .diverged
                .push(format!("message {id} in {}: deleted, still held", m.org)),
            (Some(b), false) if *b != m.body => f.diverged.push(format!(
                "message {id} in {}: body {b:?}, last answered {:?}",
                m.org, m.body
            )),
            _ => {}
        }
    }
    f.checked.insert("messages", checked);
    Ok(())
}

/// Each watcher against the change log: after its first token, every change of its scope
/// once, in order (a watcher of a deleted workspace: once and in order only, the log is purged).
pub async fn watchers(
    workspace_db: &str,
    truth: &Truth,
    seen: &[crate::watch::Seen],
    f: &mut Findings,
) -> Result<()> {
    let wdb = connect(workspace_db).await?;
    for w in seen {
        let scope = match &w.channel {
            Some(c) => format!("channel {c} of {}", w.org),
            None => format!("workspace {}", w.org),
        };
        let Some(first) = w.first else {
            f.watchers.push(format!("{scope}: never got a token"));
            continue;
        };
        let mut bad = Vec::new();
        let mut uniq = BTreeSet::new();
        let doubled = w.changes.iter().filter(|s| !uniq.insert(**s)).count();
        let disordered = w.changes.windows(2).filter(|p| p[1] <= p[0]).count();
        if doubled > 0 {
            bad.push(format!("{doubled} shown twice"));
        }
        if disordered > 0 {
            bad.push(format!("{disordered} out of order"));
        }
        if let Some(r) = &w.refused {
            bad.push(format!("resume token refused: {r}"));
        }
        let alive = truth.orgs.contains_key(&w.org) && w.ended.is_none();
        let mut expected = 0;
        if alive {
            let rows = wdb
                .query(
                    "SELECT l.seq FROM change_log l JOIN workspaces w ON w.id = l.workspace_id
                      WHERE w.clerk_org_id = $1 AND l.seq > $2
                        AND l.channel_id IS NOT DISTINCT FROM $3::text::uuid ORDER BY l.seq",
                    &[&w.org, &first, &w.channel],
                )
                .await?;
            let log: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            expected = log.len();
            let logged: BTreeSet<i64> = log.iter().copied().collect();
            let missing: Vec<i64> = log.iter().filter(|s| !uniq.contains(s)).copied().collect();
            let extra = uniq.iter().filter(|s| !logged.contains(s)).count();
            if !missing.is_empty() {
                bad.push(format!(
                    "{} not shown (first {:?})",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
            if extra > 0 {
                bad.push(format!("{extra} shown that the log does not hold"));
            }
        }
        let line = format!(
            "{scope}: first token {first}, {} changes shown, {expected} in the log after it, {} reconnects{}",
            w.changes.len(),
            w.reconnects,
            w.ended
                .as_ref()
                .map(|e| format!(", ended: {e}"))
                .unwrap_or_default()
        );
        if bad.is_empty() {
            f.watchers.push(line);
        } else {
            f.watcher_gaps.push(format!("{line}: {}", bad.join(", ")));
        }
    }
    Ok(())
}
