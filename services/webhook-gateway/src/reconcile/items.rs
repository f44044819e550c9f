//! What a page's items become: the ones that parse, sorted by how each compares with what the
//! service holds into writes, counts, and the ones deleted here.

use super::RunError;
use super::summary::KindSummary;
use crate::clerk::Command;
use crate::clerk_api::{ClerkBackend, Unparsed};
use serde::de::DeserializeOwned;
use vbase_proto::identity::v1 as idp;

/// What an applied write counts as.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    pub(super) fn count(self, s: &mut KindSummary) {
        match self {
            Change::Created => s.created += 1,
            Change::Updated => s.updated += 1,
            Change::Deleted => s.deleted += 1,
        }
    }
}

/// A write to send: what it counts as, the resource id (for logs), the command.
pub(super) type Write = (Change, String, Command);

/// The items that parsed; the others are counted and logged by id.
pub(super) fn usable<T>(s: &mut KindSummary, page: Vec<Result<T, Unparsed>>) -> Vec<T> {
    page.into_iter()
        .filter_map(|item| match item {
            Ok(t) => Some(t),
            Err(u) => {
                s.refused += 1;
                tracing::warn!(kind = s.kind, id = ?u.id, reason = u.reason, "a listed resource does not parse");
                None
            }
        })
        .collect()
}

/// A page's items sorted by their comparison: the writes to send, and the items deleted here.
pub(super) struct Classified<'a, T> {
    pub(super) writes: Vec<Write>,
    /// Compared DELETED_HERE: to be asked of Clerk alone ([`super::deleted_here`]).
    pub(super) deleted_here: Vec<&'a T>,
}

/// Pairs each listed item with its comparison: missing or older ones become writes (their
/// commands made only then, with their event ids; `None`: no command can be made, counted
/// refused); the ones deleted here are set apart; the others are counted. A value this
/// gateway does not know (a newer service's) writes nothing: counted refused and logged.
pub(super) fn classify<'a, T>(
    s: &mut KindSummary,
    items: &'a [T],
    results: &[i32],
    to_write: impl Fn(&T) -> Option<(String, Command)>,
) -> Result<Classified<'a, T>, RunError> {
    use idp::Comparison as Cmp;
    if results.len() != items.len() {
        return Err(RunError::Services(format!(
            "a comparison answered {} results for {} items",
            results.len(),
            items.len()
        )));
    }
    let (mut writes, mut deleted_here) = (Vec::new(), Vec::new());
    for (item, r) in items.iter().zip(results) {
        // Both services' `Comparison` enums carry the same numbers.
        let change = match Cmp::try_from(*r) {
            Ok(Cmp::Missing) => Change::Created,
            Ok(Cmp::Older) => Change::Updated,
            Ok(Cmp::Same) => {
                s.unchanged += 1;
                continue;
            }
            Ok(Cmp::Newer) => {
                s.stale += 1;
                continue;
            }
            Ok(Cmp::DeletedHere) => {
                deleted_here.push(item);
                continue;
            }
            Ok(Cmp::Unspecified) | Err(_) => {
                s.refused += 1;
                tracing::warn!(
                    kind = s.kind,
                    comparison = r,
                    "a service answered a comparison this gateway does not know; nothing written"
                );
                continue;
            }
        };
        match to_write(item) {
            Some((id, cmd)) => writes.push((change, id, cmd)),
            None => s.refused += 1,
        }
    }
    Ok(Classified {
        writes,
        deleted_here,
    })
}

/// A single resource as a page of zero or one.
pub(super) async fn single<T: DeserializeOwned>(
    clerk: &impl ClerkBackend,
    s: &mut KindSummary,
    path: &str,
) -> Result<Vec<T>, RunError> {
    let found = crate::clerk_api::fetch_one::<T>(clerk, path).await?;
    let items = usable(s, found.into_iter().collect());
    s.listed += items.len() as u64;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only MISSING and OLDER write; DELETED_HERE is set apart; a value this gateway does not
    /// know (0, or a newer service's) writes nothing and is counted refused.
    #[test]
    fn each_comparison_is_counted_and_only_missing_or_older_write() {
        let items = [
            "missing", "older", "same", "newer", "deleted", "unset", "unknown",
        ];
        let mut s = KindSummary::default();
        let c = classify(&mut s, &items, &[1, 2, 3, 4, 5, 0, 9], |i| {
            Some((i.to_string(), Command::Ignored))
        })
        .unwrap();
        let written: Vec<_> = c.writes.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(written, ["missing", "older"]);
        assert_eq!(c.deleted_here, [&"deleted"]);
        assert_eq!((s.unchanged, s.stale, s.refused), (1, 1, 2));
        assert_eq!(
            s.deleted_here_live_in_clerk, 0,
            "counted once Clerk is asked"
        );
    }
}
