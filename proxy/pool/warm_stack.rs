//! The server connections of one pool returned most recently, kept in front of bb8.
//!
//! bb8's checkout and return (its internal lock, the `is_valid` future, waking its
//! waiters, the large future around `get`) were about 6% of pgwarden's CPU on the plain
//! path (`docs/profile.md`). A returned connection is parked here instead, still checked
//! out as far as bb8 knows, and the next checkout takes it back with one uncontended
//! lock and the same cheap checks bb8's `is_valid` makes. bb8 keeps everything else:
//! opening connections, reaping them, lifetimes, and the line of clients waiting.
//!
//! What keeps bb8's view honest:
//! - A connection is parked only while no checkout waits inside bb8. A checkout
//!   announces itself in `in_bb8` before it looks here one last time; a return parks
//!   first and looks at `in_bb8` after, so one of the two always sees the other and no
//!   client waits in bb8 for a connection parked here.
//! - It stays parked at most `limit` (1 s, or less when `pool.health_check_idle_ms`
//!   is shorter). Older ones, broken ones and ones past `pool.max_lifetime_ms` go back
//!   to bb8, which checks, reaps or replaces them. A sweeper hands back what sat too
//!   long when no checkout came.
//! - [`WarmStack::drain`] hands every parked connection back (closing idle
//!   connections at shutdown or before `DROP DATABASE`).

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::ServerConnector;

/// A connection as bb8 lent it.
pub type Lent = bb8::PooledConnection<'static, ServerConnector>;

/// The longest a connection stays parked.
const MAX_PARK: Duration = Duration::from_secs(1);

pub struct WarmStack {
    parked: Mutex<Vec<Lent>>,
    /// Connections parked right now (read without the lock, for `SHOW POOLS`).
    len: AtomicUsize,
    /// Checkouts inside bb8's `get` right now.
    in_bb8: AtomicUsize,
    capacity: usize,
    limit: Duration,
    max_lifetime: Duration,
}

impl WarmStack {
    /// A stack for a pool of `size` connections; `limit` is zero when connections must
    /// be health-checked on every checkout (then nothing is parked).
    pub fn new(size: u32, health_check_idle: Duration, max_lifetime: Duration) -> Arc<WarmStack> {
        let stack = Arc::new(WarmStack {
            parked: Mutex::new(Vec::with_capacity(size as usize)),
            len: AtomicUsize::new(0),
            in_bb8: AtomicUsize::new(0),
            capacity: size as usize,
            limit: health_check_idle.min(MAX_PARK),
            max_lifetime,
        });
        if !stack.limit.is_zero() {
            spawn_sweeper(Arc::downgrade(&stack));
        }
        stack
    }

    /// A parked connection that is still fit to use, if there is one.
    pub fn take(&self) -> Option<Lent> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = super::CoarseInstant::now();
        loop {
            let mut connection = self.with_parked(Vec::pop)?;
            if !connection.is_quiet_while_idle() {
                // The server spoke or hung up while it was parked: bb8 discards it.
                connection.mark_broken();
                continue;
            }
            if now.saturating_duration_since(connection.last_used) >= self.limit
                || now.saturating_duration_since(connection.opened) >= self.max_lifetime
            {
                continue; // back to bb8, which checks or retires it
            }
            return Some(connection);
        }
    }

    /// A connection is returned: park it, or hand it back to bb8 when bb8 has a
    /// checkout waiting (or it is broken, or the stack is full).
    pub fn park(&self, connection: Lent) {
        if self.limit.is_zero() || connection.broken || self.in_bb8.load(Ordering::SeqCst) > 0 {
            return; // dropped: bb8 takes it back
        }
        let full = self.with_parked(|parked| {
            if parked.len() >= self.capacity {
                return Some(connection);
            }
            parked.push(connection);
            None
        });
        if full.is_some() {
            return; // dropped outside the lock: bb8 takes it back
        }
        // Parked before looking: a checkout that entered bb8 meanwhile gets one back.
        fence(Ordering::SeqCst);
        if self.in_bb8.load(Ordering::SeqCst) > 0 {
            drop(self.with_parked(Vec::pop));
        }
    }

    /// A checkout is about to wait in bb8: returns stop parking until the guard drops.
    /// Look in the stack once more after this (a return may have parked meanwhile).
    pub fn enter_bb8(self: &Arc<Self>) -> Bb8Guard {
        self.in_bb8.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Bb8Guard {
            stack: self.clone(),
        }
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Hands every parked connection back to bb8.
    pub fn drain(&self) {
        drop(self.with_parked(std::mem::take));
    }

    /// Hands back the connections parked longer than the limit.
    fn sweep(&self) {
        let stale = self.with_parked(|parked| {
            let (stale, fresh): (Vec<Lent>, Vec<Lent>) = parked
                .drain(..)
                .partition(|c| c.last_used.elapsed() >= self.limit);
            *parked = fresh;
            stale
        });
        drop(stale); // outside the lock: bb8 takes them back
    }

    /// Changes the parked connections under the lock and keeps `len` in step. What
    /// `change` returns is dropped by the caller, outside the lock.
    fn with_parked<R>(&self, change: impl FnOnce(&mut Vec<Lent>) -> R) -> R {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let result = change(&mut parked);
        self.len.store(parked.len(), Ordering::Relaxed);
        result
    }
}

/// A checkout waiting inside bb8 (see [`WarmStack::enter_bb8`]).
pub struct Bb8Guard {
    stack: Arc<WarmStack>,
}

impl Drop for Bb8Guard {
    fn drop(&mut self) {
        self.stack.in_bb8.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every `limit`, hands back what sat parked too long; ends with the stack.
fn spawn_sweeper(stack: Weak<WarmStack>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(period) = stack.upgrade().map(|s| s.limit) else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(stack) = stack.upgrade() else { break };
            if stack.len() > 0 {
                stack.sweep();
            }
        }
    });
}
