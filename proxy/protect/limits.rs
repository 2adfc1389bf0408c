//! `[[limits]]` rules at run time: which rules a statement matches, and admission
//! under each (a semaphore for `max_concurrent`, a token bucket for
//! `rate_per_second`), waiting at most the rule's `max_wait_ms`. Counters per rule,
//! per group and per fingerprint for `SHOW LIMITS` and metrics.
//!
//! No lock is held across an `.await`: the bucket reserves a token under a short
//! std mutex and the statement then sleeps until its token is due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{parse_fingerprint_id, LimitRule};
use crate::stats::fingerprint::FingerprintId;

/// Who runs a statement, as rules match it.
#[derive(Debug, Clone, Copy)]
pub struct StatementContext<'a> {
    pub tenant: Option<&'a str>,
    pub role: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
    pub fingerprint: Option<FingerprintId>,
}

/// Which limit refused a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Concurrency,
    Rate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRefusal {
    pub rule: String,
    pub kind: LimitKind,
    pub waited_ms: u64,
    pub limit: String,
}

/// Places held under concurrency limits until the statement (transaction) ends.
#[derive(Default)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
}

#[derive(Debug, Default)]
pub struct RuleCounters {
    pub admitted: AtomicU64,
    pub delayed: AtomicU64,
    pub refused: AtomicU64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RuleState {
    pub rule: LimitRule,
    fingerprint: Option<FingerprintId>,
    concurrency: Option<Arc<Semaphore>>,
    bucket: Mutex<Bucket>,
    pub counters: RuleCounters,
}

/// Most groups and fingerprints whose refusals are counted separately.
const MAX_KEYS: usize = 1_000;

/// The rules of one configuration (rebuilt on reload).
#[derive(Default)]
pub struct Limits {
    pub rules: Vec<RuleState>,
    /// Whether a rule matches on fingerprints (then statements are fingerprinted).
    pub needs_fingerprint: bool,
    /// Refusals per group (tenant or role) and per fingerprint, bounded.
    pub refused_by_group: Mutex<BTreeMap<String, u64>>,
    pub refused_by_fingerprint: Mutex<BTreeMap<FingerprintId, u64>>,
}

impl Limits {
    pub fn new(rules: &[LimitRule]) -> Limits {
        let rules: Vec<RuleState> = rules
            .iter()
            .map(|rule| RuleState {
                fingerprint: rule.fingerprint.as_deref().and_then(parse_fingerprint_id),
                concurrency: (rule.max_concurrent > 0)
                    .then(|| Arc::new(Semaphore::new(rule.max_concurrent as usize))),
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(rule.burst.max(1)),
                    at: Instant::now(),
                }),
                counters: RuleCounters::default(),
                rule: rule.clone(),
            })
            .collect();
        Limits {
            needs_fingerprint: rules.iter().any(|r| r.fingerprint.is_some()),
            rules,
            ..Limits::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Admits a statement under every rule it matches, or refuses it once a rule's
    /// wait is over.
    pub async fn admit(&self, context: &StatementContext<'_>) -> Result<Admission, LimitRefusal> {
        let mut admission = Admission::default();
        let started = Instant::now();
        for state in self.rules.iter().filter(|r| r.matches(context)) {
            match state.admit(started).await {
                Ok(permit) => {
                    admission._permits.extend(permit);
                    state.counters.admitted.fetch_add(1, Ordering::Relaxed);
                }
                Err(refusal) => {
                    state.counters.refused.fetch_add(1, Ordering::Relaxed);
                    self.note_refused(context);
                    metrics::counter!("pgwarden_limit_refusals_total", "rule" => state.rule.name.clone())
                        .increment(1);
                    return Err(refusal);
                }
            }
        }
        Ok(admission)
    }

    fn note_refused(&self, context: &StatementContext<'_>) {
        let group = context.tenant.map_or_else(
            || format!("role:{}", context.role),
            |t| format!("tenant:{t}"),
        );
        let mut groups = self
            .refused_by_group
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if groups.len() < MAX_KEYS || groups.contains_key(&group) {
            *groups.entry(group).or_default() += 1;
        }
        drop(groups);
        if let Some(id) = context.fingerprint {
            let mut ids = self
                .refused_by_fingerprint
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if ids.len() < MAX_KEYS || ids.contains_key(&id) {
                *ids.entry(id).or_default() += 1;
            }
        }
    }
}

impl RuleState {
    fn matches(&self, c: &StatementContext<'_>) -> bool {
        let rule = &self.rule;
        rule.tenant.as_deref().is_none_or(|t| c.tenant == Some(t))
            && rule.role.as_deref().is_none_or(|r| c.role == r)
            && rule.database.as_deref().is_none_or(|d| c.database == d)
            && rule
                .application_name
                .as_deref()
                .is_none_or(|a| c.application_name == a)
            && self.fingerprint.is_none_or(|f| c.fingerprint == Some(f))
    }

    /// Statements running under this rule now.
    pub fn running(&self) -> u32 {
        self.concurrency.as_ref().map_or(0, |s| {
            self.rule.max_concurrent - s.available_permits() as u32
        })
    }

    async fn admit(&self, started: Instant) -> Result<Option<OwnedSemaphorePermit>, LimitRefusal> {
        let deadline = started + Duration::from_millis(self.rule.max_wait_ms);
        let mut delayed = false;
        if self.rule.rate_per_second > 0.0 {
            let wait = self
                .reserve_token(deadline)
                .map_err(|()| self.refusal(LimitKind::Rate, started))?;
            if !wait.is_zero() {
                delayed = true;
                tokio::time::sleep(wait).await;
            }
        }
        let permit = match &self.concurrency {
            None => None,
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    delayed = true;
                    match tokio::time::timeout_at(
                        deadline.into(),
                        semaphore.clone().acquire_owned(),
                    )
                    .await
                    {
                        Ok(Ok(permit)) => Some(permit),
                        _ => return Err(self.refusal(LimitKind::Concurrency, started)),
                    }
                }
            },
        };
        if delayed {
            self.counters.delayed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(permit)
    }

    /// Takes a token now or reserves the next one; how long until it is due, or
    /// `Err` when that is past `deadline`.
    fn reserve_token(&self, deadline: Instant) -> Result<Duration, ()> {
        let rate = self.rule.rate_per_second;
        let burst = f64::from(self.rule.burst.max(1));
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        if now + wait > deadline {
            return Err(());
        }
        // Reserved: the token that refills during `wait` is this statement's.
        bucket.tokens -= 1.0;
        Ok(wait)
    }

    fn refusal(&self, kind: LimitKind, started: Instant) -> LimitRefusal {
        let limit = match kind {
            LimitKind::Concurrency => format!("max_concurrent = {}", self.rule.max_concurrent),
            LimitKind::Rate => format!(
                "rate_per_second = {}, burst = {}",
                self.rule.rate_per_second,
                self.rule.burst.max(1)
            ),
        };
        LimitRefusal {
            rule: self.rule.name.clone(),
            kind,
            waited_ms: started.elapsed().as_millis() as u64,
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context<'a>(tenant: Option<&'a str>) -> StatementContext<'a> {
        StatementContext {
            tenant,
            role: "app",
            database: "db",
            application_name: "",
            fingerprint: None,
        }
    }

    #[tokio::test]
    async fn concurrency_waits_then_refuses() {
        let limits = Limits::new(&[LimitRule {
            name: "t1".into(),
            tenant: Some("1".into()),
            max_concurrent: 1,
            max_wait_ms: 50,
            ..LimitRule::default()
        }]);
        let held = limits.admit(&context(Some("1"))).await.unwrap();
        let started = Instant::now();
        let refused = limits.admit(&context(Some("1"))).await.err().unwrap();
        assert_eq!(
            (refused.rule.as_str(), refused.kind),
            ("t1", LimitKind::Concurrency)
        );
        assert!(started.elapsed() >= Duration::from_millis(45));
        // Another tenant is not matched.
        limits.admit(&context(Some("2"))).await.unwrap();
        drop(held);
        limits.admit(&context(Some("1"))).await.unwrap();
        assert_eq!(limits.rules[0].counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            limits.refused_by_group.lock().unwrap().get("tenant:1"),
            Some(&1)
        );
    }

    #[tokio::test]
    async fn rate_allows_the_burst_then_paces() {
        let limits = Limits::new(&[LimitRule {
            name: "r".into(),
            role: Some("app".into()),
            rate_per_second: 20.0,
            burst: 2,
            max_wait_ms: 0,
            ..LimitRule::default()
        }]);
        limits.admit(&context(None)).await.unwrap();
        limits.admit(&context(None)).await.unwrap();
        let refused = limits.admit(&context(None)).await.err().unwrap();
        assert_eq!(refused.kind, LimitKind::Rate);
        tokio::time::sleep(Duration::from_millis(60)).await;
        limits.admit(&context(None)).await.unwrap();
    }

    #[tokio::test]
    async fn a_rate_wait_within_the_bound_is_served() {
        let limits = Limits::new(&[LimitRule {
            name: "r".into(),
            rate_per_second: 50.0,
            burst: 1,
            max_wait_ms: 200,
            ..LimitRule::default()
        }]);
        let started = Instant::now();
        for _ in 0..4 {
            limits.admit(&context(None)).await.unwrap();
        }
        // 1 at once, 3 paced 20 ms apart.
        assert!(
            started.elapsed() >= Duration::from_millis(55),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(limits.rules[0].counters.delayed.load(Ordering::Relaxed), 3);
    }
}
