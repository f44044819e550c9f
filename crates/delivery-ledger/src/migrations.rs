//! The ledger's tables (`migrations/` of this crate), applied by each service's migrate step
//! together with the service's own migrations: [`with_ledger`] is the set a service embeds.
//!
//! A database migrated by service migrations that created these tables themselves keeps them:
//! the ledger's migration creates only what is missing, with the same definitions.

use diesel::migration::{Migration, MigrationSource, Result};
use diesel::pg::Pg;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// The ledger's own migrations.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Two migration sets applied as one, in the order of their versions. Two migrations of the
/// same version are refused (diesel would run only one of them).
#[derive(Debug, Clone, Copy)]
pub struct Chained<A, B>(pub A, pub B);

/// A service's migrations with the ledger's.
pub type WithLedger = Chained<EmbeddedMigrations, EmbeddedMigrations>;

/// `service`'s migrations with the ledger's.
pub const fn with_ledger(service: EmbeddedMigrations) -> WithLedger {
    Chained(service, MIGRATIONS)
}

impl<A: MigrationSource<Pg>, B: MigrationSource<Pg>> MigrationSource<Pg> for Chained<A, B> {
    fn migrations(&self) -> Result<Vec<Box<dyn Migration<Pg>>>> {
        let mut all = self.0.migrations()?;
        all.extend(self.1.migrations()?);
        let mut versions: Vec<String> =
            all.iter().map(|m| m.name().version().to_string()).collect();
        versions.sort_unstable();
        if let Some(w) = versions.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two migrations have the version {}", w[0]).into());
        }
        Ok(all)
    }
}
