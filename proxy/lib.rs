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
mod stream_enum;
pub mod tenant;

use std::sync::Arc;

pub use runtime::Runtime;

/// A running proxy: its listen addresses and the tasks serving them.
pub struct RunningProxy {
    pub runtime: Arc<Runtime>,
    pub address: std::net::SocketAddr,
    /// Where the dashboard, `/api/`, `/metrics` and the probes are served.
    pub http_address: std::net::SocketAddr,
    /// The Unix-domain socket clients may also connect to (`proxy.unix_socket_dir`);
    /// its file is removed when the proxy is dropped.
    pub local_socket: Option<server::LocalSocket>,
    task: tokio::task::JoinHandle<()>,
    local_task: Option<tokio::task::JoinHandle<()>>,
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
        let mut local_socket = match &config.proxy.unix_socket_dir {
            Some(directory) => Some(server::LocalSocket::bind(server::socket_path(
                directory,
                address.port(),
            ))?),
            None => None,
        };
        let runtime = Runtime::new(config, source).map_err(std::io::Error::other)?;
        let accept = |listener: server::ClientListener| {
            let serving = runtime.clone();
            tokio::spawn(async move {
                if let Err(e) = server::serve(serving, listener).await {
                    tracing::error!(error = %e, "listener failed");
                }
            })
        };
        let task = accept(server::ClientListener::Tcp(listener));
        let local_task = local_socket
            .as_mut()
            .and_then(server::LocalSocket::take_listener)
            .map(|listener| accept(server::ClientListener::Local(listener)));
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
            local_socket,
            task,
            local_task,
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
        if let Some(task) = &self.local_task {
            task.abort();
        }
        self.http_task.abort();
        self.advise_task.abort();
    }
}
