//! The `pgwarden` binary: run the proxy, check a configuration, or run the demo.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgwarden::config::SessionThreads;

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
    Demo {
        /// Keep the cluster and proxy running (and print the dashboard URL) until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Print the advisories (missing, unused and duplicate indexes, N+1 loops) of a running
    /// pgwarden, read from its HTTP API.
    Advise {
        /// The instance's HTTP address (default: proxy.http_listen of the configuration).
        #[arg(long)]
        url: Option<String>,
        /// Bearer token (default: admin.http_token of the configuration).
        #[arg(long, env = "PGWARDEN_ADMIN_HTTP_TOKEN")]
        token: Option<String>,
        /// Print the JSON as the API returns it.
        #[arg(long)]
        json: bool,
    },
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
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    match &cli.command {
        // The demo prints a report: the proxy's log goes to a file it names.
        Some(Command::Demo { .. }) => {
            let path =
                std::env::temp_dir().join(format!("pgwarden-demo-{}.log", std::process::id()));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating the demo log {}", path.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
            println!("(proxy log: {})", path.display());
        }
        Some(Command::Advise { .. }) => {}
        _ => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::CheckConfig { file } => check_config(file.or(cli.config)),
        Command::Demo { keep } => demo(keep),
        Command::Advise { url, token, json } => advise(cli.config, url, token, json),
    }
}

fn demo(keep: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(pgwarden::demo::run(keep))?;
    Ok(())
}

fn advise(
    file: Option<PathBuf>,
    url: Option<String>,
    token: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let config = pgwarden::config::load(file.as_deref())?;
    let url = url.unwrap_or_else(|| config.proxy.http_listen.clone());
    let token = token.or(config.admin.http_token.clone());
    let body = pgwarden::admin::api_client::get(&url, "/api/advisories", token.as_deref())
        .with_context(|| format!("reading the advisories of the pgwarden at {url}"))?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let advisories: Vec<pgwarden::advise::Advisory> =
        serde_json::from_str(&body).context("parsing /api/advisories")?;
    print!("{}", pgwarden::advise::render::text(&advisories));
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

/// The runtime sessions run on (`proxy.worker_threads`, resolved against this
/// machine's cores by `SessionThreads`): one thread is a current-thread runtime, which
/// skips work stealing's bookkeeping; otherwise tokio's multi-thread runtime.
fn session_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let (layout, cores) = SessionThreads::on_this_machine(worker_threads);
    tracing::info!(
        threads = layout.threads(),
        cores,
        worker_threads,
        "sessions run on {}",
        match layout {
            SessionThreads::One => "one thread (no work stealing)",
            SessionThreads::WorkStealing(_) => "a work-stealing runtime",
        }
    );
    let mut builder = match layout {
        SessionThreads::One => tokio::runtime::Builder::new_current_thread(),
        SessionThreads::WorkStealing(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    builder.enable_all().build()
}

fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = pgwarden::config::load(file.as_deref())?;
    if config.databases.is_empty() {
        anyhow::bail!(
            "no databases configured: set PGWARDEN_PRIMARY_URL=postgres://USER:PASS@HOST:PORT/DB or add [databases.NAME] to the config file"
        );
    }
    let runtime = session_runtime(config.proxy.worker_threads)?;
    let result = runtime.block_on(async move {
        let databases = config.databases.len();
        let proxy = pgwarden::RunningProxy::start_from(
            config,
            pgwarden::runtime::ConfigSource::FileAndEnvironment(file),
        )
        .await?;
        let local = proxy.local_socket.as_ref().map(|s| s.path.display().to_string());
        tracing::info!(listen = %proxy.address, http = %proxy.http_address, local = ?local, databases, "pgwarden listening");
        spawn_reload_on_sighup(proxy.runtime.clone());
        spawn_memory_trim(proxy.runtime.clone());
        shutdown_signal().await;
        tokio::select! {
            _ = pgwarden::server::shutdown::run(&proxy.runtime) => {}
            _ = shutdown_signal() => {
                tracing::warn!("second shutdown signal: exiting without waiting for clients");
                std::process::exit(1);
            }
        }
        drop(proxy);
        Ok(())
    });
    // Background tasks (lag monitors, advisors) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
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

/// Clients that leave free their memory, but glibc malloc keeps freed pages in its
/// arenas: after 10,000 idle clients came and went, the process stayed at the RSS it
/// had with them connected. When the client count, checked once a second, has fallen
/// by `TRIM_AFTER` since its highest point (recorded at every admission, so a burst
/// between two checks counts), the free pages are given back with `malloc_trim` on a
/// blocking thread (issue 13: RSS left after clients go). 200 clients are about
/// 800 KiB.
fn spawn_memory_trim(state: std::sync::Arc<pgwarden::Runtime>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        const TRIM_AFTER: usize = 200;
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Sessions are counted out before all their memory is freed: one more trim
        // three ticks after a trim gives back what the last leavers held.
        const FOLLOW_UP_TICKS: u32 = 3;
        let mut peak = 0;
        // Ticks until the follow-up trim; 0 when none is pending.
        let mut follow_up_in: u32 = 0;
        loop {
            ticker.tick().await;
            let clients = state.client_count();
            // The peak since the last tick, not a sample: 1,000 clients that log in
            // and leave between two ticks were never seen by a sample, and their
            // memory stayed (bench run of 2026-12-03 evening: 4.3 KiB each).
            // (With `clients` too: it was read first, and the peak, reset to the count
            // of its own moment, may race an admission by a hair.)
            peak = state.take_client_peak().max(peak).max(clients);
            let follow_up_due = follow_up_in == 1;
            follow_up_in = follow_up_in.saturating_sub(1);
            if peak - clients >= TRIM_AFTER {
                peak = clients;
                follow_up_in = FOLLOW_UP_TICKS;
            } else if !follow_up_due {
                continue;
            }
            // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = state;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
