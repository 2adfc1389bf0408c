//! The fair gate's one timer: a task per gate that refuses waiters whose deadline
//! passed. It runs only while clients wait, sleeps until the earliest deadline in the
//! queues, and is woken early only when a waiter joins with a deadline before that.
//! A waiter so needs no timer of its own (a tokio timer entry armed and removed per
//! wait was most of what waiting cost, with the channel it replaced).

use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::fair_gate::{FairGate, Queues};

/// The gate's record of its expiry task (kept under the queues' lock).
#[derive(Debug, Default)]
pub(super) struct Expiry {
    task: Option<JoinHandle<()>>,
    /// The deadline the task sleeps until (`None`: it is about to look again).
    sleeps_until: Option<Instant>,
}

impl Expiry {
    /// The task found nobody waiting and ends.
    pub(super) fn stopped(&mut self) {
        self.task = None;
        self.sleeps_until = None;
    }

    /// The task sleeps until `at`, the earliest deadline in the queues.
    pub(super) fn sleeps_until(&mut self, at: Instant) {
        self.sleeps_until = Some(at);
    }

    /// Whether a task runs. One that ended without saying so (its runtime shut down)
    /// does not count: a new one is started on the current runtime.
    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }
}

impl FairGate {
    /// A waiter with `deadline` joined: make sure the expiry task will look at it in
    /// time. Called with the queues locked, from inside the tokio runtime.
    pub(super) fn keep_deadline(self: &Arc<Self>, queues: &mut Queues, deadline: Instant) {
        if !queues.expiry.running() {
            let task = tokio::spawn(expire_waiters(
                Arc::downgrade(self),
                self.expiry_wake.clone(),
            ));
            queues.expiry.task = Some(task);
            queues.expiry.sleeps_until = None;
            return;
        }
        if queues.expiry.sleeps_until.is_some_and(|at| deadline < at) {
            queues.expiry.sleeps_until = Some(deadline);
            self.expiry_wake.notify_one();
        }
    }
}

/// Refuses the waiters past their deadline, then sleeps until the next deadline (or
/// until woken for an earlier one); ends when nobody waits or the gate is gone.
async fn expire_waiters(gate: Weak<FairGate>, wake: Arc<Notify>) {
    loop {
        let Some(next) = gate.upgrade().and_then(|gate| gate.expire(Instant::now())) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wake.notified() => {}
        }
    }
}
