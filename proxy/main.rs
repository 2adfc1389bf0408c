//! The `pgwarden` binary: run the proxy, check a configuration, or run the demo.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL proxy: pooling, read/write routing, read-your-writes"
)]
struct Cli {
    /// Configuration file (TOML). Without one: built-in defaults plus PGWARDEN_* variables.
    #[arg(long, short, env = "PGWARDEN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Start a throwaway primary + replica, run a workload through pgwarden, report, clean up.
    Demo,
    /// Load and validate a configuration file, print the effective configuration, exit.
    CheckConfig {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::CheckConfig { file } => check_config(file.or(cli.config)),
        Command::Demo => demo(),
    }
}

fn demo() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(pgwarden::demo::run())?;
    Ok(())
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = pgwarden::config::load(file.as_deref())?;
    // Passwords, tokens and URL passwords masked, as SHOW CONFIG shows them.
    println!(
        "{}",
        pgwarden::config::redacted_toml(&config).context("printing configuration")?
    );
    eprintln!("configuration OK");
    Ok(())
}

fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = pgwarden::config::load(file.as_deref())?;
    if config.databases.is_empty() {
        anyhow::bail!(
            "no databases configured: set PGWARDEN_PRIMARY_URL=postgres://USER:PASS@HOST:PORT/DB or add [databases.NAME] to the config file"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let databases = config.databases.len();
        let proxy = pgwarden::RunningProxy::start_from(
            config,
            pgwarden::runtime::ConfigSource::FileAndEnvironment(file),
        )
        .await?;
        tracing::info!(listen = %proxy.address, http = %proxy.http_address, databases, "pgwarden listening");
        spawn_reload_on_sighup(proxy.runtime.clone());
        shutdown_signal().await;
        tracing::info!("shutting down");
        Ok(())
    })
}

fn spawn_reload_on_sighup(state: std::sync::Arc<pgwarden::Runtime>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = state.reload() {
                tracing::error!(error = %e, "reload failed; keeping the previous configuration");
            }
        }
    });
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
