//! Advisors: background work that turns what the statistics show into advice.
//!
//! - *Index advice* (`index_round` and the files it uses): every `advise.interval_ms`,
//!   plan the costliest fingerprints on the advisor's own connections (a replica when
//!   there is one), derive candidate indexes from their predicates, confirm them with
//!   hypopg, and find unused and redundant indexes.
//! - *N+1 advice* (`n_plus_one`, `burst`): fed every statement by the statistics
//!   aggregator, on its task, never by the sessions directly.
//!
//! This room reads the statistics snapshot and the configuration; it never touches a
//! client's session, a pooled server connection or a client's prepared statements.

pub mod advisory;
mod burst;
mod candidates;
mod catalog;
mod connection;
mod error;
mod hypothetical;
mod index_advice;
mod index_round;
pub mod n_plus_one;
mod plan;
mod predicates;
mod redundant;
pub mod render;
mod rewrite;
mod scans;
mod traceparent;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use advisory::{Advisory, AdvisoryKind};
pub use error::AdviseError;
pub use index_round::RoundReport;

use crate::config::Config;
use crate::stats::Snapshot;
use index_round::DatabaseAdvisor;

/// The advisories readers see, and the index advisor's state between rounds.
pub struct Advisors {
    /// Published by the N+1 detector on the statistics task.
    pub n_plus_one: Arc<ArcSwap<Vec<Advisory>>>,
    index: ArcSwap<Vec<Advisory>>,
    rounds: tokio::sync::Mutex<BTreeMap<String, DatabaseAdvisor>>,
    last_round: ArcSwap<BTreeMap<String, RoundReport>>,
}

impl Default for Advisors {
    fn default() -> Self {
        Advisors {
            n_plus_one: Arc::new(ArcSwap::from_pointee(Vec::new())),
            index: ArcSwap::from_pointee(Vec::new()),
            rounds: tokio::sync::Mutex::new(BTreeMap::new()),
            last_round: ArcSwap::from_pointee(BTreeMap::new()),
        }
    }
}

impl Advisors {
    /// Every advisory, highest score first (index advice, N+1, then the index
    /// clean-ups, which save writes rather than time).
    pub fn list(&self) -> Vec<Advisory> {
        let mut all: Vec<Advisory> = self.index.load().as_ref().clone();
        all.extend(self.n_plus_one.load().iter().cloned());
        all.sort_by(|a, b| {
            let cleanup = |x: &Advisory| {
                matches!(
                    x.kind,
                    AdvisoryKind::UnusedIndex | AdvisoryKind::DuplicateIndex
                )
            };
            cleanup(a)
                .cmp(&cleanup(b))
                .then(b.score.total_cmp(&a.score))
                .then(a.kind.cmp(&b.kind))
        });
        all
    }

    /// What the last round did, per database.
    pub fn last_round(&self) -> Arc<BTreeMap<String, RoundReport>> {
        self.last_round.load_full()
    }

    /// Runs one index-advisor round over every database now (rounds never overlap).
    pub async fn run_round(
        &self,
        config: &Config,
        snapshot: &Snapshot,
    ) -> BTreeMap<String, RoundReport> {
        let mut rounds = self.rounds.lock().await;
        rounds.retain(|name, _| config.databases.contains_key(name));
        let mut reports = BTreeMap::new();
        for (name, db) in &config.databases {
            let urls = (db.primary.clone(), db.replicas.clone());
            let advisor = rounds.entry(name.clone()).or_insert_with(|| {
                DatabaseAdvisor::new(name.clone(), urls.0.clone(), urls.1.clone())
            });
            if advisor.urls() != urls {
                *advisor = DatabaseAdvisor::new(name.clone(), urls.0, urls.1);
            }
            let report = advisor.run(&config.advise, snapshot).await;
            metrics::counter!("pgwarden_advise_explains_total")
                .increment(u64::from(report.explains));
            reports.insert(name.clone(), report);
        }
        let all: Vec<Advisory> = rounds
            .values()
            .flat_map(DatabaseAdvisor::advisories)
            .collect();
        self.index.store(Arc::new(all));
        self.last_round.store(Arc::new(reports.clone()));
        reports
    }
}

/// Runs index-advisor rounds every `advise.interval_ms` (read anew each time, so a
/// reload applies) until the runtime is gone. The first round waits one interval.
pub fn spawn(runtime: Weak<crate::Runtime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let interval = match runtime.upgrade() {
                Some(r) => Duration::from_millis(r.config().advise.interval_ms.max(10)),
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            let config = runtime.config();
            if !config.advise.enabled || !runtime.stats.enabled {
                continue;
            }
            runtime.stats.flush().await;
            let snapshot = runtime.stats.snapshot();
            runtime.advisors.run_round(&config, &snapshot).await;
        }
    })
}
