//! The circuit breaker against a replica frozen with SIGSTOP under read load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::route::circuit::CircuitState;

use super::message;
use super::support::within;
use super::support::{self, proxy};

/// The postmaster of a node and its children (backends, startup, walreceiver).
fn instance_pids(data_dir: &std::path::Path) -> Vec<i32> {
    let pid_file =
        std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Freezes an instance; thaws it when dropped (even when the test fails).
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(pids: Vec<i32>) -> Frozen {
        for pid in &pids {
            // SAFETY: plain kill(2) on processes this test's cluster started.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_opens_its_circuit_and_reads_go_on_elsewhere() {
    let cluster = support::cluster(2);
    cluster
        .wait_for_replication(Duration::from_secs(30))
        .unwrap();
    let window = Duration::from_secs(5);
    let proxy = proxy::start(&cluster, |c| {
        c.databases.get_mut(proxy::DATABASE).unwrap().replicas = cluster.replica_urls();
        c.routing.lag_poll_ms = 50;
        c.pool.connect_timeout_ms = 1_000;
        c.protection.circuit_failures = 2;
        c.protection.circuit_window_ms = window.as_millis() as u64;
        c.protection.circuit_open_ms = 1_000;
    })
    .await;
    let topology = proxy.runtime.routing().topology(proxy::DATABASE).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !topology
        .replicas()
        .iter()
        .all(|r| r.healthy.load(Ordering::Relaxed))
    {
        assert!(Instant::now() < deadline, "replicas never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = &cluster.replicas()[0];
    let survivor_port = i32::from(cluster.replicas()[1].port);
    let circuit = |t: &pgwarden::route::Topology| t.backends[1].circuit.state();

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let on_survivor = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..6 {
        let client = proxy::connect(&proxy).await;
        let (stop, errors, on_survivor) = (stop.clone(), errors.clone(), on_survivor.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match within("read", client.query_one("SELECT inet_server_port()", &[])).await {
                    Ok(row) if row.get::<_, i32>(0) == survivor_port => {
                        on_survivor.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("read failed: {}", message(&e));
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let frozen = Frozen::freeze(instance_pids(&victim.data_dir));
    let stopped = Instant::now();
    while circuit(&topology) != CircuitState::Open {
        assert!(
            stopped.elapsed() < window + Duration::from_secs(3),
            "the circuit did not open within the window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_after = stopped.elapsed();
    // With the circuit open, reads keep being served by the other replica.
    let served_before = on_survivor.load(Ordering::Relaxed);
    let fresh = proxy::connect(&proxy).await;
    for _ in 0..20 {
        let row = within(
            "fresh read",
            fresh.query_one("SELECT inet_server_port()", &[]),
        )
        .await
        .expect("read while the replica is frozen");
        assert_eq!(row.get::<_, i32>(0), survivor_port);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        on_survivor.load(Ordering::Relaxed) > served_before,
        "no reads went on"
    );
    let metrics = within(
        "metrics",
        support::http::get(proxy.http_address, "/metrics", None),
    )
    .await;
    assert!(
        metrics
            .1
            .lines()
            .any(|l| l.starts_with("pgwarden_backend_circuit_state")
                && l.contains(&victim.port.to_string())
                && l.ends_with(" 2")),
        "circuit state not exported as open"
    );

    drop(frozen);
    let thawed = Instant::now();
    while circuit(&topology) != CircuitState::Closed {
        assert!(
            thawed.elapsed() < Duration::from_secs(15),
            "the circuit never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "circuit opened {opened_after:?} after SIGSTOP, closed {:?} after SIGCONT",
        thawed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        within("reader", reader).await.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "reads failed");
}
