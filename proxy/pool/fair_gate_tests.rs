//! Unit tests of the fair gate: turn order, weights, timeouts, shedding, and that no
//! permit is ever lost when waiters give up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

fn gate(permits: u32, policy: GatePolicy) -> Arc<FairGate> {
    FairGate::new(
        permits,
        Duration::from_secs(5),
        policy,
        Arc::new(WaitingTotal::default()),
    )
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

async fn until(what: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !what() {
        assert!(Instant::now() < deadline, "condition never held");
        tokio::task::yield_now().await;
    }
}

/// Queues `labels` (group, label) in order behind a held permit, releases it, and
/// returns the order in which they were served.
async fn served_order(gate: &Arc<FairGate>, labels: &[(&str, &str)]) -> Vec<String> {
    let held = gate.try_acquire().expect("free permit");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (n, (group, label)) in labels.iter().enumerate() {
        let (waiter, order) = (gate.clone(), order.clone());
        let (group, label) = (group.to_string(), label.to_string());
        tasks.push(tokio::spawn(async move {
            let permit = waiter.acquire(&group, soon()).await.unwrap();
            order.lock().unwrap().push(label);
            tokio::task::yield_now().await;
            drop(permit);
        }));
        until(|| gate.waiting() == n + 1).await;
    }
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    order
}

#[tokio::test]
async fn free_permits_are_taken_without_waiting() {
    let gate = gate(2, GatePolicy::default());
    let a = gate.try_acquire().unwrap();
    let _b = gate.try_acquire().unwrap();
    assert!(gate.try_acquire().is_none());
    drop(a);
    assert!(gate.try_acquire().is_some());
}

#[tokio::test]
async fn groups_are_served_in_turn_and_fifo_inside() {
    let gate = gate(1, GatePolicy::default());
    let order = served_order(
        &gate,
        &[
            ("1", "a1"),
            ("1", "a2"),
            ("1", "a3"),
            ("1", "a4"),
            ("2", "b1"),
            ("1", "a5"),
            ("2", "b2"),
        ],
    )
    .await;
    assert_eq!(order, ["a1", "b1", "a2", "b2", "a3", "a4", "a5"]);
}

#[tokio::test]
async fn one_group_is_a_fifo_line() {
    let gate = gate(1, GatePolicy::default());
    let order = served_order(&gate, &[("", "1"), ("", "2"), ("", "3")]).await;
    assert_eq!(order, ["1", "2", "3"]);
}

#[tokio::test]
async fn weights_give_more_turns() {
    let policy = GatePolicy {
        weights: [("heavy".to_string(), 2)].into_iter().collect(),
        ..GatePolicy::default()
    };
    let gate = gate(1, policy);
    let order = served_order(
        &gate,
        &[
            ("heavy", "h1"),
            ("heavy", "h2"),
            ("heavy", "h3"),
            ("light", "l1"),
            ("light", "l2"),
        ],
    )
    .await;
    assert_eq!(order, ["h1", "h2", "l1", "h3", "l2"]);
}

#[tokio::test]
async fn a_waiter_times_out_and_the_permit_is_not_lost() {
    let gate = gate(1, GatePolicy::default());
    let held = gate.try_acquire().unwrap();
    let started = Instant::now();
    let refused = gate
        .acquire("x", Instant::now() + Duration::from_millis(50))
        .await;
    assert_eq!(refused.err(), Some(GateRefusal::TimedOut));
    assert!(started.elapsed() >= Duration::from_millis(45));
    assert_eq!(gate.waiting(), 0);
    assert!(gate.waiting_by_group().is_empty());
    drop(held);
    assert!(gate.try_acquire().is_some());
}

#[tokio::test]
async fn past_max_waiting_new_waiters_are_refused_at_once() {
    let total = Arc::new(WaitingTotal::default());
    let policy = GatePolicy {
        max_waiting: 2,
        ..GatePolicy::default()
    };
    let gate = FairGate::new(1, Duration::from_secs(5), policy, total.clone());
    let _held = gate.try_acquire().unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let gate = gate.clone();
        waiters.push(tokio::spawn(async move {
            gate.acquire("g", soon()).await.is_ok()
        }));
    }
    until(|| gate.waiting() == 2).await;
    let started = Instant::now();
    let refused = gate.acquire("g", soon()).await;
    assert!(matches!(refused, Err(GateRefusal::Overloaded(_))));
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(total.shed.load(Ordering::Relaxed), 1);
    assert!(total.shed_within(Duration::from_secs(1)));
    assert_eq!(gate.waiting_by_group(), [("g".to_string(), 2)]);
    for waiter in waiters {
        waiter.abort();
    }
}

#[tokio::test]
async fn a_waiter_older_than_the_timeout_sheds_new_ones() {
    let gate = FairGate::new(
        1,
        Duration::from_millis(30),
        GatePolicy::default(),
        Arc::new(WaitingTotal::default()),
    );
    let _held = gate.try_acquire().unwrap();
    let old = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.acquire("g", soon()).await.is_ok() })
    };
    until(|| gate.waiting() == 1).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let refused = gate.acquire("h", soon()).await;
    assert!(
        matches!(refused, Err(GateRefusal::Overloaded(_))),
        "{:?}",
        refused.err()
    );
    old.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_survive_waiters_giving_up_at_any_moment() {
    let gate = gate(3, GatePolicy::default());
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let group = (i % 5).to_string();
            let deadline = Instant::now() + Duration::from_micros(50 + (i * 37) % 900);
            if let Ok(permit) = gate.acquire(&group, deadline).await {
                tokio::task::yield_now().await;
                drop(permit);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(gate.waiting(), 0);
    let all: Vec<_> = (0..3).filter_map(|_| gate.try_acquire()).collect();
    assert_eq!(all.len(), 3);
    assert!(gate.try_acquire().is_none());
}

#[tokio::test]
async fn a_later_waiter_with_an_earlier_deadline_is_timed_out_first() {
    let gate = gate(1, GatePolicy::default());
    let _held = gate.try_acquire().unwrap();
    let patient = {
        let gate = gate.clone();
        tokio::spawn(async move {
            gate.acquire("a", Instant::now() + Duration::from_secs(30))
                .await
                .is_ok()
        })
    };
    until(|| gate.waiting() == 1).await;
    // The expiry task sleeps until the patient waiter's deadline: this one must wake it.
    let hasty = tokio::time::timeout(
        Duration::from_secs(5),
        gate.acquire("b", Instant::now() + Duration::from_millis(20)),
    )
    .await
    .expect("the earlier deadline was kept");
    assert_eq!(hasty.err(), Some(GateRefusal::TimedOut));
    assert_eq!(gate.waiting_by_group(), [("a".to_string(), 1)]);
    patient.abort();
}

#[tokio::test]
async fn waiters_of_many_groups_time_out_together_and_no_permit_is_lost() {
    let gate = gate(2, GatePolicy::default());
    let held: Vec<_> = (0..2).map(|_| gate.try_acquire().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_millis(30);
    let mut waiters = Vec::new();
    for i in 0..20 {
        let gate = gate.clone();
        waiters.push(tokio::spawn(async move {
            gate.acquire(&(i % 4).to_string(), deadline).await.err()
        }));
    }
    for waiter in waiters {
        let refused = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("every waiter was told")
            .unwrap();
        assert_eq!(refused, Some(GateRefusal::TimedOut));
    }
    assert_eq!(gate.waiting(), 0);
    assert!(gate.waiting_by_group().is_empty());
    drop(held);
    let all: Vec<_> = (0..2).filter_map(|_| gate.try_acquire()).collect();
    assert_eq!(all.len(), 2);
}

#[test]
fn the_expiry_task_is_started_again_on_a_new_runtime() {
    let gate = gate(1, GatePolicy::default());
    let _held = gate.try_acquire().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // A waiter on a runtime that shuts down while it waits, taking the expiry task with it.
    let first = runtime();
    first.block_on(async {
        let waiting = gate.acquire("a", Instant::now() + Duration::from_secs(30));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err(),
            "the permit is held"
        );
    });
    drop(first);
    assert_eq!(gate.waiting(), 0);
    let refused = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            gate.acquire("b", Instant::now() + Duration::from_millis(20)),
        )
        .await
        .expect("timed out by a new expiry task")
    });
    assert_eq!(refused.err(), Some(GateRefusal::TimedOut));
}

/// Counts its wake-ups.
#[derive(Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_waiter_polled_by_another_task_is_woken_there() {
    let gate = gate(1, GatePolicy::default());
    let held = gate.try_acquire().unwrap();
    let mut waiting = Box::pin(gate.acquire("a", soon()));
    // First polled by one task, then by another: the queue must wake the second.
    let first = Arc::new(CountingWaker::default());
    let second = Arc::new(CountingWaker::default());
    let (first_waker, second_waker) = (first.clone().into(), second.clone().into());
    let mut by_first = std::task::Context::from_waker(&first_waker);
    let mut by_second = std::task::Context::from_waker(&second_waker);
    assert!(waiting.as_mut().poll(&mut by_first).is_pending());
    assert!(waiting.as_mut().poll(&mut by_second).is_pending());
    assert_eq!(gate.waiting(), 1);
    drop(held);
    assert_eq!(
        second.0.load(Ordering::SeqCst),
        1,
        "the task awaiting it was woken"
    );
    assert_eq!(first.0.load(Ordering::SeqCst), 0);
    assert!(matches!(
        waiting.as_mut().poll(&mut by_second),
        std::task::Poll::Ready(Ok(_))
    ));
}
