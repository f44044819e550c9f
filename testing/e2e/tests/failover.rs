//! PostgreSQL fails over under load, and nothing is lost. The three real binaries run on a
//! multi-host `DATABASE_URL` (`target_session_attrs=read-write`) over a primary with a
//! synchronous streaming standby. While webhooks and user calls flow and a workspace is being
//! purged, the standby falls away (so commits wait for it), the primary is stopped at once
//! (`pg_ctl -m immediate`) and the standby promoted. The services go on without a restart: what
//! was in flight is answered 503 or UNAVAILABLE, Svix's retry is applied once, every accepted
//! event and every answered call is there exactly once, and the purge finishes.

use ephemeral_postgres::PgCluster;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_stack::{Stack, StackConfig, Which, dev_user_claims, sign_webhook};

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

/// What the webhook senders saw: status codes of every attempt, and the outcome of each
/// delivery once accepted.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    outcomes: BTreeMap<String, usize>,
    accepted: Vec<String>,
}

struct Sender {
    url: String,
    secret: String,
    http: reqwest::Client,
}

impl Sender {
    /// One attempt: the status and the body.
    async fn post(&self, id: &str, body: &Value) -> (u16, String) {
        let bytes = body.to_string().into_bytes();
        let mut req = self.http.post(&self.url).body(bytes.clone());
        for (k, v) in sign_webhook(&self.secret, id, &bytes).unwrap() {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// Like Svix: every non-2xx is retried after a short delay, until accepted.
    async fn deliver(&self, id: &str, body: &Value, seen: &Mutex<Seen>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, text) = self.post(id, body).await;
            let mut s = seen.lock().await;
            *s.statuses.entry(code).or_default() += 1;
            if (200..300).contains(&code) {
                let outcome = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["outcome"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                *s.outcomes.entry(outcome).or_default() += 1;
                s.accepted.push(id.to_owned());
                return;
            }
            drop(s);
            assert!(
                Instant::now() < deadline,
                "{id} never accepted (last {code})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn user_created(id: &str, at_ms: i64) -> Value {
    json!({"data": {"id": id, "object": "user", "first_name": "Fail", "last_name": "Over", "username": null,
                    "primary_email_address_id": "idn_p", "image_url": "https://img.clerk.com/x",
                    "email_addresses": [{"id": "idn_p", "email_address": format!("{id}@example.org")}],
                    "created_at": at_ms, "updated_at": at_ms},
           "object": "event", "type": "user.created", "timestamp": at_ms})
}

fn org_event(kind: &str, id: &str, at_ms: i64) -> Value {
    json!({"data": {"id": id, "object": "organization", "name": "Failover", "slug": null, "created_by": "user_owner",
                    "created_at": 1_700_000_000_000_i64, "updated_at": at_ms},
           "object": "event", "type": kind, "timestamp": at_ms})
}

fn org_deleted(id: &str, at_ms: i64) -> Value {
    json!({"data": {"deleted": true, "id": id, "object": "organization"}, "object": "event",
           "type": "organization.deleted", "timestamp": at_ms})
}

/// Whether process `pid` still runs (not exited, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn the_services_survive_a_failover_to_the_standby_and_lose_nothing() {
    let (primary, standby) = PgCluster::synchronous_pair().await.unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let dir = tempfile_dir();
    let mut cfg = StackConfig::dev(bin_dir(), dir.clone());
    cfg.database_url = Some(url);
    cfg.extra_env.insert(
        "workspace-service",
        vec![
            ("PURGE_CHUNK_ROWS".into(), "100".into()),
            ("PURGE_LANES".into(), "1".into()),
            ("PURGE_LEASE_SECS".into(), "5".into()),
            ("PURGE_POLL_MS".into(), "100".into()),
        ],
    );
    let stack = Stack::start(cfg).await.expect("stack starts");
    let pids: Vec<u32> = [Which::Identity, Which::Workspace, Which::Gateway]
        .into_iter()
        .map(|w| stack.pid(w).unwrap())
        .collect();
    let sender = Arc::new(Sender {
        url: format!("{}/clerk", stack.state.gateway_url),
        secret: stack.state.webhook_secret.clone(),
        http: reqwest::Client::new(),
    });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let now_ms = token_auth::signing::now_secs() * 1000;

    // A workspace with 20,000 messages, deleted: its purge runs 100 rows a chunk.
    sender
        .deliver(
            "org-create",
            &org_event("organization.created", "org_fo", now_ms - 5000),
            &seen,
        )
        .await;
    let ws_db = stack.workspace_db.clone();
    let id_db = stack.identity_db.clone();
    service_harness::execute(
        &ws_db,
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), id, 'big' FROM workspaces;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_1', 'm', now() - g * interval '1 ms'
             FROM channels c, generate_series(1, 20000) g WHERE c.name = 'big';
         ANALYZE;",
    )
    .await;
    sender
        .deliver("org-delete", &org_deleted("org_fo", now_ms), &seen)
        .await;

    // Load: three Svix-like senders of user.created, and a user calling StoreUser.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..3 {
        let (sender, seen, stop) = (sender.clone(), seen.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("fo_{t}_{i}");
                let body = user_created(&format!("user_fo_{t}_{i}"), now_ms);
                sender.deliver(&id, &body, &seen).await;
                i += 1;
            }
        }));
    }
    let calls: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let stored = Arc::new(AtomicUsize::new(0));
    {
        let (calls, stored, stop) = (calls.clone(), stored.clone(), stop.clone());
        let state = stack.state.clone();
        let key = token_auth::signing::SigningKey::from_pem(
            &std::fs::read_to_string(state.clerk_signing_key_file.as_ref().unwrap()).unwrap(),
        )
        .unwrap();
        let mut client =
            IdentityServiceClient::new(service_harness::connect(stack.identity_addr).await);
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("user_call_{i}");
                let claims = dev_user_claims(&state, &user, None, "", "Caller", "c@example.org");
                let token = key.sign(&claims).unwrap();
                let r = client
                    .store_user(service_harness::bearer(idp::StoreUserRequest {}, &token))
                    .await;
                let code = match &r {
                    Ok(_) => {
                        stored.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        "Ok".to_owned()
                    }
                    Err(s) => format!("{:?}", s.code()),
                };
                *calls.lock().await.entry(code).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    // The purge under way and webhooks flowing, the primary goes away at once.
    service_harness::eventually("the purge under way", Duration::from_secs(30), || async {
        service_harness::scalar(&ws_db, "SELECT count(*) FROM messages").await < 19_000
    })
    .await;
    service_harness::eventually("webhooks flowing", Duration::from_secs(30), || async {
        seen.lock().await.accepted.len() > 50
    })
    .await;
    // The standby goes away first, so writes are waiting for it to confirm their commits when
    // the primary stops: none of them may have been answered as done.
    let primary_url = primary.url("postgres");
    let standby = tokio::task::spawn_blocking(move || {
        standby.pause().unwrap();
        standby
    })
    .await
    .unwrap();
    service_harness::eventually(
        "commits waiting for the standby",
        Duration::from_secs(30),
        || async {
            service_harness::scalar(
                &primary_url,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
            )
            .await
                > 0
        },
    )
    .await;
    let crash = tokio::task::spawn_blocking(move || {
        primary.crash().unwrap();
        standby.resume().unwrap();
        (primary, standby)
    });
    let (primary, standby) = crash.await.unwrap();
    let accepted_at_crash = seen.lock().await.accepted.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote().unwrap();
        standby
    })
    .await
    .unwrap();

    // The same processes go on against the promoted standby.
    service_harness::eventually(
        "webhooks accepted after the promotion",
        Duration::from_secs(30),
        || async { seen.lock().await.accepted.len() > accepted_at_crash + 100 },
    )
    .await;
    let stored_after = stored.load(Ordering::Relaxed);
    service_harness::eventually(
        "user calls answered after the promotion",
        Duration::from_secs(30),
        || async { stored.load(Ordering::Relaxed) > stored_after + 20 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    service_harness::eventually("the purge finished", Duration::from_secs(60), || async {
        service_harness::scalar(&ws_db, "SELECT count(*) FROM purge_jobs").await == 0
    })
    .await;

    let seen = seen.lock().await;
    let calls = calls.lock().await;
    eprintln!(
        "webhook attempts by status {:?}, outcomes {:?}; StoreUser answers {:?}",
        seen.statuses, seen.outcomes, *calls
    );
    // In flight during the switch: answered 503, nothing else but 200.
    assert!(
        seen.statuses.get(&503).copied().unwrap_or(0) > 0,
        "no webhook met the switch"
    );
    assert!(
        seen.statuses.keys().all(|c| [200, 503].contains(c)),
        "{:?}",
        seen.statuses
    );
    assert!(
        calls
            .keys()
            .all(|c| ["Ok", "Unavailable"].contains(&c.as_str())),
        "{calls:?}"
    );
    // Every accepted event applied exactly once, on the promoted standby.
    // On a failure, which accepted events are missing, and whether before or after the crash.
    let have: std::collections::HashSet<String> = service_harness::strings(
        &id_db,
        "SELECT clerk_id FROM users WHERE clerk_id LIKE 'user_fo_%'",
    )
    .await
    .into_iter()
    .collect();
    for (i, id) in seen.accepted.iter().enumerate() {
        if id.starts_with("fo_") && !have.contains(&format!("user_{id}")) {
            eprintln!("missing: {id}, accepted #{i} (the crash came after #{accepted_at_crash})");
        }
    }
    let called: std::collections::HashSet<String> = service_harness::strings(
        &id_db,
        "SELECT clerk_id FROM users WHERE clerk_id LIKE 'user_call_%'",
    )
    .await
    .into_iter()
    .collect();
    let mut lost: Vec<String> = seen
        .accepted
        .iter()
        .filter(|id| id.starts_with("fo_") && !have.contains(&format!("user_{id}")))
        .map(|id| format!("user_{id}"))
        .collect();
    lost.extend(
        (0..stored.load(Ordering::Relaxed))
            .map(|i| format!("user_call_{i}"))
            .filter(|u| !called.contains(u)),
    );
    if !lost.is_empty() {
        tell_where_it_went(&primary, &standby, &id_db, &lost).await;
    }
    let n_users = seen
        .accepted
        .iter()
        .filter(|id| id.starts_with("fo_"))
        .count() as i64;
    assert_eq!(
        service_harness::scalar(
            &id_db,
            "SELECT count(*) FROM users WHERE clerk_id LIKE 'user_fo_%'"
        )
        .await,
        n_users
    );
    assert_eq!(
        service_harness::scalar(
            &id_db,
            "SELECT count(*) FROM processed_events WHERE event_id LIKE 'fo\\_%'"
        )
        .await,
        n_users
    );
    assert_eq!(
        service_harness::scalar(
            &id_db,
            "SELECT count(*) FROM users WHERE clerk_id LIKE 'user_call_%'"
        )
        .await,
        *calls.get("Ok").unwrap_or(&0) as i64
    );
    // The purge resumed and finished.
    let left =
        service_harness::tables_with_rows(&ws_db, service_harness::WORKSPACE_BOOKKEEPING).await;
    assert!(left.is_empty(), "rows left: {left:?}");
    for pid in pids {
        assert!(running(pid), "process {pid} exited");
    }
    stack.stop().await.unwrap();
    drop((primary, standby));
    let _ = std::fs::remove_dir_all(dir);
}

/// A write answered OK is missing on the promoted standby: says whether the old primary,
/// started again from its files, has it (PostgreSQL acknowledged a commit the standby never
/// confirmed) or not (an answer without a commit), and what its log says about the commits'
/// waits for the standby.
async fn tell_where_it_went(
    primary: &PgCluster,
    standby: &PgCluster,
    promoted_db_url: &str,
    lost: &[String],
) {
    let db = promoted_db_url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap_or("postgres")
        .to_owned();
    let log = std::fs::read_to_string(primary.dir().join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("synchronous replication")
            || l.contains("canceling")
            || lost.iter().any(|id| l.contains(id.as_str()))
        {
            let from = i.saturating_sub(1);
            for line in &lines[from..=i] {
                eprintln!(
                    "old primary's log: {}",
                    line.chars().take(400).collect::<String>()
                );
            }
        }
    }
    for line in &lines[lines.len().saturating_sub(40)..] {
        let line: String = line.chars().take(300).collect();
        eprintln!("old primary's log (end): {line}");
    }
    // Whether each server's WAL ever held the row's bytes (an insert that never committed
    // leaves them there; one that never reached the server, or sat in WAL buffers, does not).
    for (name, server) in [("old primary", primary), ("promoted standby", standby)] {
        for id in lost {
            eprintln!(
                "lost {id}: in the {name}'s WAL {} time(s)",
                occurrences_in_wal(server, id)
            );
        }
    }
    // Any other PostgreSQL on this machine that holds it (a server that took over a port).
    for port in postgres_ports() {
        if port == primary.port() || port == standby.port() {
            continue;
        }
        let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
        if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            for id in lost {
                if let Ok(rows) = client
                    .query("SELECT 1 FROM users WHERE clerk_id = $1", &[id])
                    .await
                {
                    eprintln!(
                        "lost {id}: PostgreSQL on port {port} has it {} time(s)",
                        rows.len()
                    );
                }
            }
        }
    }
    if let Err(e) = primary.resume() {
        eprintln!("the old primary did not start again: {e}");
        return;
    }
    let old = format!("postgres://postgres@127.0.0.1:{}/{db}", primary.port());
    for id in lost {
        let n = service_harness::scalar(
            &old,
            &format!("SELECT count(*) FROM users WHERE clerk_id = '{id}'"),
        )
        .await;
        eprintln!("lost {id}: the old primary has it {n} time(s)");
    }
    // The old primary answers again: what follows would count its rows, not the standby's.
    panic!("writes answered OK are missing after the failover: {lost:?}");
}

/// How often `needle`'s bytes appear in the WAL files of `server`.
fn occurrences_in_wal(server: &PgCluster, needle: &str) -> usize {
    let Ok(dir) = std::fs::read_dir(server.dir().join("data").join("pg_wal")) else {
        return 0;
    };
    let needle = needle.as_bytes();
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| bytes.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

/// The ports of every PostgreSQL server running on this machine (`postgres -p <port>`).
fn postgres_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("postgres")) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "-p")
            && let Some(port) = args.get(i + 1).and_then(|p| p.parse().ok())
            && !ports.contains(&port)
        {
            ports.push(port);
        }
    }
    ports
}

fn tempfile_dir() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "vbase-failover-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}
