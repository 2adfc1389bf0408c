//! pgwarden: a PostgreSQL wire-protocol proxy.
//!
//! Rooms (see DESIGN.md): `config` (typed configuration), `protocol` (bytes and
//! messages, no I/O), `pool` (server connections), `server` (clients and sessions),
//! `runtime` (shared process state). The binary in `main.rs` wires them together.

pub mod cluster;
pub mod config;
pub mod demo;
pub mod pool;
pub mod protocol;
pub mod route;
pub mod runtime;
pub mod server;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use runtime::Runtime;

/// A running proxy: its listen address and the task serving it.
pub struct RunningProxy {
    pub runtime: Arc<Runtime>,
    pub address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// Binds `proxy.listen` (port 0 picks a free port) and starts accepting clients.
    pub async fn start(config: config::Config) -> std::io::Result<RunningProxy> {
        let listener = TcpListener::bind(&config.proxy.listen).await?;
        let address = listener.local_addr()?;
        let runtime = Runtime::new(config, None).map_err(std::io::Error::other)?;
        let serving = runtime.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server::serve(serving, listener).await {
                tracing::error!(error = %e, "listener failed");
            }
        });
        Ok(RunningProxy {
            runtime,
            address,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
