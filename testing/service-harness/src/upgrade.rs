//! Upgrades of a database from one migration set to the next: the schema it ends in, compared
//! with a database migrated by the new set alone, and the rows it keeps.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;

/// The `public` schema of `database_url` as sorted lines: every column (type, nullability,
/// default), index, constraint and trigger.
pub async fn schema(database_url: &str) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let mut conn = crate::connection(database_url).await;
    let lines: Vec<Line> = diesel::sql_query(
        "SELECT format('column %s.%s %s %s %s %s', table_name, column_name, ordinal_position,
                       data_type, is_nullable, coalesce(column_default, '')) AS line
           FROM information_schema.columns WHERE table_schema = 'public'
         UNION ALL
         SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
         UNION ALL
         SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
         UNION ALL
         SELECT format('trigger %s %s', tgrelid::regclass, pg_get_triggerdef(oid))
           FROM pg_trigger WHERE NOT tgisinternal
         ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .expect("catalog");
    lines.into_iter().map(|l| l.line).collect()
}

/// Migrates an empty database with `before`, then runs `seed` in it and migrates it with
/// `after`; migrates another empty database with `after` alone. Asserts that both end in the
/// same schema and returns the upgraded database's URL (for the caller's checks of the seeded
/// rows) with the names of the migrations the upgrade applied.
pub async fn upgrade<B, A>(
    name: &str,
    before: B,
    after: impl Fn() -> A,
    seed: &str,
) -> (UpgradedDb, Vec<String>)
where
    B: MigrationSource<Pg> + Send + 'static,
    A: MigrationSource<Pg> + Send + 'static,
{
    let noop = |_| async { Ok(()) };
    let old = crate::database(&format!("{name}_upgraded"), "empty", noop).await;
    let fresh = crate::database(&format!("{name}_fresh"), "empty", noop).await;
    let tls = service_runtime::DbTls::system_roots();
    service_runtime::db::run_migrations(old.url(), &tls, before)
        .await
        .expect("the earlier migrations");
    crate::execute(old.url(), seed).await;
    let applied = service_runtime::db::run_migrations(old.url(), &tls, after())
        .await
        .expect("the upgrade");
    service_runtime::db::run_migrations(fresh.url(), &tls, after())
        .await
        .expect("the migrations on an empty database");
    let (upgraded, created) = (schema(old.url()).await, schema(fresh.url()).await);
    assert!(
        created.len() > 20,
        "the catalog lists too little: {created:?}"
    );
    let only_upgraded: Vec<_> = upgraded.iter().filter(|l| !created.contains(l)).collect();
    let only_created: Vec<_> = created.iter().filter(|l| !upgraded.contains(l)).collect();
    assert!(
        only_upgraded.is_empty() && only_created.is_empty(),
        "the upgraded database differs from a new one: only upgraded {only_upgraded:#?}, only new {only_created:#?}"
    );
    (UpgradedDb(old), applied)
}

/// The upgraded database (dropped with it).
pub struct UpgradedDb(ephemeral_postgres::TestDatabase);

impl UpgradedDb {
    /// Its URL.
    pub fn url(&self) -> &str {
        self.0.url()
    }
}

/// One row in each of the delivery ledger's tables.
const LEDGER_ROWS: &str = "
    INSERT INTO quarantined_deliveries (svix_id, event_type, reason, body)
        VALUES ('msg_kept', 'user.created', 'refused', '\\x7b7d');
    INSERT INTO sync_outcomes (minute, command, outcome, count, last_at)
        VALUES (date_trunc('minute', now()), 'upsert_user', 'applied', 7, now());
    INSERT INTO reconcile_runs (run_id, completed, dry_run, error, summary)
        VALUES ('0191d6a4-0000-7000-8000-000000000001', true, false, '', '{}');
    INSERT INTO clerk_instances (instance_id, confirmed_at) VALUES ('ins_kept', now());";

/// A database migrated by the service's migrations as they were when they created the ledger's
/// tables themselves (`before`), then by the service's and the ledger's migrations (`after`, made by the closure),
/// ends in the schema `after` makes from nothing, keeps the ledger's rows, and applies only
/// the ledger's migration (`ledger_version`, its version) on the way.
pub async fn check_ledger_upgrade<B, A>(
    name: &str,
    before: B,
    after: impl Fn() -> A,
    ledger_version: &str,
) where
    B: MigrationSource<Pg> + Send + 'static,
    A: MigrationSource<Pg> + Send + 'static,
{
    let (db, applied) = upgrade(name, before, after, LEDGER_ROWS).await;
    assert_eq!(applied, [ledger_version]);
    for (sql, want) in [
        (
            "SELECT count(*) FROM quarantined_deliveries WHERE svix_id = 'msg_kept' AND body = '\\x7b7d'",
            1,
        ),
        (
            "SELECT sum(count) FROM sync_outcomes WHERE command = 'upsert_user'",
            7,
        ),
        ("SELECT count(*) FROM reconcile_runs WHERE completed", 1),
        (
            "SELECT count(*) FROM clerk_instances WHERE instance_id = 'ins_kept' AND confirmed_at IS NOT NULL",
            1,
        ),
    ] {
        assert_eq!(crate::scalar(db.url(), sql).await, want, "{sql}");
    }
}
