//! Which organization roles administer a workspace and edit its rooms.

use crate::domain::roles::Roles;
use crate::model::Role;

/// Clerk's keys of the roles that administer (its Creator role by default) and edit rooms.
const DEFAULT_ADMIN_ROLES: &str = "org:admin";
/// The admin role and Clerk's Default role for new members.
const DEFAULT_EDITOR_ROLES: &str = "org:admin,org:member";

/// What each organization role may do. Clerk lets an instance give its Creator and Default
/// roles to custom roles and delete `org:admin` and `org:member`: name those roles here.
#[derive(Debug, Clone, clap::Args)]
pub struct RoleArgs {
    /// Comma-separated organization roles that administer a workspace (at least one): they
    /// rename and delete channels and rooms and delete or cancel others' messages, items and
    /// meetings. Include the instance's Creator role; `admin` reads as `org:admin`.
    #[arg(long, env = "ORG_ADMIN_ROLES", default_value = DEFAULT_ADMIN_ROLES)]
    pub org_admin_roles: String,
    /// Comma-separated organization roles that edit Liveblocks rooms (`room:write`), as every
    /// admin role does; any other role reads them and shows its presence. Include the
    /// instance's Default role for new members.
    #[arg(long, env = "ORG_EDITOR_ROLES", default_value = DEFAULT_EDITOR_ROLES)]
    pub org_editor_roles: String,
}

impl Default for RoleArgs {
    fn default() -> Self {
        Self {
            org_admin_roles: DEFAULT_ADMIN_ROLES.to_owned(),
            org_editor_roles: DEFAULT_EDITOR_ROLES.to_owned(),
        }
    }
}

impl RoleArgs {
    /// The roles, or what is wrong with them (naming the setting).
    pub fn roles(&self) -> Result<Roles, String> {
        let admins = role_keys("ORG_ADMIN_ROLES", &self.org_admin_roles)?;
        if admins.is_empty() {
            return Err(
                "ORG_ADMIN_ROLES must name at least one role: the instance's Creator role (org:admin unless changed in Clerk)"
                    .to_owned(),
            );
        }
        let editors = role_keys("ORG_EDITOR_ROLES", &self.org_editor_roles)?;
        Ok(Roles::new(admins, editors))
    }
}

/// The comma-separated role keys of setting `var`, each checked and normalised.
fn role_keys(var: &str, list: &str) -> Result<Vec<Role>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| Role::key(k).map_err(|e| format!("{var}: {}", e.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn role_settings_are_normalised_and_a_bad_one_names_its_variable() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            roles: RoleArgs,
        }
        let roles = |args: &[&str]| {
            let argv = std::iter::once("x").chain(args.iter().copied());
            Cli::try_parse_from(argv).unwrap().roles.roles()
        };
        assert_eq!(roles(&[]).unwrap(), Roles::default());
        let renamed = roles(&[
            "--org-admin-roles",
            "owner",
            "--org-editor-roles",
            " org:owner, editor,",
        ])
        .unwrap();
        assert!(renamed.administers("org:owner") && !renamed.administers("org:admin"));
        assert!(renamed.edits_rooms("org:editor") && !renamed.edits_rooms("org:member"));
        for (bad, var) in [
            (&["--org-admin-roles", ""][..], "ORG_ADMIN_ROLES"),
            (&["--org-admin-roles", " , "], "ORG_ADMIN_ROLES"),
            (&["--org-admin-roles", "org:Owner"], "ORG_ADMIN_ROLES"),
            (
                &["--org-editor-roles", "org:editor,org:a-b"],
                "ORG_EDITOR_ROLES",
            ),
        ] {
            let err = roles(bad).unwrap_err();
            assert!(err.starts_with(var), "{bad:?}: {err}");
        }
    }
}
