//! Graceful shutdown: the one signal every part of the proxy observes while the process
//! stops. `main` moves it through its phases (SIGTERM → `NotReady` → `Draining` →
//! `Closing`); `/readyz`, the accept loop and each session only watch it. No lock is
//! held across an await: the phase is a `tokio::sync::watch` channel (read with
//! `borrow`, awaited with `wait_for`), and each session waits on a child token of its
//! own (`SessionShutdown`), so the hot path never polls a waiter list that every
//! session shares (only after draining began does a session wait on the shared
//! `Closing` token).
//!
//! What each phase means:
//! - `NotReady`: `/readyz` answers 503 "shutting down"; everything else still works
//!   (new clients are accepted), so a load balancer can notice first
//!   (`proxy.shutdown_readyz_delay_ms`).
//! - `Draining`: the listener is closed (new connections are refused); a client idle
//!   between transactions gets FATAL 57P01 and is closed; a client inside a
//!   transaction, an extended-protocol batch or a COPY finishes it and gets 57P01 at its
//!   next idle `ReadyForQuery`.
//! - `Closing`: `proxy.shutdown_timeout_ms` passed: every client left gets 57P01 now;
//!   an unfinished transaction's server connection is closed, so PostgreSQL rolls it back.

use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// Where the process is in its shutdown; ordered, it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    NotReady,
    Draining,
    Closing,
}

/// The shared shutdown signal (one per `Runtime`).
#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    /// Cancelled on `Draining` and on `Closing`; sessions hold child tokens of
    /// `draining` and clones of `closing`.
    draining: CancellationToken,
    closing: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
        }
    }
}

/// One session's view of the shutdown: a child token of its own for `Draining`, and
/// the shared `Closing` token, waited on only once draining has begun (`Closing`
/// always comes after `Draining`). One child token per session, not two: each is a
/// node of the token tree (issue 13: RSS per idle client).
#[derive(Debug)]
pub struct SessionShutdown {
    draining: CancellationToken,
    closing: CancellationToken,
}

impl SessionShutdown {
    /// Whether the shutdown has reached `phase`: `Closing`, else `Draining` (the
    /// phases a session acts on).
    pub fn has_reached(&self, phase: Phase) -> bool {
        match phase {
            Phase::Closing => self.closing.is_cancelled(),
            _ => self.draining.is_cancelled(),
        }
    }

    /// Waits until the shutdown has reached `phase`: `Closing`, else `Draining`.
    pub async fn reached(&self, phase: Phase) {
        self.draining.cancelled().await;
        if phase == Phase::Closing {
            self.closing.cancelled().await;
        }
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `phase` (never back).
    pub fn enter(&self, phase: Phase) {
        self.phase.send_if_modified(|current| {
            if phase > *current {
                *current = phase;
                true
            } else {
                false
            }
        });
        if phase >= Phase::Draining {
            self.draining.cancel();
        }
        if phase >= Phase::Closing {
            self.closing.cancel();
        }
    }

    /// What a new session waits on.
    pub fn session(&self) -> Arc<SessionShutdown> {
        Arc::new(SessionShutdown {
            draining: self.draining.child_token(),
            closing: self.closing.clone(),
        })
    }

    /// Waits until the shutdown has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// A receiver for a session to select on without borrowing the runtime.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}

/// Runs a graceful shutdown to its end (see the module doc): returns once every client
/// has left or been told 57P01 and the idle server connections were closed with
/// `Terminate`. The caller then exits.
pub async fn run(runtime: &Runtime) {
    let proxy = runtime.config().proxy.clone();
    runtime.shutdown.enter(Phase::NotReady);
    tracing::info!(
        clients = runtime.client_count(),
        readyz_delay_ms = proxy.shutdown_readyz_delay_ms,
        timeout_ms = proxy.shutdown_timeout_ms,
        "shutting down: /readyz now answers 503"
    );
    tokio::time::sleep(Duration::from_millis(proxy.shutdown_readyz_delay_ms)).await;
    runtime.shutdown.enter(Phase::Draining);
    let timeout = Duration::from_millis(proxy.shutdown_timeout_ms);
    if !clients_gone(runtime, Instant::now() + timeout).await {
        tracing::warn!(
            clients = runtime.client_count(),
            "shutdown timeout passed: closing the clients still in a transaction"
        );
        runtime.shutdown.enter(Phase::Closing);
        // Telling them takes a write each; a client that does not read is not waited for.
        clients_gone(runtime, Instant::now() + CLOSING_GRACE).await;
    }
    runtime.pools.terminate_all().await;
    tracing::info!(clients = runtime.client_count(), "shutdown complete");
}

/// How long clients told 57P01 at the timeout get to be written to and closed.
const CLOSING_GRACE: Duration = Duration::from_secs(3);

/// Polls until no client is connected, or `deadline`; whether they are all gone.
async fn clients_gone(runtime: &Runtime, deadline: Instant) -> bool {
    loop {
        if runtime.client_count() == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits on `rx` until the shutdown has reached `phase` (forever if the sender is gone).
pub async fn reached(mut rx: watch::Receiver<Phase>, phase: Phase) {
    if rx.wait_for(|p| *p >= phase).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_wake_waiters() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let waiter = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { shutdown.reached(Phase::Draining).await })
        };
        shutdown.enter(Phase::NotReady);
        assert_eq!(shutdown.phase(), Phase::NotReady);
        shutdown.enter(Phase::Draining);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        shutdown.enter(Phase::Running);
        assert_eq!(shutdown.phase(), Phase::Draining);
    }

    #[tokio::test]
    async fn sessions_see_draining_then_closing() {
        let shutdown = Shutdown::default();
        let session = shutdown.session();
        assert!(!session.has_reached(Phase::Draining));
        shutdown.enter(Phase::Draining);
        assert!(session.has_reached(Phase::Draining));
        assert!(!session.has_reached(Phase::Closing));
        let late = shutdown.session();
        assert!(
            late.has_reached(Phase::Draining),
            "a session made while draining"
        );
        shutdown.enter(Phase::Closing);
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            session.reached(Phase::Closing),
        )
        .await
        .expect("woken");
    }
}
