//! A session keeps its replica pools at hand between transactions. When the pools are
//! rebuilt (a reload that changed servers or sizes), its next transaction takes the
//! new pool, as one that looked the pool up every time would, and an idle session
//! keeps no forgotten pool alive.

use super::{port_of, wait_replicas_healthy, with_replicas};
use crate::support::{self, proxy};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden::RunningProxy;

fn replica_pools(proxy: &RunningProxy) -> usize {
    let pools = proxy.runtime.pools.all();
    pools.iter().filter(|pool| pool.key.backend == 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_the_new_replica_pool_once_the_pools_are_rebuilt() {
    let cluster = support::cluster(1);
    let replica = i32::from(cluster.replicas()[0].port);
    let proxy = proxy::start(&cluster, with_replicas(&cluster)).await;
    wait_replicas_healthy(&proxy).await;
    let client = proxy::connect(&proxy).await;
    let read = "SELECT inet_server_port()";
    assert_eq!(port_of(&client, read).await, replica);
    assert_eq!(replica_pools(&proxy), 1);

    // An idle session does not keep a pool the registry let go of alive.
    let forgotten: Vec<_> = proxy
        .runtime
        .pools
        .all()
        .iter()
        .filter(|pool| pool.key.backend == 1)
        .map(Arc::downgrade)
        .collect();
    assert_eq!(forgotten.len(), 1);
    proxy.runtime.pools.clear();
    // The last transaction's connection may still be on its way back to the pool.
    let deadline = Instant::now() + Duration::from_secs(5);
    while forgotten.iter().any(|pool| pool.upgrade().is_some()) {
        assert!(Instant::now() < deadline, "a forgotten pool is still alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(port_of(&client, read).await, replica);

    // The old pools stay alive (as while a transaction still runs on one): the
    // session must still take the registry's new one.
    let old_pools = proxy.runtime.pools.all();
    proxy.runtime.pools.clear();
    assert_eq!(replica_pools(&proxy), 0);
    for _ in 0..3 {
        assert_eq!(port_of(&client, read).await, replica);
    }
    assert_eq!(
        replica_pools(&proxy),
        1,
        "the session kept using the pool the registry forgot"
    );
    drop(old_pools);
}
