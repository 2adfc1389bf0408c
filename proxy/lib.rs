//! pgwarden: a PostgreSQL wire-protocol proxy.
//!
//! Rooms (see DESIGN.md): `config` (typed configuration), `protocol` (bytes and
//! messages, no I/O), `pool` (server connections), `server` (clients and sessions),
//! `scan` (the one pass over a statement's text that routing, pooling and statistics
//! share), `runtime` (shared process state). The binary in `main.rs` wires them together.

pub mod admin;
pub mod advise;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod pool;
pub mod protect;
pub mod protocol;
pub mod route;
pub mod runtime;
pub mod scan;
pub mod server;
pub mod stats;
pub mod tenant;

use std::sync::Arc;

pub use runtime::Runtime;

/// A running proxy: its listen addresses and the tasks serving them.
pub struct RunningProxy {
    pub runtime: Arc<Runtime>,
    pub address: std::net::SocketAddr,
    /// Where the dashboard, `/api/`, `/metrics` and the probes are served.
    pub http_address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    advise_task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// Binds `proxy.listen` and `proxy.http_listen` (port 0 picks a free port) and
    /// starts serving clients and HTTP.
    pub async fn start(config: config::Config) -> std::io::Result<RunningProxy> {
        Self::start_from(config, runtime::ConfigSource::Fixed).await
    }

    /// Like `start`, with the source a reload reads configuration from.
    pub async fn start_from(
        config: config::Config,
        source: runtime::ConfigSource,
    ) -> std::io::Result<RunningProxy> {
        let reuse = config.proxy.reuse_port;
        let listener = server::bind("proxy.listen", &config.proxy.listen, reuse).await?;
        let address = listener.local_addr()?;
        let http_listener =
            server::bind("proxy.http_listen", &config.proxy.http_listen, reuse).await?;
        let http_address = http_listener.local_addr()?;
        let runtime = Runtime::new(config, source).map_err(std::io::Error::other)?;
        let serving = runtime.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server::serve(serving, listener).await {
                tracing::error!(error = %e, "listener failed");
            }
        });
        let http_runtime = runtime.clone();
        let http_task = tokio::spawn(async move {
            if let Err(e) = admin::serve_http(http_runtime, http_listener).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
        let advise_task = advise::spawn(Arc::downgrade(&runtime));
        Ok(RunningProxy {
            runtime,
            advise_task,
            address,
            http_address,
            task,
            http_task,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.http_task.abort();
        self.advise_task.abort();
    }
}
