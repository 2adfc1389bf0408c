//! A session's bursts on synthetic statement streams, and the pending openings
//! checked against the eager bursts they replaced.

use super::*;

fn run(scope: &mut Scope, start: Instant, steps: &[(u64, u64)]) -> Vec<Burst> {
    let query: Arc<str> = Arc::from("q");
    let mut closed = Closed::new(0);
    for (i, (fingerprint, params)) in steps.iter().enumerate() {
        scope.observe(
            &Statement {
                fingerprint: *fingerprint,
                query: &query,
                params: Params::Bound(*params),
                duration: Duration::from_millis(1),
                ended: start + Duration::from_millis(2 * i as u64 + 1),
            },
            &mut closed,
        );
    }
    closed.bursts
}

#[test]
fn a_child_loop_closes_when_the_parent_runs_again() {
    let start = Instant::now();
    let mut scope = Scope::new(start);
    // parent 1, children 2 (params 10..15), unrelated 9 in between, parent again.
    let closed = run(
        &mut scope,
        start,
        &[
            (1, 0),
            (2, 10),
            (2, 11),
            (9, 0),
            (2, 12),
            (2, 13),
            (2, 14),
            (1, 1),
        ],
    );
    let burst = closed.iter().find(|b| b.child == 2).expect("burst of 2");
    assert_eq!(
        (burst.parent, burst.count, burst.distinct_params()),
        (1, 5, 5)
    );
    assert!(burst.span() >= Duration::from_millis(9));
}

#[test]
fn a_statement_once_per_transaction_is_no_loop() {
    // TPC-B-like: the child once per transaction with five other statements in
    // between, after one of two "parents" (pgbench's UPDATE with a positive or a
    // negative literal fingerprints apart), so a parent does not recur to close it.
    let mut steps = Vec::new();
    for t in 0..10u64 {
        let parent = if t == 0 { 1 } else { 2 };
        steps.extend([
            (parent, t),
            (3, 100 + t),
            (4, t),
            (5, t),
            (6, t),
            (7, 0),
            (8, 0),
        ]);
    }
    // Not even two children: each opening fell out of reach before it repeated.
    let closed = closed_after(Instant::now(), &steps, 0);
    assert!(closed.is_empty(), "{closed:?}");
}

#[test]
fn a_child_repeated_at_the_edge_of_reach_is_a_burst_and_one_past_it_is_not() {
    let start = Instant::now();
    // Child 2 after parent 1, then MAX_GAP unrelated statements (all distinct
    // and none of them the parent), then 2 again: still one burst.
    let with_between = |others: u64| {
        let mut steps = vec![(1, 0), (2, 1)];
        steps.extend((0..others).map(|i| (100 + i, 0)));
        steps.push((2, 2));
        closed_after(start, &steps, 2)
    };
    let closed = with_between(MAX_GAP);
    assert!(
        closed
            .iter()
            .any(|b| b.child == 2 && b.parent == 1 && b.count == 2),
        "{closed:?}"
    );
    // One more statement between them: the opening is gone.
    let closed = with_between(MAX_GAP + 1);
    assert!(
        closed.iter().all(|b| b.child != 2 || b.parent != 1),
        "{closed:?}"
    );
}

/// The bursts a fresh session closes over `steps`, and those still open at the end.
fn closed_after(start: Instant, steps: &[(u64, u64)], min: usize) -> Vec<Burst> {
    let mut scope = Scope::new(start);
    let mut closed = Closed::new(min);
    closed.bursts = run(&mut scope, start, steps);
    scope.close_all(&mut closed);
    closed.bursts
}

/// The detector before pending openings: every child seen after a different
/// statement opened a burst at once. Kept here to check that the pending ring
/// reports the same bursts (with at most `MAX_OPEN` fingerprints nothing is ever
/// pushed out, where the two may differ on purpose).
fn eager_bursts(steps: &[(u64, u64)], min: u32) -> Vec<(u64, u64, u32, usize)> {
    struct Open {
        child: u64,
        parent: u64,
        count: u32,
        params: Vec<u64>,
        last_seq: u64,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut out = Vec::new();
    let mut previous = None;
    for (i, &(fingerprint, param)) in steps.iter().enumerate() {
        let seq = i as u64 + 1;
        open.retain(|b| {
            let stopped = b.child != fingerprint && seq - b.last_seq > MAX_GAP;
            let close = b.parent == fingerprint || stopped;
            if close {
                out.push((b.child, b.parent, b.count, b.params.len()));
            }
            !close
        });
        if let Some(b) = open.iter_mut().find(|b| b.child == fingerprint) {
            b.count += 1;
            if !b.params.contains(&param) {
                b.params.push(param);
            }
            b.last_seq = seq;
        } else if let Some(parent) = previous.filter(|p| *p != fingerprint) {
            open.push(Open {
                child: fingerprint,
                parent,
                count: 1,
                params: vec![param],
                last_seq: seq,
            });
        }
        previous = Some(fingerprint);
    }
    out.extend(
        open.iter()
            .map(|b| (b.child, b.parent, b.count, b.params.len())),
    );
    out.retain(|b| b.2 >= min && b.3 >= min as usize);
    out.sort_unstable();
    out
}

#[test]
fn pending_openings_report_the_bursts_eager_ones_did() {
    let start = Instant::now();
    // A fixed pseudo-random walk over 6 fingerprints, with loops mixed in.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.random::<u64>();
    let mut bursts_seen = 0;
    for _ in 0..300 {
        let mut steps = Vec::new();
        while steps.len() < 60 {
            let fingerprint = 1 + next() % 6;
            let repeats = if next() % 3 == 0 { 1 + next() % 6 } else { 1 };
            for _ in 0..repeats {
                steps.push((fingerprint, next() % 4));
                if next() % 4 == 0 {
                    steps.push((1 + next() % 6, 0));
                }
            }
        }
        let mut ours: Vec<_> = closed_after(start, &steps, 2)
            .iter()
            .map(|b| (b.child, b.parent, b.count, b.distinct_params()))
            .collect();
        ours.sort_unstable();
        assert_eq!(ours, eager_bursts(&steps, 2), "{steps:?}");
        bursts_seen += ours.len();
    }
    assert!(
        bursts_seen > 100,
        "the walk made too few bursts: {bursts_seen}"
    );
}

#[test]
fn an_opening_is_dropped_when_its_parent_runs_before_the_child_repeats() {
    // 1, 2, 1, 2: each 2 follows a new request of 1, so no burst of 2 repeats.
    let closed = closed_after(Instant::now(), &[(1, 0), (2, 1), (1, 0), (2, 2)], 2);
    assert!(closed.iter().all(|b| b.child != 2), "{closed:?}");
}

#[test]
fn idle_bursts_close() {
    let start = Instant::now();
    let mut scope = Scope::new(start);
    let closed = run(&mut scope, start, &[(1, 0), (2, 1), (2, 2)]);
    assert!(closed.is_empty());
    let mut closed = Closed::new(0);
    scope.close_idle(start + Duration::from_secs(1), &mut closed);
    assert_eq!(closed.bursts.len(), 1);
    assert_eq!(closed.bursts[0].count, 2);
}

#[test]
fn bursts_too_short_to_count_are_dropped_where_they_close() {
    let start = Instant::now();
    let query: Arc<str> = Arc::from("q");
    let mut scope = Scope::new(start);
    let mut closed = Closed::new(3);
    // Child 2 runs three times after parent 1 (distinct parameters), child 4 once
    // after parent 3; parent 1 again closes the first, idleness the second.
    for (i, (fingerprint, params)) in [(1, 0), (2, 1), (2, 2), (2, 3), (3, 0), (4, 5), (1, 0)]
        .into_iter()
        .enumerate()
    {
        let statement = Statement {
            fingerprint,
            query: &query,
            params: Params::Bound(params),
            duration: Duration::from_millis(1),
            ended: start + Duration::from_millis(i as u64 + 1),
        };
        scope.observe(&statement, &mut closed);
    }
    scope.close_all(&mut closed);
    let kept: Vec<(u64, u32)> = closed.bursts.iter().map(|b| (b.child, b.count)).collect();
    assert_eq!(kept, vec![(2, 3)], "{:?}", closed.bursts);
}
