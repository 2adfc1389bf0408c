//! A session keeps its replica pools at hand between transactions. When the pools are
//! rebuilt (a reload that changed servers or sizes), its next transaction takes the
//! new pool, as one that looked the pool up every time would.

use super::{port_of, wait_replicas_healthy, with_replicas};
use crate::support::{self, proxy};
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
}
