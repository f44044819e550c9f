//! The database roles of production in tests: every test database is also open to an app role
//! that may only read and write its tables (no DDL), granted with `deploy/database-roles.sql`,
//! the file the runbook tells operators to run. Services under test connect as that role.

/// The role services under test connect as.
pub const APP_ROLE: &str = "vbase_app";
/// Its password (for a `DATABASE_URL` server that does not trust local connections).
const APP_PASSWORD: &str = "vbase_app_test";

/// `deploy/database-roles.sql`, the grants of one service's app role.
const GRANTS: &str = include_str!("../../../deploy/database-roles.sql");

/// Quotes a PostgreSQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `deploy/database-roles.sql` with its psql variables filled in: the grants that let `app` read
/// and write the tables `owner` creates in `schema`, and nothing else.
pub fn role_grants(owner: &str, app: &str, schema: &str) -> String {
    GRANTS
        .replace(":\"owner\"", &ident(owner))
        .replace(":\"app\"", &ident(app))
        .replace(":\"schema\"", &ident(schema))
}

/// Creates the login role `name` with `password` unless it exists (several test processes may
/// share a server).
pub fn create_role_sql(name: &str, password: &str) -> String {
    format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{n}') THEN
             CREATE ROLE {i} LOGIN PASSWORD '{p}';
           END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$",
        n = name.replace('\'', "''"),
        i = ident(name),
        p = password.replace('\'', "''"),
    )
}

/// The statement that creates [`APP_ROLE`].
pub(crate) fn create_app_role() -> String {
    create_role_sql(APP_ROLE, APP_PASSWORD)
}

/// `url` with its user (and password) replaced by `user` and `password`.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_start = match (rest.find('@'), rest.find('/')) {
        (Some(at), Some(slash)) if at < slash => at + 1,
        (Some(at), None) => at + 1,
        _ => 0,
    };
    format!(
        "{}{user}:{password}@{}",
        &url[..scheme_end],
        &rest[host_start..]
    )
}

/// `url` (a test database's) as [`APP_ROLE`] connects to it.
pub fn app_role_url(url: &str) -> String {
    with_user(url, APP_ROLE, APP_PASSWORD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_change_user() {
        assert_eq!(
            with_user("postgres://postgres@127.0.0.1:5/db?x=1", "a", "p"),
            "postgres://a:p@127.0.0.1:5/db?x=1"
        );
        assert_eq!(
            with_user("postgres://u:secret@h/db", "a", "p"),
            "postgres://a:p@h/db"
        );
        assert_eq!(
            with_user("postgres://h:5/db", "a", "p"),
            "postgres://a:p@h:5/db"
        );
    }

    #[test]
    fn grants_fill_in_every_variable() {
        let sql = role_grants("o", "a\"b", "s");
        assert!(!sql.contains(":\""), "{sql}");
        assert!(sql.contains("TO \"a\"\"b\""), "{sql}");
        assert!(sql.contains("FOR ROLE \"o\" IN SCHEMA \"s\""), "{sql}");
    }
}
