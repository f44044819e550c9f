//! Secrets from files: every secret setting `X` (a setting whose value `--help` hides: database
//! URLs, webhook secrets, API keys) may instead be given as `X_FILE`, the path of a file that
//! holds it, as Kubernetes mounts a Secret. The file is read once at start-up and its value
//! trimmed (a trailing newline is common). Setting both `X` (or its flag) and `X_FILE`, an
//! unreadable file or an empty one is a configuration error naming the variable.
//!
//! It works on the clap command before parsing, so each binary gets it for all its secret
//! settings, in every subcommand, without code per setting.

use std::collections::HashMap;
use std::ffi::OsString;

/// The suffix of the variable that names a secret's file.
pub const FILE_SUFFIX: &str = "_FILE";

/// `cmd` with each secret setting `X` also read from the file named by `X_FILE` (from `env`)
/// and documented in its help; `argv` is checked for a flag given too. Errors name the
/// variable.
pub fn with_secret_files(
    cmd: clap::Command,
    argv: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<clap::Command, String> {
    let mut read = HashMap::new();
    let mut problem = None;
    let cmd = apply(cmd, argv, env, &mut read, &mut problem);
    match problem {
        Some(p) => Err(p),
        None => Ok(cmd),
    }
}

/// Like [`with_secret_files`] with the process's environment.
pub fn from_environment(cmd: clap::Command, argv: &[OsString]) -> Result<clap::Command, String> {
    with_secret_files(cmd, argv, &|name| std::env::var_os(name))
}

fn apply(
    mut cmd: clap::Command,
    argv: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
    read: &mut HashMap<String, String>,
    problem: &mut Option<String>,
) -> clap::Command {
    let secrets: Vec<(clap::Id, String, Option<String>)> = cmd
        .get_arguments()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(|a| {
            let name = a.get_env()?.to_str()?.to_owned();
            Some((a.get_id().clone(), name, a.get_long().map(str::to_owned)))
        })
        .collect();
    for (id, name, long) in secrets {
        let file_var = format!("{name}{FILE_SUFFIX}");
        let value = match env(&file_var).filter(|v| !v.is_empty()) {
            None => None,
            Some(path) => {
                match secret_value(&name, &file_var, &path, long.as_deref(), argv, env, read) {
                    Ok(v) => Some(v),
                    Err(p) => {
                        problem.get_or_insert(p);
                        None
                    }
                }
            }
        };
        cmd = cmd.mut_arg(id, |arg| {
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            let arg = arg.long_help(format!(
                "{help}\n\n[env: {file_var}, the path of a file that holds it, instead]"
            ));
            match value {
                Some(v) => arg
                    .required(false)
                    .default_value(v)
                    .hide_default_value(true),
                None => arg,
            }
        });
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |sub| apply(sub, argv, env, read, problem));
    }
    cmd
}

/// The trimmed contents of the file `path` that `file_var` names for the setting `name`.
fn secret_value(
    name: &str,
    file_var: &str,
    path: &OsString,
    long: Option<&str>,
    argv: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
    read: &mut HashMap<String, String>,
) -> Result<String, String> {
    let flag_given = long.is_some_and(|l| {
        let flag = format!("--{l}");
        argv.iter().filter_map(|a| a.to_str()).any(|a| {
            a == flag
                || a.strip_prefix(flag.as_str())
                    .is_some_and(|r| r.starts_with('='))
        })
    });
    if env(name).is_some_and(|v| !v.is_empty()) || flag_given {
        return Err(format!(
            "{name} and {file_var} are both set: give the secret one way"
        ));
    }
    if let Some(v) = read.get(file_var) {
        return Ok(v.clone());
    }
    let shown = std::path::Path::new(path).display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{file_var} ({shown}) cannot be read: {e}"))?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(format!("{file_var} ({shown}) is empty"));
    }
    read.insert(file_var.to_owned(), value.clone());
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{FromArgMatches, Parser, Subcommand};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        Serve {
            #[arg(long, env = "TEST_DATABASE_URL", hide_env_values = true)]
            database_url: crate::Secret,
            #[arg(long, env = "TEST_API_KEY", hide_env_values = true)]
            api_key: Option<crate::Secret>,
            #[arg(long, env = "TEST_PLAIN", default_value = "plain")]
            plain: String,
        },
    }

    /// Parses `args` with the variables `vars` (and no others).
    fn parse(args: &[&str], vars: &[(&str, &str)]) -> Result<(String, Option<String>), String> {
        use clap::CommandFactory;
        let argv: Vec<OsString> = std::iter::once("bin")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let cmd = with_secret_files(Cli::command(), &argv, &|n| vars.get(n).cloned())?;
        // clap reads `env` itself: give it only what these cases set.
        let cmd = cmd.mut_subcommand("serve", |s| {
            let mut s = s;
            for id in ["database_url", "api_key", "plain"] {
                s = s.mut_arg(id, |a| {
                    let env = a
                        .get_env()
                        .and_then(|e| e.to_str())
                        .unwrap_or("")
                        .to_owned();
                    match vars.get(&env) {
                        Some(v) => a
                            .required(false)
                            .default_value(v.to_str().unwrap().to_owned()),
                        None => a,
                    }
                    .env(None::<&str>)
                });
            }
            s
        });
        let m = cmd.try_get_matches_from(&argv).map_err(|e| e.to_string())?;
        let Command::Serve {
            database_url,
            api_key,
            ..
        } = Cli::from_arg_matches(&m)
            .map_err(|e| e.to_string())?
            .command;
        Ok((
            database_url.expose().to_owned(),
            api_key.map(|k| k.expose().to_owned()),
        ))
    }

    #[test]
    fn a_file_names_the_secret_and_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "  postgres://app:hunter2@db/vbase\n\n").unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk_live_1\n").unwrap();
        let (u, k) = (url.to_str().unwrap(), key.to_str().unwrap());
        assert_eq!(
            parse(
                &["serve"],
                &[("TEST_DATABASE_URL_FILE", u), ("TEST_API_KEY_FILE", k)]
            ),
            Ok((
                "postgres://app:hunter2@db/vbase".into(),
                Some("sk_live_1".into())
            ))
        );
        // An optional secret may stay unset; the plain value still comes from its variable.
        assert_eq!(
            parse(&["serve"], &[("TEST_DATABASE_URL_FILE", u)]),
            Ok(("postgres://app:hunter2@db/vbase".into(), None))
        );
        assert_eq!(
            parse(&["serve"], &[("TEST_DATABASE_URL", "postgres://direct")]),
            Ok(("postgres://direct".into(), None))
        );
    }

    #[test]
    fn both_ways_or_an_unreadable_or_empty_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://from-file").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let (u, e) = (url.to_str().unwrap(), empty.to_str().unwrap());
        let refused = |args: &[&str], vars: &[(&str, &str)], names: &[&str]| {
            let err = parse(args, vars).expect_err("refused");
            for n in names {
                assert!(err.contains(n), "{err} should name {n}");
            }
            assert!(!err.contains("from-file"), "the secret shows: {err}");
        };
        refused(
            &["serve"],
            &[
                ("TEST_DATABASE_URL", "postgres://x"),
                ("TEST_DATABASE_URL_FILE", u),
            ],
            &["TEST_DATABASE_URL", "TEST_DATABASE_URL_FILE", "both"],
        );
        refused(
            &["serve", "--database-url", "postgres://x"],
            &[("TEST_DATABASE_URL_FILE", u)],
            &["TEST_DATABASE_URL_FILE", "both"],
        );
        refused(
            &["serve", "--database-url=postgres://x"],
            &[("TEST_DATABASE_URL_FILE", u)],
            &["TEST_DATABASE_URL_FILE", "both"],
        );
        refused(
            &["serve"],
            &[("TEST_DATABASE_URL_FILE", "/nonexistent/vbase-secret")],
            &[
                "TEST_DATABASE_URL_FILE",
                "/nonexistent/vbase-secret",
                "cannot be read",
            ],
        );
        refused(
            &["serve"],
            &[("TEST_DATABASE_URL_FILE", e)],
            &["TEST_DATABASE_URL_FILE", "empty"],
        );
        // Plain settings have no _FILE: it is ignored, and the required secret is missing.
        assert!(parse(&["serve"], &[("TEST_PLAIN_FILE", u)]).is_err());
    }

    #[test]
    fn help_names_the_file_variable_of_each_secret_only() {
        use clap::CommandFactory;
        let cmd = with_secret_files(Cli::command(), &[], &|_| None).unwrap();
        let mut serve = cmd.find_subcommand("serve").unwrap().clone();
        let help = serve.render_long_help().to_string();
        assert!(help.contains("[env: TEST_DATABASE_URL_FILE,"), "{help}");
        assert!(help.contains("[env: TEST_API_KEY_FILE,"), "{help}");
        assert!(!help.contains("TEST_PLAIN_FILE"), "{help}");
    }
}
