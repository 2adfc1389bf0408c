//! The fair waiting line in front of one pool: at most `size` clients hold a permit
//! (and so a server connection); the others wait in per-group queues, served round
//! robin between groups (a group with weight `w` is served `w` times per turn) and
//! FIFO inside a group. With one group for everyone this is PgBouncer's FIFO line.
//!
//! When a permit is free and nobody waits, taking it is one compare-and-swap on an
//! atomic word: no lock, no allocation. The queues' mutex is taken only when clients
//! wait, and never across an `.await`. It also sheds load: a client that would wait
//! while `max_waiting` clients already wait (across all pools), or while the oldest
//! waiter has waited a whole checkout timeout, is refused at once.
//!
//! A waiter costs no allocation and no timer of its own: it waits in its queue with its
//! task's waker, and is told its outcome there (`decided`). Deadlines are kept by one
//! task per gate (`fair_gate_expiry`), which runs only while clients wait and sleeps
//! until the earliest deadline, as PgBouncer's janitor does for its waiting clients.
//!
//! It does not know about server connections; `registry` pairs a permit with one.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::fair_gate_expiry::Expiry;
use crate::stats::ProcessMap;

/// One waiting client (`state` counts these in its high half).
const ONE_WAITER: u64 = 1 << 32;

/// Why a client got no permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// Waited until the deadline.
    TimedOut,
    /// Refused without waiting (load shedding); the reason names the setting.
    Overloaded(String),
}

/// Shared by every gate of the process: the clients waiting in all of them.
#[derive(Debug, Default)]
pub struct WaitingTotal {
    pub waiting: AtomicUsize,
    /// Clients refused by load shedding, ever.
    pub shed: AtomicU64,
    /// When the last refusal happened (ms since `epoch`), for `/readyz`.
    pub last_shed_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl WaitingTotal {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// Whether a client was shed within `window`.
    pub fn shed_within(&self, window: Duration) -> bool {
        let last = self.last_shed_ms.load(Ordering::Relaxed);
        last > 0 && self.now_ms().saturating_sub(last) <= window.as_millis() as u64
    }
}

/// How a gate shares and sheds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatePolicy {
    /// Waiting clients (all pools together) past which new waiters are refused; 0 = no bound.
    pub max_waiting: usize,
    /// A group's turns per round (default 1).
    pub weights: BTreeMap<String, u32>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    since: Instant,
    deadline: Instant,
    /// Woken when the waiter is granted its permit or its deadline passes.
    waker: Waker,
}

#[derive(Debug, Default)]
pub(super) struct Queues {
    /// On the seeded process hash (group names come from clients): while a pool is
    /// saturated every checkout and every release looks its group up here.
    groups: ProcessMap<Arc<str>, VecDeque<Waiter>>,
    /// Groups with waiters, in turn order; the front one is being served.
    ring: VecDeque<Arc<str>>,
    served_in_turn: u32,
    next_id: u64,
    /// Waiters out of their queues whose future has not yet seen why (`true`: granted
    /// a permit, `false`: past their deadline). A granted waiter's task runs next, so
    /// this holds a few entries: searched, not hashed.
    decided: Decided,
    /// The task that times waiters out (see `fair_gate_expiry`).
    pub(super) expiry: Expiry,
}

#[derive(Debug)]
pub struct FairGate {
    /// Low half: free permits. High half: waiting clients (changed only under `queues`).
    state: AtomicU64,
    queues: Mutex<Queues>,
    policy: GatePolicy,
    total: Arc<WaitingTotal>,
    /// Longest a client may wait; a waiter this old means the pool is overloaded.
    timeout: Duration,
    /// Wakes the expiry task when a waiter's deadline is earlier than the one it sleeps to.
    pub(super) expiry_wake: Arc<tokio::sync::Notify>,
}

/// A place in the pool; given back (to the next waiter in turn) when dropped.
#[derive(Debug)]
pub struct GatePermit {
    gate: Arc<FairGate>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl FairGate {
    pub fn new(
        permits: u32,
        timeout: Duration,
        policy: GatePolicy,
        total: Arc<WaitingTotal>,
    ) -> Arc<FairGate> {
        Arc::new(FairGate {
            state: AtomicU64::new(u64::from(permits)),
            queues: Mutex::new(Queues::default()),
            policy,
            total,
            timeout,
            expiry_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Takes a permit at once if one is free and nobody waits (no lock, no allocation).
    pub fn try_acquire(self: &Arc<Self>) -> Option<GatePermit> {
        let mut state = self.state.load(Ordering::Acquire);
        while state >> 32 == 0 && state & 0xffff_ffff > 0 {
            match self.state.compare_exchange_weak(
                state,
                state - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(GatePermit { gate: self.clone() }),
                Err(now) => state = now,
            }
        }
        None
    }

    /// Waits in `group`'s queue for a permit until `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        group: &str,
        deadline: Instant,
    ) -> Result<GatePermit, GateRefusal> {
        if let Some(permit) = self.try_acquire() {
            return Ok(permit);
        }
        Waiting {
            gate: self,
            group,
            deadline,
            queued: None,
        }
        .await
    }

    /// Joins `group`'s queue (its id), or takes a permit freed meanwhile (`None`).
    fn enqueue(
        self: &Arc<Self>,
        group: &str,
        deadline: Instant,
        waker: &Waker,
    ) -> Result<Option<u64>, GateRefusal> {
        // A place in the line is reserved first, so the bound is never overshot.
        let max = self.policy.max_waiting;
        let before = self.total.waiting.fetch_add(1, Ordering::Relaxed);
        if max > 0 && before >= max {
            self.total.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(self.shed(format!(
                "{max} clients already wait for a server connection (pool.max_waiting)"
            )));
        }
        let mut queues = self.lock();
        let now = Instant::now();
        if let Some(oldest) = oldest_wait(&queues, now) {
            if oldest >= self.timeout {
                drop(queues);
                self.total.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(self.shed(format!(
                    "the oldest waiting client has waited {} ms (pool.checkout_timeout_ms)",
                    oldest.as_millis()
                )));
            }
        }
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (next, take) = if state >> 32 == 0 && state & 0xffff_ffff > 0 {
                (state - 1, true)
            } else {
                (state + ONE_WAITER, false)
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                // A permit came back between the fast path and the lock.
                Ok(_) if take => {
                    self.total.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        queues.next_id += 1;
        let id = queues.next_id;
        let waiter = Waiter {
            id,
            since: now,
            deadline,
            waker: waker.clone(),
        };
        // A group already waiting keeps its key: no allocation for the name.
        match queues.groups.get_mut(group) {
            Some(queue) => queue.push_back(waiter),
            None => {
                let key: Arc<str> = Arc::from(group);
                queues.groups.insert(key.clone(), VecDeque::from([waiter]));
                queues.ring.push_back(key);
            }
        }
        self.keep_deadline(&mut queues, deadline);
        Ok(Some(id))
    }

    fn shed(&self, reason: String) -> GateRefusal {
        self.total.shed.fetch_add(1, Ordering::Relaxed);
        self.total
            .last_shed_ms
            .store(self.total.now_ms(), Ordering::Relaxed);
        GateRefusal::Overloaded(reason)
    }

    /// A permit comes back: to the next waiter in turn, or to the free count.
    fn release(&self) {
        let mut state = self.state.load(Ordering::Acquire);
        while state >> 32 == 0 {
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
        let mut queues = self.lock();
        match self.next_in_turn(&mut queues) {
            // Every waiter in a queue is alive: one that gives up leaves its queue
            // under the lock first (see `Waiting`'s drop).
            Some(waiter) => {
                self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
                self.total.waiting.fetch_sub(1, Ordering::Relaxed);
                queues.decided.push(waiter.id, true);
                drop(queues);
                waiter.waker.wake();
            }
            None => {
                self.state.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Round robin between groups, `weight` turns each, FIFO inside a group.
    fn next_in_turn(&self, queues: &mut Queues) -> Option<Waiter> {
        loop {
            let Queues { groups, ring, .. } = &mut *queues;
            let key = ring.front()?;
            let (waiter, empty) = match groups.get_mut(&**key) {
                Some(queue) => (queue.pop_front(), queue.is_empty()),
                None => (None, true),
            };
            if empty {
                groups.remove(&**key);
                ring.pop_front();
                queues.served_in_turn = 0;
            }
            if let Some(waiter) = waiter {
                if !empty {
                    // Weights are looked up only where a group's turn can end.
                    let key = queues.ring.front().expect("not empty");
                    let weight = self.policy.weights.get(&**key).copied().unwrap_or(1).max(1);
                    queues.served_in_turn += 1;
                    if queues.served_in_turn >= weight {
                        queues.ring.rotate_left(1);
                        queues.served_in_turn = 0;
                    }
                }
                return Some(waiter);
            }
        }
    }

    /// A waiter gives up (its client left): out of its queue, or, if it was granted
    /// meanwhile, the permit goes on to the next one.
    fn leave(&self, group: &str, id: u64) {
        let mut queues = self.lock();
        let removed = match queues.groups.get_mut(group) {
            Some(queue) => match queue.iter().position(|w| w.id == id) {
                Some(at) => {
                    queue.remove(at);
                    if queue.is_empty() {
                        forget_group(&mut queues, group);
                    }
                    true
                }
                None => false,
            },
            None => false,
        };
        if removed {
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
            self.total.waiting.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let granted = queues.decided.take(id) == Some(true);
        drop(queues);
        if granted {
            self.release();
        }
    }

    /// Takes out of their queues the waiters whose deadline is not after `now`, and
    /// wakes them to their refusal; returns the earliest deadline still waited for.
    pub(super) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let mut queues = self.lock();
        let Queues {
            groups, decided, ..
        } = &mut *queues;
        let mut earliest: Option<Instant> = None;
        let mut emptied = Vec::new();
        for (key, queue) in groups.iter_mut() {
            queue.retain_mut(|waiter| {
                if waiter.deadline <= now {
                    decided.push(waiter.id, false);
                    expired.push(std::mem::replace(&mut waiter.waker, Waker::noop().clone()));
                    return false;
                }
                earliest = Some(earliest.map_or(waiter.deadline, |e| e.min(waiter.deadline)));
                true
            });
            if queue.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            forget_group(&mut queues, &key);
        }
        let gone = expired.len();
        if gone > 0 {
            self.state
                .fetch_sub(ONE_WAITER * gone as u64, Ordering::AcqRel);
            self.total.waiting.fetch_sub(gone, Ordering::Relaxed);
        }
        match earliest {
            Some(at) => queues.expiry.sleeps_until(at),
            None => queues.expiry.stopped(),
        }
        drop(queues);
        for waker in expired {
            waker.wake();
        }
        earliest
    }

    /// Waiting clients per group (`""` = clients with no group), for `SHOW POOLS`.
    pub fn waiting_by_group(&self) -> Vec<(String, usize)> {
        let queues = self.lock();
        let mut groups: Vec<_> = queues
            .groups
            .iter()
            .map(|(k, q)| (k.to_string(), q.len()))
            .collect();
        groups.sort();
        groups
    }

    /// Clients waiting in this gate.
    pub fn waiting(&self) -> usize {
        (self.state.load(Ordering::Acquire) >> 32) as usize
    }

    /// How long the oldest waiter has waited.
    pub fn oldest_wait(&self) -> Option<Duration> {
        oldest_wait(&self.lock(), Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the longest-waiting client has waited at `now`.
fn oldest_wait(queues: &Queues, now: Instant) -> Option<Duration> {
    queues
        .groups
        .values()
        .filter_map(|q| q.front())
        .map(|w| now.saturating_duration_since(w.since))
        .max()
}

/// Outcomes told to waiters that have not looked yet.
#[derive(Debug, Default)]
struct Decided(Vec<(u64, bool)>);

impl Decided {
    fn push(&mut self, id: u64, granted: bool) {
        self.0.push((id, granted));
    }

    fn take(&mut self, id: u64) -> Option<bool> {
        let at = self.0.iter().position(|(waiter, _)| *waiter == id)?;
        Some(self.0.swap_remove(at).1)
    }
}

/// Removes an emptied group's queue and its place in the ring.
fn forget_group(queues: &mut Queues, group: &str) {
    queues.groups.remove(group);
    if let Some(at) = queues.ring.iter().position(|g| &**g == group) {
        queues.ring.remove(at);
        if at == 0 {
            queues.served_in_turn = 0;
        }
    }
}

/// A client waiting for a permit: joins its queue when first polled, then waits to be
/// told its outcome; leaves the queue if dropped before that.
struct Waiting<'a> {
    gate: &'a Arc<FairGate>,
    group: &'a str,
    deadline: Instant,
    /// Its id in the queue, and the waker the queue holds.
    queued: Option<(u64, Waker)>,
}

impl Future for Waiting<'_> {
    type Output = Result<GatePermit, GateRefusal>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some((id, registered)) = &mut this.queued else {
            return match this.gate.enqueue(this.group, this.deadline, cx.waker()) {
                Err(refusal) => Poll::Ready(Err(refusal)),
                Ok(None) => Poll::Ready(Ok(GatePermit {
                    gate: this.gate.clone(),
                })),
                Ok(Some(id)) => {
                    this.queued = Some((id, cx.waker().clone()));
                    Poll::Pending
                }
            };
        };
        let id = *id;
        let mut queues = this.gate.lock();
        if let Some(granted) = queues.decided.take(id) {
            drop(queues);
            this.queued = None;
            return Poll::Ready(if granted {
                Ok(GatePermit {
                    gate: this.gate.clone(),
                })
            } else {
                Err(GateRefusal::TimedOut)
            });
        }
        // Polled again undecided (the future moved to another task, or a wake-up of
        // its own task for something else): the queue must hold the current waker.
        if !registered.will_wake(cx.waker()) {
            if let Some(waiter) = queues
                .groups
                .get_mut(this.group)
                .and_then(|queue| queue.iter_mut().find(|w| w.id == id))
            {
                waiter.waker = cx.waker().clone();
            }
            *registered = cx.waker().clone();
        }
        Poll::Pending
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.queued.take() {
            self.gate.leave(self.group, id);
        }
    }
}

#[cfg(test)]
#[path = "fair_gate_tests.rs"]
mod tests;
