//! Whether Clerk has a membership now, asked on its own (a listing can be out of date by the
//! time a run acts on it).

use super::RunError;
use super::ctx::Ctx;
use crate::clerk::Membership;
use crate::clerk_api::{ClerkBackend, ListQuery, Start, fetch_one, list_page};

/// Whether Clerk lists `user` among the members of `org` now; with `membership`, by that
/// membership id only (the user may have been removed and invited again). The organization is
/// asked first (`GET /organizations/{org}`, whose 404 `resource_not_found` the spec
/// documents): a deleted organization has no members. Then
/// `GET /organizations/{org}/memberships?user_id=` (the route that documents that filter, and
/// no 404); any refusal there stops the run. An item that does not parse, or whose user is
/// unknown, counts as the membership: on a doubt nothing is deleted, and a deletion here is
/// not taken for Clerk's.
pub(super) async fn in_clerk<C: ClerkBackend>(
    ctx: &Ctx<'_, C>,
    org: &str,
    user: &str,
    membership: Option<&str>,
) -> Result<bool, RunError> {
    let org_path = format!("/organizations/{org}");
    if fetch_one::<serde_json::Value>(ctx.clerk, &org_path)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    let path = format!("{org_path}/memberships");
    let filter = [("user_id", user.to_owned())];
    let mut offset = 0;
    loop {
        let q = ListQuery {
            limit: ctx.plan.page_size,
            start: Start::Offset(offset),
            oldest_first: false,
            filter: &filter,
        };
        let page = list_page::<Membership>(ctx.clerk, &path, &q)
            .await
            .map_err(|e| RunError::Clerk(e.on_list()))?;
        let member = page.items.iter().any(|m| match m {
            Err(_) => true,
            Ok(m) => {
                m.organization.id == org
                    && m.user_id().ok().is_none_or(|u| u == user)
                    && membership.is_none_or(|id| m.id == id)
            }
        });
        if member {
            return Ok(true);
        }
        if page.last {
            return Ok(false);
        }
        offset += page.items.len();
    }
}
