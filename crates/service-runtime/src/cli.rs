//! The command line every service shares: `<binary> [serve [--migrate]] | migrate`.

use crate::db::DatabaseArgs;
use clap::{Args, FromArgMatches};

/// What to do.
#[derive(Debug)]
pub enum Command<C> {
    /// Serve gRPC with configuration `C` (the default when no subcommand is given).
    Serve(Box<C>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
}

/// Checks of a configuration that its parser cannot make (ranges, settings that depend on each
/// other).
pub trait CheckConfig {
    /// What is wrong, in one line naming the setting.
    fn check(&self) -> Result<(), String>;
}

/// Parses the command line and environment; on a configuration error prints one line naming
/// the variable and exits with status 2.
pub fn parse<C: Args + FromArgMatches + CheckConfig>(
    binary: &'static str,
    about: &'static str,
) -> Command<C> {
    let cmd = clap::Command::new(binary)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .subcommand(C::augment_args(
            clap::Command::new("serve").about("Serve gRPC (the default)"),
        ))
        .subcommand(DatabaseArgs::augment_args(
            clap::Command::new("migrate").about("Apply database migrations and exit"),
        ));
    let argv: Vec<String> = std::env::args().collect();
    let os_argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    let cmd = crate::secret_files::from_environment(cmd, &os_argv).unwrap_or_else(|problem| {
        eprintln!("{binary}: configuration error: {problem}");
        std::process::exit(2);
    });
    let matches = cmd.clone().try_get_matches_from(&argv).and_then(|m| {
        if m.subcommand().is_some() {
            Ok(m)
        } else {
            cmd.clone()
                .try_get_matches_from([argv[0].as_str(), "serve"])
        }
    });
    let result = matches.and_then(|m| match m.subcommand() {
        Some(("migrate", sub)) => DatabaseArgs::from_arg_matches(sub).map(Command::Migrate),
        Some((_, sub)) => C::from_arg_matches(sub).map(|c| Command::Serve(Box::new(c))),
        None => unreachable!("serve is the default"),
    });
    let command = result.unwrap_or_else(|e| exit_on_config_error(binary, e));
    let checked = match &command {
        Command::Serve(config) => config.check(),
        Command::Migrate(db) => db.check(),
    };
    if let Err(problem) = checked {
        eprintln!("{binary}: configuration error: {problem}");
        std::process::exit(2);
    }
    command
}

/// Prints a configuration error as one line naming the variable, then exits with status 2
/// (help and version requests print as usual and exit 0).
pub fn exit_on_config_error(binary: &str, e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let detail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    eprintln!("{binary}: configuration error: {}", detail.join(" "));
    std::process::exit(2);
}
