//! A replica's cache of a short list every member pages through (a workspace's channels), kept
//! whole per workspace so that any page is cut from memory without a round trip.
//!
//! Coherent as the access cache is (`crates/coherent-cache`): a trigger notifies the workspace
//! id of every changed row in the writing transaction, the replica that wrote forgets the
//! workspace before answering, and an entry is served only while the notification connection
//! is heard. It never decides access: the caller's access is checked before a page is cut. A
//! list longer than [`MOST_LISTED`] is remembered as too long, and its pages are read from the
//! database.

use std::sync::Arc;
use uuid::Uuid;

/// The longest list kept whole; longer ones are paged from the database.
pub const MOST_LISTED: usize = 256;

/// A row of a cached list.
pub trait Listed {
    /// The bytes it holds on the heap.
    fn heap_bytes(&self) -> usize;
}

/// A workspace's list as cached.
#[derive(Debug)]
pub enum Listing<T> {
    /// Every row, in the order pages are cut (their cursor's order).
    Whole(Vec<T>),
    /// More than [`MOST_LISTED`] rows: pages come from the database.
    TooLong,
}

/// The replica's cache of [`Listing`]s by workspace id.
pub type ListingCache<T> = coherent_cache::Coherent<Uuid, Arc<Listing<T>>>;

/// A listing cache of at most `bytes` (0: off).
pub fn listing_cache<T: Listed + Clone>(bytes: u64) -> ListingCache<T> {
    ListingCache::new(bytes, |_, listing| {
        let rows = match listing.as_ref() {
            Listing::Whole(rows) => rows
                .iter()
                .map(|r| std::mem::size_of::<T>() + r.heap_bytes())
                .sum(),
            Listing::TooLong => 0,
        };
        (std::mem::size_of::<(Uuid, Arc<Listing<T>>)>() + 64 + rows) as u64
    })
}

/// Applies one notification: the id of a workspace whose rows changed, or `*` (everything).
pub fn apply_notification<T: Clone>(cache: &ListingCache<T>, payload: &str) {
    match payload.parse::<Uuid>() {
        Ok(ws) => cache.invalidate(&ws),
        Err(_) => cache.clear(),
    }
}

impl<T: Clone> Listing<T> {
    /// The listing of `rows`, read in cursor order with a limit of [`MOST_LISTED`] + 1.
    pub fn of(mut rows: Vec<T>) -> Self {
        if rows.len() > MOST_LISTED {
            Listing::TooLong
        } else {
            // Its weight counts the rows, not the spare room of the read.
            rows.shrink_to_fit();
            Listing::Whole(rows)
        }
    }

    /// At most `limit` rows whose key (`key`, the cursor's order) follows `after` (from the
    /// first when `None`), as the database would page them; `None` for a list too long.
    pub fn after<K: Ord>(
        &self,
        after: Option<K>,
        key: impl Fn(&T) -> K,
        limit: usize,
    ) -> Option<Vec<T>> {
        let Listing::Whole(rows) = self else {
            return None;
        };
        let from = after.map_or(0, |a| rows.partition_point(|r| key(r) <= a));
        Some(rows[from..].iter().take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_strictly() {
        let l = Listing::of(vec![1, 2, 2, 3, 5]);
        assert_eq!(l.after(None, |r| *r, 2), Some(vec![1, 2]));
        assert_eq!(l.after(Some(2), |r| *r, 10), Some(vec![3, 5]));
        assert_eq!(l.after(Some(4), |r| *r, 10), Some(vec![5]));
        assert_eq!(l.after(Some(5), |r| *r, 10), Some(vec![]));
    }

    #[test]
    fn a_list_beyond_the_most_listed_is_not_kept() {
        assert!(
            Listing::of(vec![0u8; MOST_LISTED])
                .after(None, |r| *r, 1)
                .is_some()
        );
        assert!(
            Listing::of(vec![0u8; MOST_LISTED + 1])
                .after(None, |r| *r, 1)
                .is_none()
        );
    }
}
