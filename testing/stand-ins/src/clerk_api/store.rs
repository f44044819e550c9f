//! The stand-in's resources, kept in list order (`created_at`, then id) and found by id, with
//! the memberships also found by organization and by user: a page costs its size, not the
//! collection's, so the stand-in answers at once at any size.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A position in list order.
pub type Key = (i64, String);

/// Resources in list order.
#[derive(Default)]
pub struct Ordered {
    by_order: BTreeMap<Key, Value>,
    order_of: HashMap<String, Key>,
    /// The keys in order, rebuilt on the first read after a change (offset pages index it).
    keys: Option<Vec<Key>>,
}

impl Ordered {
    /// Adds or replaces `v` (by its `id`).
    pub fn put(&mut self, v: Value) -> Key {
        let id = id_of(&v);
        self.remove(&id);
        let key = (v["created_at"].as_i64().unwrap_or_default(), id.clone());
        self.order_of.insert(id, key.clone());
        self.by_order.insert(key.clone(), v);
        self.keys = None;
        key
    }

    /// Removes the resource `id`; returns it.
    pub fn remove(&mut self, id: &str) -> Option<Value> {
        let key = self.order_of.remove(id)?;
        self.keys = None;
        self.by_order.remove(&key)
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.order_of.get(id).and_then(|k| self.by_order.get(k))
    }

    pub fn by_key(&self, key: &Key) -> Option<&Value> {
        self.by_order.get(key)
    }

    /// The position of `id` (`None` once removed: Clerk deletes users for good).
    pub fn position(&self, id: &str) -> Option<&Key> {
        self.order_of.get(id)
    }

    /// Every key in order.
    pub fn keys(&mut self) -> &[Key] {
        self.keys
            .get_or_insert_with(|| self.by_order.keys().cloned().collect())
    }

    /// Up to `limit` resources after `key`, oldest first.
    pub fn after(&self, key: &Key, limit: usize) -> Vec<Value> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.by_order
            .range((Excluded(key.clone()), Unbounded))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Up to `limit` resources before `key`, newest first.
    pub fn before(&self, key: &Key, limit: usize) -> Vec<Value> {
        self.by_order
            .range(..key.clone())
            .rev()
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Memberships, also by organization and by user.
#[derive(Default)]
pub struct Memberships {
    pub all: Ordered,
    by_org: HashMap<String, BTreeSet<Key>>,
    by_user: HashMap<String, BTreeSet<Key>>,
}

fn org_of(m: &Value) -> String {
    m["organization"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn user_of(m: &Value) -> Option<String> {
    m["public_user_data"]["user_id"].as_str().map(str::to_owned)
}

impl Memberships {
    pub fn put(&mut self, m: Value) {
        self.remove(&id_of(&m));
        let (org, user) = (org_of(&m), user_of(&m));
        let key = self.all.put(m);
        self.by_org.entry(org).or_default().insert(key.clone());
        if let Some(user) = user {
            self.by_user.entry(user).or_default().insert(key);
        }
    }

    pub fn remove(&mut self, id: &str) {
        let Some(key) = self.all.position(id).cloned() else {
            return;
        };
        let Some(m) = self.all.remove(id) else { return };
        if let Some(set) = self.by_org.get_mut(&org_of(&m)) {
            set.remove(&key);
        }
        if let Some(set) = user_of(&m).and_then(|u| self.by_user.get_mut(&u)) {
            set.remove(&key);
        }
    }

    /// The keys of the memberships of `org`, in order.
    pub fn of_org(&self, org: &str) -> Vec<Key> {
        self.by_org
            .get(org)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys of the memberships of `user`, in order.
    pub fn of_user(&self, user: &str) -> Vec<Key> {
        self.by_user
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}
