//! Which organization roles may do what in a workspace. Clerk lets an instance give the
//! Creator role (an organization's first member's) and the Default role (new members') to
//! custom roles and then delete `org:admin` and `org:member`, so the names come from the
//! settings (`ORG_ADMIN_ROLES`, `ORG_EDITOR_ROLES`), not from constants.

use crate::model::Role;
use std::sync::Arc;

/// The roles that administer a workspace and those that edit its Liveblocks rooms. Cheap to
/// clone: every caller of a call carries the service's one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Arc<Sets>);

#[derive(Debug, PartialEq, Eq)]
struct Sets {
    /// Rename and delete channels and rooms; delete or cancel others' rows.
    admins: Vec<Role>,
    /// Write in rooms (`room:write`); holds every admin role too.
    editors: Vec<Role>,
}

impl Roles {
    /// `admins` administer and edit; `editors` edit. Each role is a normalised key.
    pub fn new(admins: Vec<Role>, editors: Vec<Role>) -> Self {
        let mut all = admins.clone();
        all.extend(editors);
        all.sort();
        all.dedup();
        Self(Arc::new(Sets {
            admins,
            editors: all,
        }))
    }

    /// Whether a member with the (normalised) role `role` administers the workspace.
    pub fn administers(&self, role: &str) -> bool {
        self.0.admins.iter().any(|r| r.as_str() == role)
    }

    /// Whether a member with the (normalised) role `role` edits the workspace's rooms.
    pub fn edits_rooms(&self, role: &str) -> bool {
        self.0.editors.iter().any(|r| r.as_str() == role)
    }

    /// The admin roles, for a refusal's message: `org:admin` or `org:owner, org:admin`.
    pub fn admin_names(&self) -> String {
        let names: Vec<&str> = self.0.admins.iter().map(Role::as_str).collect();
        names.join(", ")
    }
}

/// Clerk's default roles: `org:admin` administers, `org:admin` and `org:member` edit.
impl Default for Roles {
    fn default() -> Self {
        let role = |key| Role::key(key).expect("a well-formed role key");
        Self::new(vec![role("org:admin")], vec![role("org:member")])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Role> {
        list.iter().map(|k| Role::key(k).unwrap()).collect()
    }

    #[test]
    fn clerks_defaults() {
        let roles = Roles::default();
        assert!(roles.administers("org:admin"));
        assert!(!roles.administers("org:member"));
        assert!(roles.edits_rooms("org:admin") && roles.edits_rooms("org:member"));
        assert!(!roles.edits_rooms("org:billing"));
        assert!(!roles.edits_rooms(""));
    }

    #[test]
    fn renamed_creator_and_default_roles_replace_admin_and_member() {
        let roles = Roles::new(keys(&["org:owner"]), keys(&["org:editor"]));
        assert!(roles.administers("org:owner"));
        assert!(!roles.administers("org:admin"));
        assert!(roles.edits_rooms("org:owner"), "an admin role edits too");
        assert!(roles.edits_rooms("org:editor"));
        assert!(!roles.edits_rooms("org:member") && !roles.edits_rooms("org:admin"));
        assert_eq!(roles.admin_names(), "org:owner");
    }
}
