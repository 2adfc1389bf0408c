//! The backends of one database (primary and replicas) and what is known about each:
//! health, replay position, lag, requests in flight, counters. Written by the lag
//! monitor and the sessions, read by replica selection; all atomics, no locks on the
//! data path (the primary LSN history is a short mutex-guarded ring touched by the
//! monitor and by lag computation only).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A WAL position, as `pg_lsn` prints it (`16/B374D848`).
pub type Lsn = u64;

pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// One server of a database.
#[derive(Debug)]
pub struct BackendState {
    /// 0 = primary, 1.. = replicas in configuration order.
    pub index: usize,
    pub address: String,
    pub healthy: AtomicBool,
    /// Replicas: `pg_last_wal_replay_lsn()` at the last poll.
    pub replay_lsn: AtomicU64,
    pub lag_bytes: AtomicU64,
    pub lag_ms: AtomicU64,
    /// Sessions currently holding a connection to this backend.
    pub in_flight: AtomicUsize,
    pub routed: AtomicU64,
    pub errors: AtomicU64,
    /// Opens after repeated failures (see `circuit`).
    pub circuit: super::circuit::Circuit,
}

impl BackendState {
    pub fn is_primary(&self) -> bool {
        self.index == 0
    }
}

/// Limits a replica must meet to receive reads.
#[derive(Debug, Clone, Copy)]
pub struct LagLimits {
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
}

pub struct Topology {
    pub database: String,
    pub backends: Vec<Arc<BackendState>>,
    /// (when, primary insert LSN) from recent polls, newest last.
    primary_history: Mutex<VecDeque<(Instant, Lsn)>>,
    next: AtomicUsize,
    /// Roles a replica refused as serializable by default, and statement shapes it
    /// refused for another reason (`replica_refusals.rs`).
    pub serializable_roles: super::replica_refusals::SerializableRoles,
    pub refused_shapes: super::replica_refusals::RefusedShapes,
}

const HISTORY: usize = 600;

impl Topology {
    pub fn new(database: &str, addresses: Vec<String>) -> Topology {
        Topology::with_circuits(
            database,
            addresses,
            super::circuit::CircuitPolicy::default(),
        )
    }

    pub fn with_circuits(
        database: &str,
        addresses: Vec<String>,
        policy: super::circuit::CircuitPolicy,
    ) -> Topology {
        let backends = addresses
            .into_iter()
            .enumerate()
            .map(|(index, address)| {
                Arc::new(BackendState {
                    index,
                    address,
                    // Replicas earn reads once the monitor has seen them.
                    healthy: AtomicBool::new(index == 0),
                    replay_lsn: AtomicU64::new(0),
                    lag_bytes: AtomicU64::new(u64::MAX),
                    lag_ms: AtomicU64::new(u64::MAX),
                    in_flight: AtomicUsize::new(0),
                    routed: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    circuit: super::circuit::Circuit::new(policy),
                })
            })
            .collect();
        Topology {
            database: database.to_string(),
            backends,
            primary_history: Mutex::new(VecDeque::new()),
            next: AtomicUsize::new(0),
            serializable_roles: Default::default(),
            refused_shapes: Default::default(),
        }
    }

    pub fn has_replicas(&self) -> bool {
        self.backends.len() > 1
    }

    pub fn replicas(&self) -> &[Arc<BackendState>] {
        &self.backends[1..]
    }

    /// Records the primary's position (from the monitor).
    pub fn record_primary_lsn(&self, lsn: Lsn) {
        let mut history = self
            .primary_history
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        history.push_back((Instant::now(), lsn));
        while history.len() > HISTORY {
            history.pop_front();
        }
    }

    pub fn primary_lsn(&self) -> Option<Lsn> {
        let history = self
            .primary_history
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        history.back().map(|(_, lsn)| *lsn)
    }

    /// Records a replica poll: its replay position, and from it the lag in bytes and
    /// in time (how long ago the primary was where the replica is now).
    pub fn record_replica(&self, index: usize, replay: Lsn) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        backend.replay_lsn.store(replay, Ordering::Relaxed);
        let history = self
            .primary_history
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (lag_bytes, lag_ms) = match history.back() {
            None => (u64::MAX, u64::MAX),
            Some((_, newest)) => {
                let bytes = newest.saturating_sub(replay);
                // The oldest sample the replica has not reached yet: it is behind by
                // at least the time since then.
                let ms = history
                    .iter()
                    .find(|(_, lsn)| *lsn > replay)
                    .map(|(at, _)| at.elapsed().as_millis() as u64)
                    .unwrap_or(0);
                (bytes, ms)
            }
        };
        drop(history);
        backend.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        backend.lag_ms.store(lag_ms, Ordering::Relaxed);
        backend.healthy.store(true, Ordering::Relaxed);
    }

    /// A failed request or poll: counts toward opening the backend's circuit.
    pub fn record_failure(&self, index: usize) {
        if let Some(backend) = self.backends.get(index) {
            backend.circuit.record_failure(&backend.address);
        }
    }

    pub fn mark_unhealthy(&self, index: usize) {
        if let Some(backend) = self.backends.get(index) {
            if index > 0 && backend.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(database = %self.database, replica = %backend.address, "replica taken out of rotation");
            }
        }
    }

    /// A replica that may serve a read needing WAL up to `min_lsn`, with the fewest
    /// requests in flight (ties rotate). `exclude` skips a replica that just failed.
    pub fn pick_replica(
        &self,
        min_lsn: Option<Lsn>,
        limits: LagLimits,
        exclude: Option<usize>,
    ) -> ReplicaChoice {
        let replicas = self.replicas();
        if replicas.is_empty() {
            return ReplicaChoice::NoneHealthy;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<BackendState>> = None;
        let mut any_healthy = false;
        for offset in 0..replicas.len() {
            let replica = &replicas[(start + offset) % replicas.len()];
            if Some(replica.index) == exclude
                || !replica.healthy.load(Ordering::Relaxed)
                || replica.circuit.state() != super::circuit::CircuitState::Closed
            {
                continue;
            }
            if replica.lag_bytes.load(Ordering::Relaxed) > limits.max_lag_bytes
                || replica.lag_ms.load(Ordering::Relaxed) > limits.max_lag_ms
            {
                continue;
            }
            any_healthy = true;
            if let Some(min) = min_lsn {
                if replica.replay_lsn.load(Ordering::Relaxed) < min {
                    continue;
                }
            }
            let load = replica.in_flight.load(Ordering::Relaxed);
            if best.is_none_or(|b| load < b.in_flight.load(Ordering::Relaxed)) {
                best = Some(replica);
            }
        }
        match (best, any_healthy) {
            (Some(replica), _) => ReplicaChoice::Replica(replica.index),
            (None, true) => ReplicaChoice::BehindWrites,
            (None, false) => ReplicaChoice::NoneHealthy,
        }
    }
}

/// Outcome of replica selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaChoice {
    Replica(usize),
    /// Healthy replicas exist but none has replayed the session's last write yet.
    BehindWrites,
    NoneHealthy,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOSE: LagLimits = LagLimits {
        max_lag_bytes: u64::MAX,
        max_lag_ms: u64::MAX,
    };

    fn topo() -> Topology {
        let t = Topology::new("app", vec!["p".into(), "r1".into(), "r2".into()]);
        t.record_primary_lsn(1000);
        t.record_replica(1, 1000);
        t.record_replica(2, 900);
        t
    }

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("garbage"), None);
    }

    #[test]
    fn read_your_writes_needs_replay_past_the_write() {
        let t = topo();
        assert_eq!(
            t.pick_replica(Some(950), LOOSE, None),
            ReplicaChoice::Replica(1)
        );
        assert_eq!(
            t.pick_replica(Some(1001), LOOSE, None),
            ReplicaChoice::BehindWrites
        );
        t.mark_unhealthy(1);
        t.mark_unhealthy(2);
        assert_eq!(
            t.pick_replica(None, LOOSE, None),
            ReplicaChoice::NoneHealthy
        );
    }

    #[test]
    fn least_in_flight_wins_and_lag_limit_applies() {
        let t = topo();
        t.backends[1].in_flight.store(5, Ordering::Relaxed);
        assert_eq!(t.pick_replica(None, LOOSE, None), ReplicaChoice::Replica(2));
        let strict = LagLimits {
            max_lag_bytes: 50,
            max_lag_ms: u64::MAX,
        };
        assert_eq!(
            t.pick_replica(None, strict, None),
            ReplicaChoice::Replica(1)
        );
        assert_eq!(
            t.pick_replica(None, strict, Some(1)),
            ReplicaChoice::NoneHealthy
        );
    }
}
