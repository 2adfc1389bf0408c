//! Prometheus metrics with the `metrics` crate: statement counters and latency come
//! from the stats snapshot (off the data path); pools, clients and replica lag are
//! read when `/metrics` is scraped.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::runtime::Runtime;

/// Installs the Prometheus recorder (once per process) so metrics recorded from now on
/// are kept.
pub fn install() {
    let _ = handle();
}

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // No histograms are recorded through it: statement latency has its own
        // buckets (`stats::LatencyHistogram`), appended to the rendered text.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (tests, embedding apps): then ours is local only.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Renders the Prometheus text exposition for this process.
pub fn render(runtime: &Runtime) -> String {
    let handle = handle();
    metrics::gauge!("pgwarden_clients").set(runtime.cancels.client_count() as f64);
    metrics::gauge!("pgwarden_max_client_connections")
        .set(runtime.config().proxy.max_client_connections as f64);
    // 1 from SIGTERM until exit: clients are being drained.
    metrics::gauge!("pgwarden_shutting_down").set(f64::from(u8::from(
        runtime.shutdown.phase() != crate::server::shutdown::Phase::Running,
    )));
    let pinned = runtime
        .cancels
        .clients()
        .iter()
        .filter(|c| !c.pinned.is_empty())
        .count();
    metrics::gauge!("pgwarden_pinned_clients").set(pinned as f64);
    for pool in runtime.pools.all() {
        let (open, idle) = pool.state();
        let labels = [
            ("database", pool.key.database.clone()),
            ("user", pool.key.user.clone()),
            ("backend", pool.key.backend.to_string()),
        ];
        metrics::gauge!("pgwarden_pool_server_connections", &labels).set(f64::from(open));
        metrics::gauge!("pgwarden_pool_idle_server_connections", &labels).set(f64::from(idle));
        metrics::gauge!("pgwarden_pool_size", &labels).set(f64::from(pool.settings.size));
        metrics::counter!("pgwarden_pool_checkouts_total", &labels)
            .absolute(pool.stats.checkouts.load(Ordering::Relaxed));
        metrics::counter!("pgwarden_pool_checkout_wait_seconds_total", &labels)
            .absolute(pool.stats.checkout_wait_us.load(Ordering::Relaxed) / 1_000_000);
        metrics::counter!("pgwarden_pool_checkout_timeouts_total", &labels)
            .absolute(pool.stats.checkout_timeouts.load(Ordering::Relaxed));
    }
    let routing = runtime.routing();
    for topology in routing.topologies() {
        for backend in topology.replicas() {
            let labels = [
                ("database", topology.database.clone()),
                ("replica", backend.address.clone()),
            ];
            let lag = backend.lag_bytes.load(Ordering::Relaxed);
            if lag != u64::MAX {
                metrics::gauge!("pgwarden_replica_lag_bytes", &labels).set(lag as f64);
            }
            let lag_ms = backend.lag_ms.load(Ordering::Relaxed);
            if lag_ms != u64::MAX {
                metrics::gauge!("pgwarden_replica_lag_seconds", &labels)
                    .set(lag_ms as f64 / 1000.0);
            }
            metrics::gauge!("pgwarden_replica_healthy", &labels).set(
                if backend.healthy.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }
    super::protection::record_metrics(runtime);
    let cache = runtime.cache.totals();
    metrics::counter!("pgwarden_cache_hits_total").absolute(cache.hits);
    metrics::counter!("pgwarden_cache_misses_total").absolute(cache.misses);
    metrics::counter!("pgwarden_cache_invalidations_total").absolute(cache.invalidations);
    metrics::gauge!("pgwarden_cache_bytes").set(cache.bytes as f64);
    metrics::gauge!("pgwarden_cache_entries").set(cache.entries as f64);
    let (hits, misses, full) = runtime.tenancy().shape_counts();
    for (result, count) in [("hit", hits), ("miss", misses), ("full", full)] {
        metrics::counter!("pgwarden_tenant_shape_cache_total", "result" => result).absolute(count);
    }
    metrics::counter!("pgwarden_tenant_shape_memo_hits_total")
        .absolute(runtime.tenancy().shape_memo_hits());
    for part in super::memory::parts(runtime) {
        metrics::gauge!("pgwarden_memory_bytes", "part" => part.part).set(part.bytes as f64);
    }
    let advisories = runtime.advisors.list();
    for kind in crate::advise::AdvisoryKind::ALL {
        let count = advisories.iter().filter(|a| a.kind == kind).count();
        metrics::gauge!("pgwarden_advisories", "kind" => kind.as_str()).set(count as f64);
    }
    let snapshot = runtime.stats.snapshot();
    let (mut primary, mut replica, mut errors) = (0u64, 0u64, 0u64);
    for q in &snapshot.queries {
        primary += q.primary_calls;
        replica += q.replica_calls;
        errors += q.errors;
    }
    metrics::counter!("pgwarden_queries_total", "route" => "primary").absolute(primary);
    metrics::counter!("pgwarden_queries_total", "route" => "replica").absolute(replica);
    metrics::counter!("pgwarden_query_errors_total").absolute(errors);
    metrics::counter!("pgwarden_stats_dropped_events_total").absolute(snapshot.dropped_events);
    let mut text = handle.render();
    text.push_str(&runtime.stats.latency().render());
    text
}
