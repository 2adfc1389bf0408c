//! TCP keepalive for client and server sockets (`proxy.tcp_keepalive_*`): a peer that
//! vanished without a FIN or RST (a crashed host, a dropped NAT entry) is noticed by the
//! kernel and its connection reset, instead of holding a client slot or a server
//! connection forever. Best effort: a socket option the OS refuses is logged, not fatal.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;

/// The keepalive settings of `config`, or `None` when `tcp_keepalive_idle_secs = 0`.
pub fn settings(config: &ProxyConfig) -> Option<TcpKeepalive> {
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

/// Turns keepalive on for `stream` as `config` says (nothing when it is off).
pub fn apply(stream: &TcpStream, config: &ProxyConfig) {
    if let Some(keepalive) = settings(config) {
        apply_settings(stream, &keepalive);
    }
}

pub fn apply_settings(stream: &TcpStream, keepalive: &TcpKeepalive) {
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(keepalive) {
        tracing::warn!(error = %e, "could not set TCP keepalive");
    }
}
