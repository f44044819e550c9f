//! Paging Clerk's lists as each endpoint documents it, oldest first, and the stretch of the
//! listing order (`created_at`, then id) each page covers: the services record what they hold
//! in a page's stretch that the page does not list as the run's deletion candidates.
//!
//! - `GET /users`: `starting_after` the previous page's last id, with `order_by=+created_at`
//!   (Clerk's own advice: a large `offset` gets slower and eventually times out). Clerk does
//!   not document its answer to a cursor whose user was deleted since the page was read: a
//!   refused cursor (400, 404 or 422) is tried again with the earlier ids of that page, newest
//!   first, at most [`MAX_CURSOR_RETRIES`] of them; items at or before the previous page's end
//!   are not listed twice.
//! - `GET /organizations`, `/organization_memberships`, `/organizations/{id}/memberships`:
//!   `limit`/`offset` with `order_by=+created_at` (no cursor there).
//! - `GET /users/{id}/organization_memberships` documents only `limit` and `offset`: every page
//!   is read (one user's memberships), then ordered here.
//!
//! Any failed request stops the listing: a listing that cannot be trusted deletes nothing.

use super::RunError;
use crate::clerk::{Membership, Organization, User};
use crate::clerk_api::{ApiError, ClerkBackend, ListPage, ListQuery, Start, Unparsed, list_page};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

/// The most items of a listing read whole before it is ordered ([`Listing::Collected`]).
pub const MAX_COLLECTED: usize = 20_000;

/// Earlier ids of the previous page tried as the cursor when Clerk refuses its last one.
pub const MAX_CURSOR_RETRIES: usize = 10;

/// A position in Clerk's listing order: `created_at` (ms), then id.
pub(super) type Position = (i64, String);

/// The stretch of the listing order a page covers: after `after` (`None`: from the start) up
/// to `through` inclusive (`None`: to the end).
#[derive(Debug, Clone, Default)]
pub(super) struct Stretch {
    pub(super) after: Option<Position>,
    pub(super) through: Option<Position>,
}

/// A listed resource's position in the listing order (`None`: Clerk did not say when it was
/// created).
pub(super) trait Positioned {
    fn position(&self) -> Option<Position>;
}

impl Positioned for User {
    fn position(&self) -> Option<Position> {
        self.created_at.map(|t| (t, self.id.clone()))
    }
}

impl Positioned for Organization {
    fn position(&self) -> Option<Position> {
        self.created_at.map(|t| (t, self.id.clone()))
    }
}

impl Positioned for Membership {
    fn position(&self) -> Option<Position> {
        Some((self.created_at, self.id.clone()))
    }
}

/// How an endpoint is paged.
#[derive(Debug, Clone, Copy)]
pub(super) enum Listing<'a> {
    /// `starting_after` the last id, oldest first (`GET /users`).
    Cursor(&'a str),
    /// `offset`, oldest first.
    Offset(&'a str),
    /// `offset` with no order: read whole (at most [`MAX_COLLECTED`]), then ordered here.
    Collected(&'a str),
}

type PageOf<T> = Result<(Vec<Result<T, Unparsed>>, Stretch), RunError>;

/// The furthest position among the items that have one.
fn furthest<T: Positioned>(items: &[Result<T, Unparsed>]) -> Option<Position> {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok().and_then(Positioned::position))
        .max()
}

/// Reads `listing` page by page into `tx`, each page with its stretch; the last page's stretch
/// runs to the end. A failure is sent as the last message.
pub(super) async fn pages<T, C>(clerk: &C, listing: Listing<'_>, size: usize, tx: Sender<PageOf<T>>)
where
    T: DeserializeOwned + Positioned + Send + 'static,
    C: ClerkBackend,
{
    if let Listing::Collected(path) = listing {
        match collected::<T>(clerk, path, size).await {
            Ok(chunks) => {
                for chunk in chunks {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
        return;
    }
    let (mut offset, mut cursor, mut after): (usize, Option<String>, Option<Position>) =
        (0, None, None);
    let mut earlier = Vec::new();
    loop {
        let fetched = match listing {
            Listing::Cursor(path) => {
                after_cursor::<T>(clerk, path, size, cursor.as_deref(), &earlier).await
            }
            Listing::Offset(path) | Listing::Collected(path) => {
                let q = ListQuery {
                    limit: size,
                    start: Start::Offset(offset),
                    oldest_first: true,
                    filter: &[],
                };
                list_page::<T>(clerk, path, &q).await
            }
        };
        let path = match listing {
            Listing::Cursor(p) | Listing::Offset(p) | Listing::Collected(p) => p,
        };
        let mut page = match fetched {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(RunError::Clerk(e.on_list()))).await;
                return;
            }
        };
        offset += page.items.len();
        if let Listing::Offset(_) = listing
            && let Err(e) = in_creation_order(path, &page.items, after.as_ref())
        {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let mut moved_on = true;
        if let (Listing::Cursor(_), Some(end)) = (listing, &after) {
            let position = |i: &Result<T, Unparsed>| i.as_ref().ok().and_then(Positioned::position);
            moved_on = page
                .items
                .iter()
                .any(|i| position(i).is_some_and(|p| p > *end));
            // A page after an earlier cursor may repeat what the previous page listed.
            page.items.retain(|i| position(i).is_none_or(|p| p > *end));
        }
        if !page.last && !moved_on {
            // A full page with no user after the previous one's (those it holds without a
            // position included): the cursor was not applied, and every further page would be
            // the same one.
            let e = format!(
                "a full page of {path} after the previous page's last user held none after it: \
                 Clerk did not apply the cursor, and the listing cannot go on"
            );
            let _ = tx.send(Err(RunError::Listing(e))).await;
            return;
        }
        earlier = std::mem::take(&mut page.earlier_ids);
        if matches!(listing, Listing::Cursor(_)) && !page.last && page.last_id.is_none() {
            let e =
                format!("the last item of a page of {path} has no id: the listing cannot go on");
            let _ = tx.send(Err(RunError::Listing(e))).await;
            return;
        }
        cursor = page.last_id;
        // The page covers the listing after the previous page's last position up to its own
        // last one; the last page covers the rest.
        let through = if page.last {
            None
        } else {
            furthest(&page.items).or_else(|| after.clone())
        };
        let stretch = Stretch {
            after: after.clone(),
            through: through.clone(),
        };
        if tx.send(Ok((page.items, stretch))).await.is_err() || page.last {
            return;
        }
        after = through;
    }
}

/// Checks that an offset page continues the listing in creation order (`created_at` never
/// earlier than the item before, the previous page's included). Each page's stretch, and so
/// which held resources become deletion candidates, rests on that order; Clerk's specification
/// names user fields as the sort keys of membership lists, so a `created_at` that turned out to
/// be the user's would be caught here, and the listing, which then cannot be trusted, deletes
/// nothing. Changes between pages (an item created now comes last; one deleted moves later
/// ones up) keep the order; only an item created back-dated (an import) can break it.
fn in_creation_order<T: Positioned>(
    path: &str,
    items: &[Result<T, Unparsed>],
    after: Option<&Position>,
) -> Result<(), RunError> {
    let mut last = after.map(|(t, _)| *t);
    for (t, id) in items
        .iter()
        .filter_map(|i| i.as_ref().ok().and_then(Positioned::position))
    {
        if let Some(before) = last.filter(|before| t < *before) {
            return Err(RunError::Listing(format!(
                "{path} did not answer in creation order (`order_by=+created_at`): {id}, created at \
                 {t} ms, came after an item created at {before} ms; a listing in another order \
                 cannot tell what Clerk no longer has, so nothing is deleted"
            )));
        }
        last = Some(t);
    }
    Ok(())
}

/// Whether Clerk refused a list request's parameters (a cursor naming a user it no longer has,
/// say), rather than failing to answer.
fn refused_parameters(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Refused {
            status: 400 | 404 | 422,
            ..
        } | ApiError::NotFound { .. }
    )
}

/// The page of `path` after `cursor` (`None`: the first). When Clerk refuses the cursor, the
/// page after each of `earlier` (the previous page's other ids) in turn, newest first, at most
/// [`MAX_CURSOR_RETRIES`]; then the first refusal.
async fn after_cursor<T: DeserializeOwned>(
    clerk: &impl ClerkBackend,
    path: &str,
    size: usize,
    cursor: Option<&str>,
    earlier: &[String],
) -> Result<ListPage<T>, ApiError> {
    let page = |cursor| {
        let q = ListQuery {
            limit: size,
            start: Start::After(cursor),
            oldest_first: true,
            filter: &[],
        };
        async move { list_page::<T>(clerk, path, &q).await }
    };
    let refused = match page(cursor).await {
        Err(e) if cursor.is_some() && refused_parameters(&e) => e,
        answered => return answered,
    };
    for (n, id) in earlier.iter().rev().take(MAX_CURSOR_RETRIES).enumerate() {
        tracing::warn!(
            path,
            retry = n + 1,
            "Clerk refused the listing's cursor (its user deleted since?): paging from an earlier item of the previous page"
        );
        match page(Some(id)).await {
            Err(e) if refused_parameters(&e) => continue,
            answered => return answered,
        }
    }
    let tried = earlier.len().min(MAX_CURSOR_RETRIES);
    Err(match refused {
        ApiError::Refused { status, path, body } => ApiError::Refused {
            status,
            path,
            body: format!(
                "{body} (the cursor and {tried} earlier ids of the previous page were refused; the next run pages again)"
            ),
        },
        e => e,
    })
}

/// Every page of an unordered listing, ordered by position and cut into pages with their
/// stretches (items without a position go first).
async fn collected<T: DeserializeOwned + Positioned>(
    clerk: &impl ClerkBackend,
    path: &str,
    size: usize,
) -> Result<Vec<(Vec<Result<T, Unparsed>>, Stretch)>, RunError> {
    let mut all = Vec::new();
    loop {
        let q = ListQuery {
            limit: size,
            start: Start::Offset(all.len()),
            oldest_first: false,
            filter: &[],
        };
        let page = list_page::<T>(clerk, path, &q)
            .await
            .map_err(|e| RunError::Clerk(e.on_list()))?;
        all.extend(page.items);
        if all.len() > MAX_COLLECTED {
            return Err(RunError::Listing(format!(
                "{path} lists more than {MAX_COLLECTED} items: run without --user"
            )));
        }
        if page.last {
            break;
        }
    }
    all.sort_by_cached_key(|i| i.as_ref().ok().and_then(Positioned::position));
    let mut chunks = Vec::new();
    let mut after = None;
    let mut rest = all.into_iter().peekable();
    while rest.peek().is_some() || chunks.is_empty() {
        let chunk: Vec<_> = rest.by_ref().take(size).collect();
        let last = rest.peek().is_none();
        let through = if last {
            None
        } else {
            furthest(&chunk).or_else(|| after.clone())
        };
        chunks.push((
            chunk,
            Stretch {
                after: after.clone(),
                through: through.clone(),
            },
        ));
        after = through;
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item listed at `created_at` ms.
    struct At(i64, &'static str);

    impl Positioned for At {
        fn position(&self) -> Option<Position> {
            Some((self.0, self.1.to_owned()))
        }
    }

    /// The order is checked across page boundaries too: a page whose first item was created
    /// before the previous page's last is out of order, though in order within itself.
    #[test]
    fn an_item_older_than_the_previous_pages_last_is_out_of_order() {
        let page = [Ok(At(5, "user_b")), Ok(At(7, "user_c"))];
        let previous_last = (6, "user_a".to_owned());
        assert!(in_creation_order("/users", &page, None).is_ok());
        assert!(in_creation_order("/users", &page, Some(&(5, "user_a".to_owned()))).is_ok());
        let Err(RunError::Listing(why)) = in_creation_order("/users", &page, Some(&previous_last))
        else {
            panic!("accepted an item older than the previous page's last");
        };
        assert!(
            why.contains("user_b") && why.contains("created at 6 ms"),
            "{why}"
        );
    }
}
