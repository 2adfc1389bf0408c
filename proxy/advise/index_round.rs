//! One index-advisor round for one database: plan the fingerprints that cost the most
//! total time (those not planned for longest first), within the EXPLAIN budget; for
//! each wasteful scan of a large table derive candidates, confirm them with hypopg
//! when installed, and keep the advice; drop advice an index now covers; then look for
//! unused and redundant indexes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use tokio_postgres::Client;

use super::advisory::{now_secs, Advisory};
use super::candidates::candidates;
use super::catalog::{self, IndexInfo, TableInfo};
use super::connection::NodeConnection;
use super::error::AdviseError;
use super::hypothetical::cheapest;
use super::index_advice::{Helped, IndexAdvice};
use super::plan::{explain, is_plannable_table_read};
use super::predicates::{self, Use};
use super::redundant;
use super::scans::wasteful_scans;
use crate::config::AdviseConfig;
use crate::stats::{QuerySummary, Snapshot};

/// Fingerprints considered per round (by total time) before the budget picks.
const CONSIDERED: usize = 500;
/// A filter that keeps more than this share of a table's rows is not worth an index.
const MAX_SELECTIVITY: f64 = 0.3;

/// What one round did, for measurements.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoundReport {
    pub explains: u32,
    pub catalog_queries: u32,
    pub elapsed_ms: f64,
    pub hypopg: bool,
    /// Statements skipped because their plan was larger than the advisor reads
    /// (`plan::MAX_PLAN_BYTES`).
    pub oversized_plans: u32,
    pub errors: Vec<String>,
}

pub struct DatabaseAdvisor {
    pub name: String,
    primary: NodeConnection,
    replicas: Vec<NodeConnection>,
    /// Fingerprint id → the round it was last planned in.
    planned_in: HashMap<String, u64>,
    advice: BTreeMap<(String, String, Vec<String>), IndexAdvice>,
    /// Table → (writes counted, when) for write rates between rounds.
    writes: HashMap<(String, String), (f64, Instant)>,
    redundant: Vec<Advisory>,
    round: u64,
}

struct RoundContext<'a> {
    settings: &'a AdviseConfig,
    total_ms: f64,
    report: RoundReport,
    tables: HashMap<(String, String), Option<TableInfo>>,
    indexes: HashMap<(String, String), Vec<IndexInfo>>,
}

impl DatabaseAdvisor {
    pub fn new(name: String, primary_url: String, replica_urls: Vec<String>) -> DatabaseAdvisor {
        DatabaseAdvisor {
            name,
            primary: NodeConnection::new(primary_url),
            replicas: replica_urls.into_iter().map(NodeConnection::new).collect(),
            planned_in: HashMap::new(),
            advice: BTreeMap::new(),
            writes: HashMap::new(),
            redundant: Vec::new(),
            round: 0,
        }
    }

    pub fn urls(&self) -> (String, Vec<String>) {
        (
            self.primary.url.clone(),
            self.replicas.iter().map(|r| r.url.clone()).collect(),
        )
    }

    /// Current advisories of this database.
    pub fn advisories(&self) -> Vec<Advisory> {
        self.advice
            .values()
            .map(|a| a.advisory(&self.name))
            .chain(self.redundant.iter().cloned())
            .collect()
    }

    pub async fn run(&mut self, settings: &AdviseConfig, snapshot: &Snapshot) -> RoundReport {
        self.round += 1;
        let started = Instant::now();
        let mut ctx = RoundContext {
            settings,
            total_ms: snapshot.queries.iter().map(|q| q.total_ms).sum(),
            report: RoundReport::default(),
            tables: HashMap::new(),
            indexes: HashMap::new(),
        };
        if let Err(e) = self.plan_fingerprints(&mut ctx, snapshot).await {
            ctx.report.errors.push(e.to_string());
            self.replicas.iter_mut().for_each(NodeConnection::reset);
        }
        if let Err(e) = self.refresh(&mut ctx).await {
            ctx.report.errors.push(e.to_string());
            self.primary.reset();
        }
        if let Err(e) = self.find_redundant(&mut ctx, snapshot).await {
            ctx.report.errors.push(e.to_string());
            self.primary.reset();
        }
        // No connection is kept between rounds: an idle one would count as a session
        // using the database, and `DROP DATABASE` through the proxy would wait for it.
        self.primary.reset();
        self.replicas.iter_mut().for_each(NodeConnection::reset);
        ctx.report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        for error in &ctx.report.errors {
            tracing::warn!(database = %self.name, %error, "index advisor round");
        }
        ctx.report
    }

    /// Connects the node plans run on: the first replica that answers, else the
    /// primary. `Some(i)` for replica `i`.
    async fn connect_planner(&mut self) -> Result<Option<usize>, AdviseError> {
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            if replica.client().await.is_ok() {
                return Ok(Some(i));
            }
        }
        self.primary.client().await?;
        Ok(None)
    }

    async fn plan_fingerprints(
        &mut self,
        ctx: &mut RoundContext<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), AdviseError> {
        let mut queue: Vec<&QuerySummary> = snapshot
            .queries
            .iter()
            .filter(|q| {
                q.plan_sample
                    .as_deref()
                    .is_some_and(is_plannable_table_read)
            })
            .take(CONSIDERED)
            .collect();
        queue.sort_by(|a, b| {
            let last = |q: &QuerySummary| self.planned_in.get(&q.id).copied().unwrap_or(0);
            last(a)
                .cmp(&last(b))
                .then(b.total_ms.total_cmp(&a.total_ms))
        });
        let live: HashSet<&str> = snapshot.queries.iter().map(|q| q.id.as_str()).collect();
        self.planned_in.retain(|id, _| live.contains(id.as_str()));
        let round = self.round;
        let budget = ctx.settings.explain_budget;
        let planner = self.connect_planner().await?;
        let node = match planner {
            Some(i) => &self.replicas[i],
            None => &self.primary,
        };
        let client = node
            .current()
            .ok_or(AdviseError::Timeout("planner connection"))?;
        ctx.report.hypopg = catalog::hypopg_installed(client).await?;
        ctx.report.catalog_queries += 1;
        let mut found: Vec<(String, Option<IndexAdvice>)> = Vec::new();
        let mut planned = Vec::new();
        for query in queue {
            if ctx.report.explains >= budget {
                break;
            }
            let sample = query.plan_sample.as_deref().unwrap_or_default();
            ctx.report.explains += 1;
            planned.push(query.id.clone());
            let plan = match explain(client, sample).await {
                Ok(plan) => plan,
                Err(AdviseError::Query { source, .. }) if source.as_db_error().is_some() => {
                    // Not this database's statement, or not plannable: next.
                    continue;
                }
                Err(AdviseError::PlanTooLarge(bytes)) => {
                    tracing::debug!(query = %query.id, bytes, "plan too large to read; skipped");
                    ctx.report.oversized_plans += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut best: Option<IndexAdvice> = None;
            for scan in wasteful_scans(&plan.root) {
                let key = (scan.schema.clone(), scan.table.clone());
                let Some(table) = cached_table(ctx, client, &key).await? else {
                    continue;
                };
                if table.rows < ctx.settings.min_table_rows as f64 {
                    continue;
                }
                let Some(predicates) = predicates::of_sql(sample) else {
                    continue;
                };
                let has = |c: &str| table.columns.iter().any(|t| t == c);
                let of = |kind| predicates.of(&scan.alias, &scan.table, kind, has);
                let (equality, join, range, sort) = (
                    of(Use::Equality),
                    of(Use::Join),
                    of(Use::Range),
                    of(Use::Sort),
                );
                if scan.filtered && scan.rows > MAX_SELECTIVITY * table.rows && sort.is_empty() {
                    continue;
                }
                // Unfiltered, unsorted scans (hash joins over whole tables) are advised
                // only when hypopg can show an index actually wins.
                if !ctx.report.hypopg && !scan.filtered && sort.is_empty() {
                    continue;
                }
                let existing = cached_indexes(ctx, client, &key).await?;
                let keys = candidates(&equality, &join, &range, &sort, &existing);
                if keys.is_empty() {
                    continue;
                }
                let mut advice = IndexAdvice {
                    schema: scan.schema.clone(),
                    table: scan.table.clone(),
                    columns: keys[0].clone(),
                    confirmed: false,
                    estimated_bytes: None,
                    table_rows: table.rows,
                    writes_per_second: None,
                    helped: BTreeMap::new(),
                    first_seen: now_secs(),
                    last_confirmed: now_secs(),
                };
                let mut cost_after = None;
                if ctx.report.hypopg {
                    let winner = cheapest(
                        client,
                        (&scan.schema, &scan.table),
                        &keys,
                        sample,
                        (&mut ctx.report.explains, budget),
                    )
                    .await?;
                    let Some(winner) = winner else {
                        continue;
                    };
                    if winner.cost > plan.total_cost * (1.0 - ctx.settings.min_cost_savings) {
                        continue;
                    }
                    advice.columns = winner.columns;
                    advice.confirmed = true;
                    advice.estimated_bytes = winner.estimated_bytes;
                    cost_after = Some(winner.cost);
                }
                advice.helped.insert(
                    query.id.clone(),
                    Helped {
                        query: query.query.clone(),
                        total_ms: query.total_ms,
                        share: if ctx.total_ms > 0.0 {
                            query.total_ms / ctx.total_ms
                        } else {
                            0.0
                        },
                        seconds: now_secs().saturating_sub(query.first_seen),
                        cost_before: plan.total_cost,
                        cost_after,
                    },
                );
                // One advice per statement: the scan whose index saves the most.
                if best
                    .as_ref()
                    .is_none_or(|b| advice_saving(&advice) > advice_saving(b))
                {
                    best = Some(advice);
                }
            }
            found.push((query.id.clone(), best));
        }
        for id in planned {
            self.planned_in.insert(id, round);
        }
        for (id, advice) in found {
            for existing in self.advice.values_mut() {
                existing.helped.remove(&id);
            }
            if let Some(advice) = advice {
                let entry = self
                    .advice
                    .entry(advice.key())
                    .or_insert_with(|| advice.clone());
                entry.helped.extend(advice.helped);
                entry.confirmed = advice.confirmed;
                entry.estimated_bytes = advice.estimated_bytes.or(entry.estimated_bytes);
                entry.table_rows = advice.table_rows;
                entry.last_confirmed = now_secs();
            }
        }
        self.advice.retain(|_, a| !a.helped.is_empty());
        Ok(())
    }

    /// Drops advice an index now covers; refreshes write rates (on the primary).
    async fn refresh(&mut self, ctx: &mut RoundContext<'_>) -> Result<(), AdviseError> {
        if self.advice.is_empty() {
            return Ok(());
        }
        let client = self.primary.client().await?;
        let tables: HashSet<(String, String)> = self
            .advice
            .values()
            .map(|a| (a.schema.clone(), a.table.clone()))
            .collect();
        let mut rates = HashMap::new();
        let mut indexes = HashMap::new();
        for (schema, table) in tables {
            ctx.report.catalog_queries += 2;
            indexes.insert(
                (schema.clone(), table.clone()),
                catalog::indexes(client, Some((&schema, &table))).await?,
            );
            if let Some((count, seconds)) = catalog::writes(client, &schema, &table).await? {
                let now = Instant::now();
                let key = (schema.clone(), table.clone());
                let rate = match self.writes.get(&key) {
                    Some((previous, at)) if now > *at => {
                        (count - previous).max(0.0) / now.duration_since(*at).as_secs_f64()
                    }
                    _ => count / seconds.max(1.0),
                };
                self.writes.insert(key.clone(), (count, now));
                rates.insert(key, rate);
            }
        }
        self.advice.retain(|_, advice| {
            let key = (advice.schema.clone(), advice.table.clone());
            let covered = indexes
                .get(&key)
                .and_then(|list| catalog::covered(list, &advice.columns));
            advice.writes_per_second = rates.get(&key).copied();
            covered.is_none()
        });
        Ok(())
    }

    async fn find_redundant(
        &mut self,
        ctx: &mut RoundContext<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), AdviseError> {
        let now = now_secs();
        let indexes = catalog::indexes(self.primary.client().await?, None).await?;
        let mut scans: HashMap<(String, String), i64> = HashMap::new();
        let primary_scans = catalog::index_scans(self.primary.client().await?).await?;
        ctx.report.catalog_queries += 2;
        for (schema, index, count) in primary_scans {
            *scans.entry((schema, index)).or_default() += count;
        }
        for replica in &mut self.replicas {
            // A replica that does not answer: its scans are unknown, so nothing is
            // called unused this round.
            let Ok(client) = replica.client().await else {
                scans.clear();
                break;
            };
            ctx.report.catalog_queries += 1;
            for (schema, index, count) in catalog::index_scans(client).await? {
                *scans.entry((schema, index)).or_default() += count;
            }
        }
        let workload: HashSet<String> = snapshot
            .queries
            .iter()
            .take(CONSIDERED)
            .filter_map(|q| q.plan_sample.as_deref())
            .flat_map(predicates::tables_of_sql)
            .collect();
        let first_seen: HashMap<String, u64> = self
            .redundant
            .iter()
            .filter_map(|a| Some((a.ddl.clone()?, a.first_seen)))
            .collect();
        let mut found = redundant::unused(&self.name, &indexes, &scans, &workload, now);
        found.extend(redundant::duplicates(&self.name, &indexes, now));
        for advisory in &mut found {
            if let Some(seen) = advisory.ddl.as_ref().and_then(|d| first_seen.get(d)) {
                advisory.first_seen = *seen;
            }
        }
        self.redundant = found;
        Ok(())
    }
}

fn advice_saving(advice: &IndexAdvice) -> f64 {
    advice
        .helped
        .values()
        .map(|h| h.cost_before - h.cost_after.unwrap_or(h.cost_before * 0.5))
        .sum()
}

async fn cached_table(
    ctx: &mut RoundContext<'_>,
    client: &Client,
    key: &(String, String),
) -> Result<Option<TableInfo>, AdviseError> {
    if let Some(found) = ctx.tables.get(key) {
        return Ok(found.clone());
    }
    ctx.report.catalog_queries += 1;
    let found = catalog::table(client, &key.0, &key.1).await?;
    ctx.tables.insert(key.clone(), found.clone());
    Ok(found)
}

async fn cached_indexes(
    ctx: &mut RoundContext<'_>,
    client: &Client,
    key: &(String, String),
) -> Result<Vec<IndexInfo>, AdviseError> {
    if let Some(found) = ctx.indexes.get(key) {
        return Ok(found.clone());
    }
    ctx.report.catalog_queries += 1;
    let found = catalog::indexes(client, Some((&key.0, &key.1))).await?;
    ctx.indexes.insert(key.clone(), found.clone());
    Ok(found)
}
