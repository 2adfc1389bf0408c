//! Dead-peer detection for client and server sockets: TCP keepalive
//! (`proxy.tcp_keepalive_*`) and `TCP_USER_TIMEOUT` (`proxy.tcp_user_timeout_ms`). A
//! peer that vanished without a FIN or RST (a crashed host, a dropped NAT entry) is
//! noticed by the kernel and its connection reset, instead of holding a client slot or
//! a server connection forever. Keepalive covers an idle connection; the user timeout
//! covers one with bytes sent and never acknowledged, where Linux does not send
//! keepalive probes and would retransmit for about 15 minutes (`tcp_retries2`). Best
//! effort: a socket option the OS refuses is logged, not fatal.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;

/// What to set on a socket.
#[derive(Debug, Clone, Default)]
pub struct DeadPeer {
    keepalive: Option<TcpKeepalive>,
    user_timeout: Option<Duration>,
}

/// The settings of `config`.
pub fn settings(config: &ProxyConfig) -> DeadPeer {
    DeadPeer {
        keepalive: keepalive(config),
        user_timeout: (config.tcp_user_timeout_ms > 0)
            .then(|| Duration::from_millis(config.tcp_user_timeout_ms)),
    }
}

/// The keepalive settings of `config`, or `None` when `tcp_keepalive_idle_secs = 0`.
fn keepalive(config: &ProxyConfig) -> Option<TcpKeepalive> {
    if config.tcp_keepalive_idle_secs == 0 {
        return None;
    }
    let mut keepalive =
        TcpKeepalive::new().with_time(Duration::from_secs(config.tcp_keepalive_idle_secs));
    if config.tcp_keepalive_interval_secs > 0 {
        keepalive =
            keepalive.with_interval(Duration::from_secs(config.tcp_keepalive_interval_secs));
    }
    if config.tcp_keepalive_count > 0 {
        keepalive = keepalive.with_retries(config.tcp_keepalive_count);
    }
    Some(keepalive)
}

/// Sets what `config` says on `stream`.
pub fn apply(stream: &TcpStream, config: &ProxyConfig) {
    settings(config).apply(stream);
}

impl DeadPeer {
    pub fn apply(&self, stream: &TcpStream) {
        let socket = SockRef::from(stream);
        if let Some(keepalive) = &self.keepalive {
            if let Err(e) = socket.set_tcp_keepalive(keepalive) {
                tracing::warn!(error = %e, "could not set TCP keepalive");
            }
        }
        if let Some(timeout) = self.user_timeout {
            if let Err(e) = socket.set_tcp_user_timeout(Some(timeout)) {
                tracing::warn!(error = %e, "could not set TCP_USER_TIMEOUT");
            }
        }
    }
}
