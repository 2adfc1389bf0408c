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
//! It does not know about server connections; `registry` pairs a permit with one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

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
    grant: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Queues {
    /// On the seeded process hash (group names come from clients): while a pool is
    /// saturated every checkout and every release looks its group up here.
    groups: ProcessMap<Arc<str>, VecDeque<Waiter>>,
    /// Groups with waiters, in turn order; the front one is being served.
    ring: VecDeque<Arc<str>>,
    served_in_turn: u32,
    next_id: u64,
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
        let Some((id, receiver)) = self.enqueue(group)? else {
            return Ok(GatePermit { gate: self.clone() });
        };
        let waiting = Waiting {
            gate: self,
            group,
            id,
            receiver,
            done: false,
        };
        waiting.wait(deadline).await
    }

    /// Joins `group`'s queue (its id and where the grant arrives), or takes a permit
    /// freed meanwhile (`None`).
    fn enqueue(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<Option<(u64, oneshot::Receiver<()>)>, GateRefusal> {
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
        let (grant, receiver) = oneshot::channel();
        queues.next_id += 1;
        let id = queues.next_id;
        let waiter = Waiter {
            id,
            since: now,
            grant,
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
        Ok(Some((id, receiver)))
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
        while let Some(waiter) = self.next_in_turn(&mut queues) {
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
            self.total.waiting.fetch_sub(1, Ordering::Relaxed);
            // The receiver lives until its owner took the queue lock (see `Waiting`).
            if waiter.grant.send(()).is_ok() {
                return;
            }
        }
        self.state.fetch_add(1, Ordering::AcqRel);
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

    /// A waiter gives up (timeout, or its client left): out of its queue, or, if it
    /// was granted meanwhile, the permit goes on to the next one.
    fn leave(&self, group: &str, id: u64, receiver: &mut oneshot::Receiver<()>) {
        let mut queues = self.lock();
        let removed = match queues.groups.get_mut(group) {
            Some(queue) => match queue.iter().position(|w| w.id == id) {
                Some(at) => {
                    queue.remove(at);
                    if queue.is_empty() {
                        queues.groups.remove(group);
                        if let Some(at) = queues.ring.iter().position(|g| &**g == group) {
                            queues.ring.remove(at);
                            if at == 0 {
                                queues.served_in_turn = 0;
                            }
                        }
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
        drop(queues);
        if receiver.try_recv().is_ok() {
            self.release();
        }
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

/// A client in a queue; leaves it on drop unless it got its permit.
struct Waiting<'a> {
    gate: &'a Arc<FairGate>,
    group: &'a str,
    id: u64,
    receiver: oneshot::Receiver<()>,
    done: bool,
}

impl Waiting<'_> {
    async fn wait(mut self, deadline: Instant) -> Result<GatePermit, GateRefusal> {
        let granted = tokio::time::timeout_at(deadline.into(), &mut self.receiver).await;
        if let Ok(Ok(())) = granted {
            self.done = true;
            return Ok(GatePermit {
                gate: self.gate.clone(),
            });
        }
        Err(GateRefusal::TimedOut)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.gate.leave(self.group, self.id, &mut self.receiver);
        }
    }
}

#[cfg(test)]
#[path = "fair_gate_tests.rs"]
mod tests;
