//! The triggers that announce a cache's changes: the cache may answer only while every one
//! fires, unchanged since its notification connection started listening.

use std::time::Duration;

/// How often, while listening, the triggers are checked (also on every connect). One missing,
/// disabled or changed since the connect (altered, disabled and enabled again, its function
/// replaced) ends the session: the caches empty and read through until a new session finds
/// every one firing.
pub const TRIGGERS_CHECKED_EVERY: Duration = Duration::from_secs(1);

/// A trigger a cache's notifications come from: `(table, trigger)`.
pub type Trigger = (&'static str, &'static str);

/// Each trigger's version (`None`: missing or disabled): its row and its function's row in the
/// catalog, whose `xmin` changes with every change to them. `O` fires in ordinary sessions and
/// `A` always; `D` is disabled and `R` fires only for replication.
const VERSIONS: &str = "
    SELECT t.tbl || '.' || t.trg,
           (SELECT g.oid::text || '/' || g.xmin::text || '/' || p.xmin::text
              FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
             WHERE g.tgrelid = to_regclass(t.tbl) AND g.tgname = t.trg
               AND g.tgenabled IN ('O', 'A'))
      FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(tbl, trg, n)
     ORDER BY t.n";

/// The triggers of one notification session, as they were when it started.
pub(crate) struct Triggers {
    tables: Vec<&'static str>,
    names: Vec<&'static str>,
    versions: Vec<Option<String>>,
    statement: tokio_postgres::Statement,
}

impl Triggers {
    /// The triggers named by each subscription; an error if one is missing or disabled.
    pub(crate) async fn firing(
        client: &tokio_postgres::Client,
        subscribed: impl Iterator<Item = &'static [Trigger]>,
    ) -> anyhow::Result<Self> {
        let (tables, names) = subscribed.flatten().copied().unzip();
        let statement = client.prepare(VERSIONS).await?;
        let mut triggers = Self {
            tables,
            names,
            versions: Vec::new(),
            statement,
        };
        triggers.versions = triggers.read(client).await?;
        Ok(triggers)
    }

    /// An error if a trigger is missing, disabled, or changed since [`Triggers::firing`].
    pub(crate) async fn unchanged(&self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        let now = self.read(client).await?;
        let changed: Vec<String> = (0..now.len())
            .filter(|&i| now[i] != self.versions[i])
            .map(|i| format!("{}.{}", self.tables[i], self.names[i]))
            .collect();
        if !changed.is_empty() {
            anyhow::bail!(
                "triggers changed while listening (altered, or their function replaced): {}; emptying the caches",
                changed.join(", ")
            );
        }
        Ok(())
    }

    async fn read(&self, client: &tokio_postgres::Client) -> anyhow::Result<Vec<Option<String>>> {
        if self.tables.is_empty() {
            return Ok(Vec::new());
        }
        let rows = client
            .query(&self.statement, &[&self.tables, &self.names])
            .await?;
        let missing: Vec<String> = rows
            .iter()
            .filter(|r| r.get::<_, Option<String>>(1).is_none())
            .map(|r| r.get(0))
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "triggers missing or disabled, so changes would not be heard: {} (run the migrations, or ALTER TABLE .. ENABLE TRIGGER)",
                missing.join(", ")
            );
        }
        Ok(rows.iter().map(|r| r.get(1)).collect())
    }
}
