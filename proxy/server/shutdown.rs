//! Graceful shutdown: the one signal every part of the proxy observes while the process
//! stops. `main` moves it through its phases (SIGTERM → `NotReady` → `Draining` →
//! `Closing`); `/readyz`, the accept loop and each session only watch it. No lock is
//! held across an await: the phase is a `tokio::sync::watch` channel (read with
//! `borrow`, awaited with `wait_for`) for the few long-lived waiters, and an atomic
//! with one `AtomicWaker` per session (`SessionShutdown`) for the sessions. A session
//! looks at the shutdown on every pump poll, several times per transaction, so that
//! look takes no lock and no locked instruction: atomic loads, and a waker registration
//! only when the task or the phase changed since the last one (`RegisteredFor`). Only
//! entering a phase walks the sessions (under the registry's lock) to wake them.
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

use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::sync::watch;

use crate::runtime::Runtime;

/// Where the process is in its shutdown; ordered, it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Running,
    NotReady,
    Draining,
    Closing,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Running,
            1 => Phase::NotReady,
            2 => Phase::Draining,
            _ => Phase::Closing,
        }
    }
}

/// The shared shutdown signal (one per `Runtime`).
#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    /// The phase again (sessions read it without a lock), and the sessions to wake.
    sessions: Arc<SessionRegistry>,
}

/// The phase as sessions read it, and the sessions to wake when it moves.
#[derive(Debug, Default)]
struct SessionRegistry {
    phase: AtomicU8,
    waiting: Mutex<Slab<Weak<SessionShutdown>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
            sessions: Arc::default(),
        }
    }
}

/// One session's view of the shutdown: the shared phase, and the waker of the task
/// that serves the session (registered on each look, woken when the phase moves).
#[derive(Debug)]
pub struct SessionShutdown {
    registry: Arc<SessionRegistry>,
    waker: AtomicWaker,
    registered: RegisteredFor,
    slot: usize,
}

/// Which waker `SessionShutdown::waker` holds (its data and vtable pointers, as
/// `Waker::will_wake` compares them) and the phase read just before it was registered.
/// The phase only moves forward and only a move wakes (and so takes) the waker: while
/// the phase is still the one read then, that waker is still registered, and a poll by
/// the same task need not register again. `AtomicWaker::register` costs two locked
/// instructions, a plain load of these none.
#[derive(Debug, Default)]
struct RegisteredFor {
    data: AtomicPtr<()>,
    vtable: AtomicPtr<RawWakerVTable>,
    /// The phase + 1; 0 before the first registration.
    phase: AtomicU8,
}

impl RegisteredFor {
    fn holds(&self, waker: &Waker, phase: u8) -> bool {
        self.phase.load(Ordering::Relaxed) == phase + 1
            && std::ptr::eq(self.data.load(Ordering::Relaxed), waker.data())
            && std::ptr::eq(self.vtable.load(Ordering::Relaxed), waker.vtable())
    }

    fn remember(&self, waker: &Waker, phase: u8) {
        self.data.store(waker.data().cast_mut(), Ordering::Relaxed);
        self.vtable.store(
            (waker.vtable() as *const RawWakerVTable).cast_mut(),
            Ordering::Relaxed,
        );
        self.phase.store(phase + 1, Ordering::Relaxed);
    }
}

impl SessionShutdown {
    /// Whether the shutdown has reached `phase` (the session acts on `Draining` and
    /// `Closing`).
    pub fn has_reached(&self, phase: Phase) -> bool {
        Phase::from_u8(self.registry.phase.load(Ordering::Acquire)) >= phase
    }

    /// Ready once the shutdown has reached `phase`; until then the task of `cx` is
    /// woken when the phase moves. Registering before looking means a phase entered in
    /// between is seen now or wakes the task.
    /// One task polls a session's shutdown at a time (the session's own).
    pub fn poll_reached(&self, cx: &mut Context<'_>, phase: Phase) -> Poll<()> {
        let before = self.registry.phase.load(Ordering::Acquire);
        if !self.registered.holds(cx.waker(), before) {
            self.waker.register(cx.waker());
            self.registered.remember(cx.waker(), before);
        }
        if self.has_reached(phase) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the shutdown has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        std::future::poll_fn(|cx| self.poll_reached(cx, phase)).await
    }
}

impl Drop for SessionShutdown {
    fn drop(&mut self) {
        let mut waiting = self
            .registry
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiting.try_remove(self.slot);
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
        let registry = &self.sessions;
        let before = registry.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if phase as u8 > before && phase >= Phase::Draining {
            // Woken outside the lock: the last reference to a session may be dropped
            // here, and its `Drop` takes the lock.
            let sessions: Vec<Arc<SessionShutdown>> = {
                let waiting = registry.waiting.lock().unwrap_or_else(|e| e.into_inner());
                waiting.iter().filter_map(|(_, s)| s.upgrade()).collect()
            };
            for session in sessions {
                session.waker.wake();
            }
        }
    }

    /// What a new session waits on.
    pub fn session(&self) -> Arc<SessionShutdown> {
        let registry = self.sessions.clone();
        let mut waiting = registry.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let entry = waiting.vacant_entry();
        let slot = entry.key();
        let session = Arc::new(SessionShutdown {
            registry: registry.clone(),
            waker: AtomicWaker::new(),
            registered: RegisteredFor::default(),
            slot,
        });
        entry.insert(Arc::downgrade(&session));
        drop(waiting);
        session
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

    /// Counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(Default::default()));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_session_polled_again_without_registering_is_still_woken_by_each_phase() {
        let shutdown = Shutdown::default();
        let session = shutdown.session();
        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(session.poll_reached(&mut cx, Phase::Closing).is_pending());
        }
        shutdown.enter(Phase::Draining);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "woken by draining");
        // The wake took the waker: the next poll, in a new phase, registers again.
        for _ in 0..3 {
            assert!(session.poll_reached(&mut cx, Phase::Closing).is_pending());
        }
        shutdown.enter(Phase::Closing);
        assert_eq!(woken.0.load(Ordering::SeqCst), 2, "woken by closing");
        assert!(session.poll_reached(&mut cx, Phase::Closing).is_ready());
    }

    #[test]
    fn another_task_polling_a_session_takes_its_wakes() {
        let shutdown = Shutdown::default();
        let session = shutdown.session();
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        assert!(session
            .poll_reached(&mut Context::from_waker(&first_waker), Phase::Draining)
            .is_pending());
        assert!(session
            .poll_reached(&mut Context::from_waker(&second_waker), Phase::Draining)
            .is_pending());
        shutdown.enter(Phase::Draining);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
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
