//! A randomized consistency check of the result cache: eight sessions on two pgwarden
//! instances with a streaming replica write and read (hinted for the cache) five keys
//! at random. No read returns a value older than one its own session wrote, another
//! session's commit is seen within a second, and the cache serves some of the reads.

use super::*;

/// Committed values of one key, in commit order (values only grow).
#[derive(Default)]
struct KeyHistory {
    /// (when the writer saw its commit, value)
    commits: Vec<(Instant, i64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_reads_are_never_older_than_own_writes() {
    const KEYS: i64 = 5;
    const SESSIONS: usize = 8;
    const OPS: usize = 250;
    let cluster = cluster(1, &[]);
    setup(
        &cluster,
        "CREATE TABLE kv (k int primary key, v bigint not null);
         INSERT INTO kv SELECT g, 0 FROM generate_series(1, 5) g;",
    )
    .await;
    cluster
        .wait_for_replication(Duration::from_secs(10))
        .unwrap();
    let with_replica = |c: &mut Config| route_to_replicas(c, &cluster);
    let a = start(&cluster, with_replica).await;
    let b = start(&cluster, with_replica).await;
    let history: Arc<Vec<std::sync::Mutex<KeyHistory>>> =
        Arc::new((0..KEYS).map(|_| Default::default()).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for session in 0..SESSIONS {
        let port = if session % 2 == 0 { a.port() } else { b.port() };
        let history = history.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = within("login", Wire::tcp(port, USER, DATABASE, &[])).await;
            let mut own = [0i64; KEYS as usize];
            let (mut reads, mut older_than_own, mut worst_stale) = (0u64, 0u64, Duration::ZERO);
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (session as u64 * 7919);
            for _ in 0..OPS {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = (seed % KEYS as u64) as i64 + 1;
                if seed % 10 < 3 {
                    let v: i64 = simple_value(
                        &mut c,
                        &format!("UPDATE kv SET v = v + 1 WHERE k = {k} RETURNING v"),
                    )
                    .await
                    .unwrap()
                    .parse()
                    .unwrap();
                    let at = Instant::now();
                    own[k as usize - 1] = own[k as usize - 1].max(v);
                    let mut h = history[k as usize - 1].lock().unwrap();
                    h.commits.push((at, v));
                } else {
                    let asked = Instant::now();
                    let v: i64 = simple_value(
                        &mut c,
                        &format!("/* pgwarden:cache */ SELECT v FROM kv WHERE k = {k}"),
                    )
                    .await
                    .unwrap()
                    .parse()
                    .unwrap();
                    reads += 1;
                    if v < own[k as usize - 1] {
                        older_than_own += 1;
                    }
                    // Staleness: how long before the read a newer value was committed.
                    let h = history[k as usize - 1].lock().unwrap();
                    if let Some((at, _)) = h
                        .commits
                        .iter()
                        .filter(|(at, value)| *value > v && *at < asked)
                        .min_by_key(|(at, _)| *at)
                    {
                        worst_stale = worst_stale.max(asked - *at);
                    }
                }
            }
            (reads, older_than_own, worst_stale)
        }));
    }
    let (mut reads, mut older, mut worst) = (0, 0, Duration::ZERO);
    for task in tasks {
        let (r, o, w) = task.await.unwrap();
        reads += r;
        older += o;
        worst = worst.max(w);
    }
    let writes: usize = history
        .iter()
        .map(|h| h.lock().unwrap().commits.len())
        .sum();
    let hits = a.runtime.cache.totals().hits + b.runtime.cache.totals().hits;
    eprintln!(
        "consistency: {SESSIONS} sessions, {} operations ({reads} reads, {writes} writes) through 2 instances with 1 replica in {:?}; cache hits {hits}; reads older than own write: {older}; worst staleness for others: {worst:?}",
        SESSIONS * OPS,
        started.elapsed()
    );
    assert_eq!(older, 0, "a session read a value older than its own write");
    assert!(worst < Duration::from_secs(1), "staleness {worst:?}");
    assert!(hits > 0, "the cache served some reads");
}
