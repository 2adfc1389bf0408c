//! The client side of the proxy: accepting connections, the startup and
//! authentication exchange, and the per-client session that relays frames.
//!
//! This room talks to clients. It asks `pool` for server connections and uses
//! `protocol` for bytes; it never opens server sockets itself (cancel requests aside,
//! which PostgreSQL requires on a fresh connection).

pub(crate) mod auth;
pub(crate) mod auth_query;
mod cache_analysis;
mod cache_request;
mod cache_writes;
mod caching;
pub mod cancel;
mod cancel_forward;
mod client_messages;
pub mod credentials;
mod database_ddl;
mod error;
mod family_verdicts;
pub(crate) mod handshake;
pub mod keepalive;
mod listener;
mod local_socket;
mod login;
mod lost_server;
pub mod opaque_code;
mod pooled_state;
mod portal_steps;
mod protection;
mod proxy_settings;
mod pump;
mod query_scan;
mod raised_error;
mod random_seed;
mod read_buffers;
mod recent_texts;
mod responses;
mod retry_frames;
mod routing;
mod routing_class;
mod scram_server;
mod sequence_state;
mod server_lease;
mod server_messages;
mod session;
pub mod session_effects;
mod settings;
pub mod shutdown;
mod statements;
pub use statements::{
    registry_bytes as statement_registry_bytes, REGISTRY_MAX_BYTES as STATEMENT_REGISTRY_MAX_BYTES,
};
mod statistics;
pub mod stream;
mod streamed_frame;
mod tenancy;
mod tenant_change;
pub mod tls;

pub use error::SessionError;
pub use listener::{bind, serve, ClientListener};
pub use local_socket::{socket_path, LocalSocket};

use tokio::io::AsyncWriteExt;

/// Best-effort: tells the client why it is being refused, then closes the connection
/// properly (TLS close_notify, then FIN), as PostgreSQL does; a TLS stream that just
/// stops is an error to strict clients.
pub(crate) async fn report(stream: &mut stream::ClientStream, error: &SessionError) {
    let mut out = bytes::BytesMut::new();
    if let Some(fields) = error.to_error_fields() {
        fields.encode(&mut out);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        if !out.is_empty() {
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        }
        let _ = stream.shutdown().await;
    })
    .await;
}
