//! A circuit breaker per backend. Failures (connections that cannot be opened, lag
//! polls that fail or time out, servers lost mid-request) are counted over a window;
//! at `failures` within `window` the circuit opens: the backend gets no reads, and
//! statements that must run on it fail fast instead of each waiting for a timeout.
//! After `open_for`, one request (or the lag monitor's next poll) is let through as a
//! probe (half-open); its success closes the circuit, its failure opens it again.
//!
//! A closed circuit costs one atomic load per decision.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a circuit opens and for how long; `failures = 0` disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    pub failures: u32,
    pub window: Duration,
    pub open_for: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }
}

/// As exported in `pgwarden_backend_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half-open",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug)]
struct Record {
    failures: VecDeque<Instant>,
    opened_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Circuit {
    policy: CircuitPolicy,
    state: AtomicU8,
    record: Mutex<Record>,
}

impl Circuit {
    pub fn new(policy: CircuitPolicy) -> Circuit {
        Circuit {
            policy,
            state: AtomicU8::new(CircuitState::Closed as u8),
            record: Mutex::new(Record {
                failures: VecDeque::new(),
                opened_at: None,
            }),
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.state.load(Ordering::Acquire) {
            0 => CircuitState::Closed,
            1 => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }

    /// Whether a request may go to the backend now. An open circuit whose time is up
    /// lets exactly one caller through as the probe (and turns half-open).
    pub fn allows(&self) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::HalfOpen => false,
            CircuitState::Open => {
                let record = self.lock();
                let due = record
                    .opened_at
                    .is_none_or(|at| at.elapsed() >= self.policy.open_for);
                due && self
                    .state
                    .compare_exchange(
                        CircuitState::Open as u8,
                        CircuitState::HalfOpen as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            }
        }
    }

    /// A failure of `backend`; returns true when this opened the circuit.
    pub fn record_failure(&self, backend: &str) -> bool {
        if self.policy.failures == 0 {
            return false;
        }
        let now = Instant::now();
        let mut record = self.lock();
        record.failures.push_back(now);
        while record
            .failures
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.policy.window)
        {
            record.failures.pop_front();
        }
        let open = match self.state() {
            CircuitState::HalfOpen => true,
            CircuitState::Closed => record.failures.len() >= self.policy.failures as usize,
            CircuitState::Open => {
                record.opened_at = Some(now);
                false
            }
        };
        if open {
            record.opened_at = Some(now);
            self.state
                .store(CircuitState::Open as u8, Ordering::Release);
            tracing::warn!(
                backend,
                failures = record.failures.len(),
                window_ms = self.policy.window.as_millis() as u64,
                "circuit opened: backend gets no requests until a probe succeeds"
            );
        }
        open
    }

    /// A success of `backend` (a request or a lag poll); closes a half-open circuit,
    /// or an open one whose time is up (the poll was the probe).
    pub fn record_success(&self, backend: &str) {
        let state = self.state();
        if state == CircuitState::Closed {
            return;
        }
        let mut record = self.lock();
        let due = record
            .opened_at
            .is_none_or(|at| at.elapsed() >= self.policy.open_for);
        if state == CircuitState::HalfOpen || due {
            record.failures.clear();
            record.opened_at = None;
            self.state
                .store(CircuitState::Closed as u8, Ordering::Release);
            tracing::info!(backend, "circuit closed: the probe succeeded");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(open_for_ms: u64) -> Circuit {
        Circuit::new(CircuitPolicy {
            failures: 2,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(open_for_ms),
        })
    }

    #[test]
    fn opens_at_the_threshold_and_stays_open_until_due() {
        let c = circuit(10_000);
        assert!(!c.record_failure("r1"));
        assert!(c.allows());
        assert!(c.record_failure("r1"));
        assert_eq!(c.state(), CircuitState::Open);
        assert!(!c.allows());
        c.record_success("r1"); // too early to count as a probe
        assert_eq!(c.state(), CircuitState::Open);
    }

    #[test]
    fn one_probe_when_due_then_closed_or_open_again() {
        let c = circuit(0);
        c.record_failure("r1");
        c.record_failure("r1");
        assert!(c.allows(), "the probe");
        assert_eq!(c.state(), CircuitState::HalfOpen);
        assert!(!c.allows(), "only one probe");
        c.record_failure("r1");
        assert_eq!(c.state(), CircuitState::Open);
        assert!(c.allows());
        c.record_success("r1");
        assert_eq!(c.state(), CircuitState::Closed);
        assert!(!c.record_failure("r1"), "failures were forgotten");
    }

    #[test]
    fn disabled_never_opens() {
        let c = Circuit::new(CircuitPolicy {
            failures: 0,
            ..CircuitPolicy::default()
        });
        for _ in 0..10 {
            c.record_failure("r1");
        }
        assert!(c.allows());
    }
}
