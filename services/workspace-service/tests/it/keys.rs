//! The schema is ready to be partitioned by workspace: every content table leads its primary
//! key with the workspace id, and a database of the earlier shape upgrades with every row kept
//! and given its workspace.

use crate::support;
use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel::sql_types::{Array, Text};
use diesel_async::RunQueryDsl;
use vbase_proto::workspace::v1 as pb;

/// Tables that hold no workspace's content: bookkeeping of deliveries, jobs, reconcile runs and
/// what is final (tombstones, removed users), and the migrations. Every other table is content.
const NOT_CONTENT: &[&str] = &[
    "__diesel_schema_migrations",
    "processed_events",
    "purge_jobs",
    "liveblocks_cleanup_jobs",
    "quarantined_deliveries",
    "sync_outcomes",
    "reconcile_runs",
    "reconcile_seen",
    "reconcile_candidates",
    "clerk_instances",
    "workspace_tombstones",
    "removed_users",
    "user_revocations",
];

/// The column that holds a content table's workspace id.
fn workspace_column(table: &str) -> &'static str {
    if table == "workspaces" {
        "id"
    } else {
        "workspace_id"
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct Keyed {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Array<Text>)]
    columns: Vec<String>,
}

#[derive(diesel::QueryableByName, Debug)]
struct ForeignKey {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    from_table: String,
    #[diesel(sql_type = Array<Text>)]
    from_columns: Vec<String>,
    #[diesel(sql_type = Text)]
    to_table: String,
    #[diesel(sql_type = Array<Text>)]
    to_columns: Vec<String>,
}

/// What in the schema of `url` is not keyed by workspace, one line each (empty: all is).
async fn not_keyed_by_workspace(url: &str) -> Vec<String> {
    let pool = service_runtime::db::build_pool(url, 1, workspace_service::PLANS).unwrap();
    let mut conn = pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Table {
        #[diesel(sql_type = Text)]
        table_name: String,
    }
    let tables: Vec<Table> = diesel::sql_query(
        "SELECT relname::text AS table_name FROM pg_class
          WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1",
    )
    .load(&mut *conn)
    .await
    .unwrap();
    let content: Vec<String> = tables
        .into_iter()
        .map(|t| t.table_name)
        .filter(|t| !NOT_CONTENT.contains(&t.as_str()))
        .collect();
    assert!(content.len() >= 12, "content tables: {content:?}");
    // Primary keys, and every unique index (a partitioned table's must hold the partition key).
    let keys: Vec<Keyed> = diesel::sql_query(
        "SELECT t.relname::text AS table_name, i.relname::text AS name,
                ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k (n, o)
                        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n
                       ORDER BY k.o) AS columns
           FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
          WHERE t.relnamespace = 'public'::regnamespace AND (x.indisprimary OR x.indisunique)
          ORDER BY 1, 2",
    )
    .load(&mut *conn)
    .await
    .unwrap();
    let primary: Vec<Keyed> = diesel::sql_query(
        "SELECT t.relname::text AS table_name, k.conname::text AS name,
                ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS c (n, o)
                        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.n
                       ORDER BY c.o) AS columns
           FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
          WHERE k.connamespace = 'public'::regnamespace AND k.contype = 'p'
          ORDER BY 1",
    )
    .load(&mut *conn)
    .await
    .unwrap();
    let foreign: Vec<ForeignKey> = diesel::sql_query(
        "SELECT k.conname::text AS name, f.relname::text AS from_table,
                ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS c (n, o)
                        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.n
                       ORDER BY c.o) AS from_columns,
                t.relname::text AS to_table,
                ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS c (n, o)
                        JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = c.n
                       ORDER BY c.o) AS to_columns
           FROM pg_constraint k
           JOIN pg_class f ON f.oid = k.conrelid JOIN pg_class t ON t.oid = k.confrelid
          WHERE k.connamespace = 'public'::regnamespace AND k.contype = 'f'
          ORDER BY 1",
    )
    .load(&mut *conn)
    .await
    .unwrap();
    let mut wrong = Vec::new();
    for table in &content {
        let column = workspace_column(table);
        match primary.iter().find(|k| &k.table_name == table) {
            None => wrong.push(format!("{table}: no primary key")),
            Some(k) if <[String]>::first(&k.columns).map(String::as_str) != Some(column) => wrong
                .push(format!(
                    "{table}: primary key {:?} does not start with {column}",
                    k.columns
                )),
            Some(_) => {}
        }
        // `workspaces` (one row per organization) is not partitioned (a reference table under
        // Citus): its organization id stays unique on its own.
        if table == "workspaces" {
            continue;
        }
        for k in keys.iter().filter(|k| &k.table_name == table) {
            if !k.columns.iter().any(|c| c == column) {
                wrong.push(format!(
                    "{table}: unique {} {:?} without {column}",
                    k.name, k.columns
                ));
            }
        }
    }
    for fk in &foreign {
        if !content.contains(&fk.from_table) || !content.contains(&fk.to_table) {
            continue;
        }
        // The referencing workspace id must meet the referenced one, column for column.
        let paired = fk
            .from_columns
            .iter()
            .zip(&fk.to_columns)
            .any(|(from, to)| from == "workspace_id" && to == workspace_column(&fk.to_table));
        if !paired {
            wrong.push(format!(
                "{}: {} {:?} -> {} {:?} does not pair the workspace ids",
                fk.name, fk.from_table, fk.from_columns, fk.to_table, fk.to_columns
            ));
        }
    }
    wrong
}

#[tokio::test]
async fn every_content_table_is_keyed_by_its_workspace() {
    let db = support::database().await;
    let wrong = not_keyed_by_workspace(db.url()).await;
    assert!(wrong.is_empty(), "not keyed by workspace: {wrong:#?}");
}

/// The version of the migration that keys the content tables by workspace.
const KEYS: &str = "20261206000036";

/// The service's migrations before [`KEYS`].
struct BeforeKeys;

impl MigrationSource<Pg> for BeforeKeys {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        let all = MigrationSource::<Pg>::migrations(&workspace_service::MIGRATIONS)?;
        Ok(all
            .into_iter()
            .filter(|m| m.name().version().to_string() != KEYS)
            .collect())
    }
}

const WS_A: &str = "0191d6a4-0000-7000-8000-00000000000a";
const WS_B: &str = "0191d6a4-0000-7000-8000-00000000000b";

/// Rows of the earlier shape: two workspaces with channels, messages, read receipts, rooms of
/// each kind with their items and a meeting, and memberships of both and of an organization
/// without a workspace (yet).
fn old_rows() -> String {
    format!(
        "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at) VALUES
           ('{WS_A}', 'org_a', 'A', now()), ('{WS_B}', 'org_b', 'B', now());
         INSERT INTO channels (id, workspace_id, name) VALUES
           ('00000000-0000-4000-8000-0000000000c1', '{WS_A}', 'general'),
           ('00000000-0000-4000-8000-0000000000c2', '{WS_A}', 'random'),
           ('00000000-0000-4000-8000-0000000000c3', '{WS_B}', 'general');
         INSERT INTO messages (id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c, 'user_1', 'm' || g, now() - g * interval '1 second'
             FROM unnest(ARRAY['00000000-0000-4000-8000-0000000000c1',
                               '00000000-0000-4000-8000-0000000000c2',
                               '00000000-0000-4000-8000-0000000000c3']::uuid[]) c,
                  generate_series(1, 5) g;
         INSERT INTO read_receipts (channel_id, clerk_user_id, last_read_at) VALUES
           ('00000000-0000-4000-8000-0000000000c1', 'user_1', now()),
           ('00000000-0000-4000-8000-0000000000c1', 'user_2', now()),
           ('00000000-0000-4000-8000-0000000000c3', 'user_2', now());
         INSERT INTO rooms (id, workspace_id, kind, name) VALUES
           ('00000000-0000-4000-8000-0000000000a1', '{WS_A}', 'document', 'docs'),
           ('00000000-0000-4000-8000-0000000000a2', '{WS_A}', 'code', 'code'),
           ('00000000-0000-4000-8000-0000000000a3', '{WS_B}', 'whiteboard', 'boards'),
           ('00000000-0000-4000-8000-0000000000a4', '{WS_B}', 'conference', 'calls');
         INSERT INTO documents (id, room_id, name) VALUES
           (gen_random_uuid(), '00000000-0000-4000-8000-0000000000a1', 'd1'),
           (gen_random_uuid(), '00000000-0000-4000-8000-0000000000a1', 'd2');
         INSERT INTO code_files (id, room_id, name, language) VALUES
           (gen_random_uuid(), '00000000-0000-4000-8000-0000000000a2', 'main.rs', 'rust');
         INSERT INTO whiteboards (id, room_id, name) VALUES
           (gen_random_uuid(), '00000000-0000-4000-8000-0000000000a3', 'w1');
         INSERT INTO meetings (id, room_id, title, starts_at, ends_at) VALUES
           (gen_random_uuid(), '00000000-0000-4000-8000-0000000000a4', 'standup', now(), now() + interval '1 hour');
         INSERT INTO memberships (clerk_org_id, clerk_user_id, role, source_updated_at, deleted) VALUES
           ('org_a', 'user_1', 'org:admin', now(), false),
           ('org_a', 'user_2', 'org:member', now(), true),
           ('org_b', 'user_2', 'org:member', now(), false),
           ('org_later', 'user_3', 'org:member', now(), false);"
    )
}

#[tokio::test]
async fn a_database_of_the_earlier_shape_keeps_every_row_with_its_workspace() {
    let (db, applied) = service_harness::upgrade::upgrade(
        "workspace_keys",
        BeforeKeys,
        || workspace_service::MIGRATIONS,
        &old_rows(),
    )
    .await;
    assert_eq!(applied, [KEYS]);
    let wrong = not_keyed_by_workspace(db.url()).await;
    assert!(wrong.is_empty(), "not keyed by workspace: {wrong:#?}");
    let checks = [
        ("SELECT count(*) FROM channels".to_owned(), 3),
        (
            "SELECT count(*) FROM messages m JOIN channels c ON c.id = m.channel_id
              WHERE m.workspace_id = c.workspace_id"
                .to_owned(),
            15,
        ),
        (
            format!("SELECT count(*) FROM messages WHERE workspace_id = '{WS_B}'"),
            5,
        ),
        (
            "SELECT count(*) FROM read_receipts r JOIN channels c ON c.id = r.channel_id
              WHERE r.workspace_id = c.workspace_id"
                .to_owned(),
            3,
        ),
        (
            format!("SELECT count(*) FROM read_receipts WHERE workspace_id = '{WS_A}'"),
            2,
        ),
        ("SELECT count(*) FROM rooms".to_owned(), 4),
        (
            format!(
                "SELECT count(*) FROM documents WHERE workspace_id = '{WS_A}'
                   AND room_id = '00000000-0000-4000-8000-0000000000a1'"
            ),
            2,
        ),
        (
            format!(
                "SELECT count(*) FROM code_files WHERE workspace_id = '{WS_A}' AND language = 'rust'"
            ),
            1,
        ),
        (
            format!("SELECT count(*) FROM whiteboards WHERE workspace_id = '{WS_B}'"),
            1,
        ),
        (
            format!(
                "SELECT count(*) FROM meetings WHERE workspace_id = '{WS_B}' AND title = 'standup'"
            ),
            1,
        ),
        (
            format!(
                "SELECT count(*) FROM memberships WHERE workspace_id = '{WS_A}' AND clerk_org_id = 'org_a'"
            ),
            2,
        ),
        (
            format!(
                "SELECT count(*) FROM memberships WHERE workspace_id = '{WS_B}' AND clerk_org_id = 'org_b'
                   AND role = 'org:member' AND NOT deleted"
            ),
            1,
        ),
        (
            format!(
                "SELECT count(*) FROM memberships WHERE workspace_id = '{}' AND clerk_org_id = 'org_later'",
                workspace_service::derived_workspace_id("org_later")
            ),
            1,
        ),
        ("SELECT count(*) FROM memberships".to_owned(), 4),
    ];
    for (sql, want) in checks {
        assert_eq!(service_harness::scalar(db.url(), &sql).await, want, "{sql}");
    }
}

/// A membership that arrives before its organization holds the id the workspace then gets; a
/// workspace created before derived ids keeps its id, and its new memberships take it.
#[tokio::test]
async fn memberships_hold_their_workspace_id_before_and_after_the_workspace() {
    let env = support::start_with(false).await;
    let mut c = env.client().await;
    c.upsert_membership(env.service(support::membership(
        "m-early",
        1,
        "org_early",
        "user_1",
        "org:admin",
    )))
    .await
    .unwrap();
    let derived = workspace_service::derived_workspace_id("org_early");
    let held = format!(
        "SELECT count(*) FROM memberships WHERE clerk_org_id = 'org_early' AND workspace_id = '{derived}'"
    );
    assert_eq!(env.scalar(&held).await, 1);
    let ws = env.workspace("org_early").await;
    assert_eq!(ws.id, derived.to_string());
    let members = c
        .list_members(env.member(
            "user_1",
            "org_early",
            pb::ListMembersRequest {
                clerk_org_id: "org_early".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 1);

    // A workspace whose id was made before (time-ordered, not derived).
    let old = "0191d6a4-0000-7000-8000-0000000000ff";
    env.sql(&format!(
        "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at) VALUES ('{old}', 'org_old', 'Old', now())"
    ))
    .await;
    c.upsert_membership(env.service(support::membership(
        "m-old",
        2,
        "org_old",
        "user_2",
        "org:member",
    )))
    .await
    .unwrap();
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM memberships WHERE clerk_org_id = 'org_old' AND workspace_id = '{old}'"
        ))
        .await,
        1
    );
}

/// A membership and its organization's workspace that name different workspace ids are
/// refused by the database, whichever is written second.
#[tokio::test]
async fn a_membership_and_its_workspace_never_name_different_ids() {
    let env = support::start().await;
    let url = env.db.url().to_owned();
    let derived = workspace_service::derived_workspace_id("org_split");
    env.sql(&format!(
        "INSERT INTO memberships (workspace_id, clerk_org_id, clerk_user_id, role, source_updated_at)
         VALUES ('{derived}', 'org_split', 'user_1', 'org:member', now())"
    ))
    .await;
    let other = "0191d6a4-0000-7000-8000-0000000000aa";
    let refused = service_harness::try_execute(
        &url,
        &format!(
            "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at)
             VALUES ('{other}', 'org_split', 'Split', now())"
        ),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("not the workspace its memberships name")),
        "{refused:?}"
    );
    env.sql(&format!(
        "INSERT INTO workspaces (id, clerk_org_id, name, source_updated_at)
         VALUES ('{derived}', 'org_split', 'Split', now())"
    ))
    .await;
    let refused = service_harness::try_execute(
        &url,
        &format!(
            "INSERT INTO memberships (workspace_id, clerk_org_id, clerk_user_id, role, source_updated_at)
             VALUES ('{other}', 'org_split', 'user_2', 'org:member', now())"
        ),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("not its organization's")),
        "{refused:?}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM memberships WHERE clerk_org_id = 'org_split'")
            .await,
        1
    );
}
