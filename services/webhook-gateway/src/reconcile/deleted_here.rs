//! Listed resources that are deleted here (compared DELETED_HERE). A deletion here is final
//! (Clerk never reuses ids), so nothing is written for them, and each is asked of Clerk alone:
//! gone there (404 `resource_not_found`) means Clerk deleted it after listing it and its
//! deletion reached us first, a race counted `stale`; still there means it was deleted here and
//! not in Clerk (a misdirected run, a bug, an operator's mistake: a user locked out, a
//! workspace's data gone). That is counted (`deleted_here_live_in_clerk`), logged with its ids
//! at error level, and fails the run ([`message`]). Reviving it is an operator's decision.

use super::RunError;
use super::summary::KindSummary;

/// Asks Clerk about each item deleted here (`live`: whether Clerk still has it; any answer
/// but 2xx or Clerk's own 404 stops the run) and counts it: stale when Clerk no longer has
/// it, `deleted_here_live_in_clerk` when it does. `id` names the item in the log (Clerk ids
/// only: never a name or an email).
pub(super) async fn confirm<T>(
    s: &mut KindSummary,
    items: Vec<&T>,
    id: impl Fn(&T) -> String,
    live: impl AsyncFn(&T) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    for item in items {
        if live(item).await? {
            s.deleted_here_live_in_clerk += 1;
            tracing::error!(
                kind = s.kind,
                id = id(item),
                "deleted here, but Clerk still has it: nothing written (see \"Deleted here, \
                 live in Clerk\" in deploy/README.md)"
            );
        } else {
            s.stale += 1;
        }
    }
    Ok(())
}

/// The run's line when any kind holds deleted what Clerk still has (`None` when none does).
pub(super) fn message(kinds: &[KindSummary]) -> Option<String> {
    let counts: Vec<String> = kinds
        .iter()
        .filter(|k| k.deleted_here_live_in_clerk > 0)
        .map(|k| format!("{} {}", k.kind, k.deleted_here_live_in_clerk))
        .collect();
    if counts.is_empty() {
        return None;
    }
    Some(format!(
        "deleted here but still live in Clerk: {} (each id is in the error log, \"deleted here, \
         but Clerk still has it\"); nothing was written for them and nothing revives them: find \
         out how each was deleted, see \"Deleted here, live in Clerk\" in deploy/README.md",
        counts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbase_proto::identity::v1::Comparison as I;
    use vbase_proto::workspace::v1::Comparison as W;

    /// The gateway reads both services' comparisons as one enum's numbers. A new value goes
    /// in both protos, here, and in `classify`.
    #[test]
    fn both_services_number_their_comparisons_alike() {
        let pairs = [
            (I::Unspecified, W::Unspecified),
            (I::Missing, W::Missing),
            (I::Older, W::Older),
            (I::Same, W::Same),
            (I::Newer, W::Newer),
            (I::DeletedHere, W::DeletedHere),
        ];
        for (i, w) in pairs {
            assert_eq!(i as i32, w as i32, "{i:?}");
        }
        assert!(I::try_from(6).is_err() && W::try_from(6).is_err());
    }

    #[test]
    fn the_line_names_each_kind_and_count_only_when_there_is_one() {
        let mut users = KindSummary {
            kind: "users".into(),
            ..KindSummary::default()
        };
        let orgs = KindSummary {
            kind: "organizations".into(),
            deleted_here_live_in_clerk: 2,
            ..KindSummary::default()
        };
        assert_eq!(message(std::slice::from_ref(&users)), None);
        users.deleted_here_live_in_clerk = 1;
        let line = message(&[users, orgs]).unwrap();
        assert!(
            line.contains("users 1, organizations 2") && line.contains("deploy/README.md"),
            "{line}"
        );
    }
}
