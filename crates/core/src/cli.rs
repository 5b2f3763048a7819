//! The command line every vap binary shares: `[--config PATH] [serve|migrate|check-config]`.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The default: run the service.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print it (secrets masked) and exit.
    CheckConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub config: Option<PathBuf>,
    pub command: Command,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("--config needs a path")]
    MissingPath,
    #[error("unknown argument '{0}'; usage: [--config PATH] [serve|migrate|check-config]")]
    Unknown(String),
}

impl Cli {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, CliError> {
        let mut cli = Cli { config: None, command: Command::Serve };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" | "-c" => cli.config = Some(args.next().ok_or(CliError::MissingPath)?.into()),
                s if s.starts_with("--config=") => cli.config = Some(s["--config=".len()..].into()),
                "serve" => cli.command = Command::Serve,
                "migrate" => cli.command = Command::Migrate,
                "check-config" => cli.command = Command::CheckConfig,
                other => return Err(CliError::Unknown(other.to_string())),
            }
        }
        Ok(cli)
    }
}

/// What a binary does before serving: parse the command line, load the configuration, set up
/// logging, and run the one-shot commands. Returns the settings when the binary should serve.
pub async fn prepare(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<crate::config::Settings>> {
    let cli = Cli::parse(args)?;
    let settings = crate::config::Settings::load(cli.config.as_deref())?;
    crate::lifecycle::init_logging(&settings.log);
    match cli.command {
        Command::Serve => Ok(Some(settings)),
        Command::Migrate => {
            let applied = crate::db::migrate::run_with(&settings.database).await?;
            println!("migrations applied: {applied:?}");
            Ok(None)
        }
        Command::CheckConfig => {
            // Secrets print as *** (see config::Secret).
            println!("{settings:#?}");
            Ok(None)
        }
    }
}

/// Applies migrations at start when configured. An unreachable database is not fatal here: the
/// service starts, reports not-ready, and another starter (or `migrate`) applies them.
pub async fn migrate_on_start(settings: &crate::config::Settings) -> Result<(), crate::db::DbError> {
    if !settings.database.migrate_on_start {
        return Ok(());
    }
    match crate::db::migrate::run_with(&settings.database).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "database unreachable at start; migrations not applied");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Ends a binary: one clean line on stderr and exit code 1 on error (never a backtrace dump).
pub fn exit_with(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
