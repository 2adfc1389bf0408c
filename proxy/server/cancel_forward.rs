//! Forwarding one `CancelRequest` to a PostgreSQL server, as the postmaster handles
//! one: the request goes out on a fresh connection, and we wait until the server closes
//! that connection, which it does only after it has signalled the backend. The client's
//! own cancel connection is closed after that, so a client that waits for the close
//! before sending its next statement (asyncpg, libpq's `PQcancelBlocking`) can never
//! have that statement cancelled instead. Every step is bounded: a server that does not
//! answer costs at most `CONNECT_TIMEOUT + CLOSE_TIMEOUT`.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pool::{BackendKey, ServerStream};

/// Longest wait for the server to accept the cancel connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the server to close it after the request was written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the cancel for `key` to `address` (`host:port` or a socket path) and waits (bounded) for the server to act.
/// Failures are logged; the client learns nothing either way, as with PostgreSQL.
pub(super) async fn forward(address: &str, key: BackendKey) {
    let mut request = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut request);
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, ServerStream::connect(address))
        .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(server = %address, error = %e, "could not forward cancel request");
            return;
        }
        Err(_) => {
            tracing::warn!(server = %address, "could not forward cancel request: connect timed out");
            return;
        }
    };
    let sent_and_closed = async {
        stream.write_all(&request).await?;
        // The server sends nothing on a cancel connection; read until it closes.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, sent_and_closed).await {
        Ok(Ok(())) => {}
        // A reset after the request was written still means the server is done with it.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => {
            tracing::warn!(server = %address, error = %e, "could not forward cancel request")
        }
        Err(_) => tracing::warn!(
            server = %address,
            "server did not close the cancel connection in time; closing the client's anyway"
        ),
    }
}
