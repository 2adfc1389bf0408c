//! The accept loop: one task per client connection (TCP, or the local socket of
//! `proxy.unix_socket_dir`), admission against `proxy.max_client_connections`, TCP
//! keepalive on accepted sockets, and the connection-level log lines. It stops (closing the listening socket, so new
//! connections are refused) when graceful shutdown starts draining.

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use super::handshake::open;
use super::login::log_in;
use super::session::Session;
use super::shutdown::Phase;
use super::stream::{ClientStream, Peer};
use super::{report, SessionError};
use crate::runtime::Runtime;

/// Binds `address` (`host:port`) for `key`. With `reuse_port` (`proxy.reuse_port`)
/// the socket is `SO_REUSEPORT`: a new pgwarden can bind the same port while the old
/// one still drains, and the kernel spreads new connections over both until the old
/// one closes its listener.
pub async fn bind(key: &str, address: &str, reuse_port: bool) -> std::io::Result<TcpListener> {
    let failed =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("binding {key} {address}: {e}"));
    if !reuse_port {
        return TcpListener::bind(address).await.map_err(failed);
    }
    let resolved = tokio::net::lookup_host(address)
        .await
        .map_err(failed)?
        .next()
        .ok_or_else(|| failed(std::io::Error::other("no address")))?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.set_reuseport(true).map_err(failed)?;
    socket.bind(resolved).map_err(failed)?;
    socket.listen(1024).map_err(failed)
}

/// Where clients connect.
pub enum ClientListener {
    Tcp(TcpListener),
    Local(UnixListener),
}

impl ClientListener {
    /// The next client, its socket set up (`TCP_NODELAY` and keepalive on TCP).
    async fn accept(&self, runtime: &Runtime) -> std::io::Result<(ClientStream, Peer)> {
        match self {
            ClientListener::Tcp(listener) => {
                let (tcp, peer) = listener.accept().await?;
                let _ = tcp.set_nodelay(true);
                super::keepalive::apply(&tcp, &runtime.config().proxy);
                Ok((ClientStream::Plain(tcp), Peer::Tcp(peer)))
            }
            ClientListener::Local(listener) => {
                let (unix, _) = listener.accept().await?;
                Ok((ClientStream::Local(unix), Peer::Local))
            }
        }
    }
}

/// Accepts clients until shutdown drains (the listener is dropped on return).
pub async fn serve(runtime: Arc<Runtime>, listener: ClientListener) -> std::io::Result<()> {
    let draining = super::shutdown::reached(runtime.shutdown.subscribe(), Phase::Draining);
    tokio::pin!(draining);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => {
                tracing::info!("shutting down: no longer accepting client connections");
                return Ok(());
            }
            accepted = listener.accept(&runtime) => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let runtime = runtime.clone();
        let task = async move {
            if let Err(e) = handle_client(runtime, stream).await {
                match e {
                    SessionError::ClientClosed | SessionError::ClientIo(_) => {
                        tracing::debug!(%peer, error = %e, "client connection ended")
                    }
                    _ => tracing::info!(%peer, error = %e, "client connection closed with error"),
                }
            }
        };
        // What every connected client costs before any buffer (issue 13: RSS per client).
        tracing::trace!(bytes = std::mem::size_of_val(&task), "client task");
        tokio::spawn(task);
    }
}

async fn handle_client(runtime: Arc<Runtime>, stream: ClientStream) -> Result<(), SessionError> {
    let slot = match runtime.admit_client() {
        Ok(slot) => slot,
        Err(e) => {
            let mut stream = stream;
            report(&mut stream, &e).await;
            return Err(e);
        }
    };
    // Boxed: an async fn's future is as large as its largest state, and every idle
    // client's task holds this one; the handshake, login and their error reports
    // (which hold the whole `Opened` connection state) live on the heap only as long
    // as they run (issue 13: RSS per idle client).
    // The session is made in a block whose value is awaited at once: `session` is
    // moved into `run`'s future, and a local still in scope at the await would keep a
    // place of its own in this task beside it.
    let identity;
    let result = {
        let session = match Box::pin(open_and_log_in(runtime.clone(), stream)).await {
            Ok(Some(session)) => session,
            Ok(None) => return Ok(()), // a cancel request or an admin console, handled
            Err(e) => return Err(e),
        };
        tracing::info!(
            user = %session.identity.user,
            database = %session.identity.database,
            peer = %session.identity.peer,
            application_name = %session.identity.application_name,
            tls = session.client.is_tls(),
            "client logged in"
        );
        identity = session.identity.clone();
        let run = session.run();
        tracing::trace!(
            session = std::mem::size_of::<Session>(),
            run = std::mem::size_of_val(&run),
            "session future"
        );
        run
    }
    .await;
    tracing::info!(user = %identity.user, database = %identity.database, peer = %identity.peer, "client disconnected");
    drop(slot);
    result
}

/// The handshake and login; `None` when the connection was a cancel request or an
/// admin console session, served here.
async fn open_and_log_in(
    runtime: Arc<Runtime>,
    stream: ClientStream,
) -> Result<Option<Session>, SessionError> {
    let Some(opened) = open(stream, &runtime).await? else {
        return Ok(None); // a cancel request, handled
    };
    if opened.params.get("database").map(String::as_str) == Some(crate::admin::console::DATABASE) {
        return crate::admin::serve_console(runtime.clone(), opened)
            .await
            .map(|()| None);
    }
    match log_in(runtime.clone(), opened).await {
        Ok(session) => Ok(Some(session)),
        Err((mut opened, e)) => {
            report(&mut opened.stream, &e).await;
            Err(e)
        }
    }
}
