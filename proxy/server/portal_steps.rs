//! A result read in steps counted as one call, as `pg_stat_statements` counts it.
//!
//! An `Execute` with a row limit (JDBC's fetch size, asyncpg's cursors, tokio-postgres'
//! `query_portal`) stops at the limit with `PortalSuspended`, and the client executes
//! the same portal again for the next rows. Each step is one `Execute`, but the
//! statement ran once: its steps' time and rows add up under the portal until a step
//! completes it (or fails), the client closes it, a new `Bind` replaces the unnamed
//! portal, or its transaction ends (PostgreSQL drops every portal then). Only then is
//! it counted, once.
//!
//! This room owns the portals whose last step ended suspended: what each runs and
//! what its steps added up so far. A session keeps few (one per result it reads in
//! steps), bounded like the named portals' texts.

use std::time::Duration;

use crate::scan::Shape;
use crate::stats::clock::Instant;
use crate::stats::{CallContext, EventText, Served, StatementEvent, StatsRecorder};

/// Which portal an `Execute` ran: 0 for the unnamed portal, else a hash of its name.
pub(super) type PortalKey = u64;

/// The key of the portal named `name` (empty: the unnamed portal).
pub(super) fn portal_key(name: &[u8]) -> PortalKey {
    if name.is_empty() {
        0
    } else {
        crate::stats::process_hash(name) | 1
    }
}

/// Portals read in steps that a session keeps open at once; past it the oldest is
/// counted as it stands.
const OPEN_PORTALS_KEPT: usize = 16;

/// What is counted of one statement's run, but its text: a finished `Execute` or
/// simple query, or the steps of a portal up to now.
#[derive(Clone, Copy)]
pub(super) struct Tally {
    pub shape: Option<Shape>,
    /// A hash of the bound parameters (0: simple query).
    pub params: u64,
    pub session_key: u64,
    pub served: Served,
    /// Time spent executing: the steps' durations, not the client's pauses between.
    pub duration: Duration,
    pub rows: u64,
    pub error: bool,
    /// When its last step ended.
    pub ended: Instant,
}

impl Tally {
    /// Counts the run of `sql` as one call.
    pub fn record(&self, sql: &[u8], recorder: &StatsRecorder, client: u64) {
        recorder.record(&StatementEvent {
            sql,
            shape: self.shape,
            duration: self.duration,
            rows: self.rows,
            error: self.error,
            served: self.served,
            call: Some(CallContext {
                client,
                session_key: self.session_key,
                params: self.params,
                ended: self.ended,
            }),
        });
    }

    /// Adds the next step to the steps before it.
    fn add(&mut self, step: &Tally) {
        self.duration += step.duration;
        self.rows += step.rows;
        self.error |= step.error;
        self.ended = step.ended;
        self.served = step.served;
    }
}

/// A portal's text and its steps' tally.
pub(super) struct Run {
    pub sql: EventText,
    pub tally: Tally,
}

impl Run {
    pub fn record(&self, recorder: &StatsRecorder, client: u64) {
        self.tally.record(&self.sql, recorder, client);
    }
}

/// The portals of a session whose last step ended suspended.
#[derive(Default)]
pub(super) struct OpenPortals {
    open: Vec<(PortalKey, Run)>,
}

impl OpenPortals {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A step of portal `key` ended (`suspended`: at its row limit). Returns what is
    /// to be counted now: the portal's whole run when this step ended it, or the
    /// oldest open portal when keeping this one pushed it out.
    pub fn step(&mut self, key: PortalKey, step: Run, suspended: bool) -> Option<Run> {
        let run = match self.open.iter().position(|(open, _)| *open == key) {
            Some(at) => {
                let mut run = self.open.remove(at).1;
                run.tally.add(&step.tally);
                run
            }
            None => step,
        };
        if !suspended || run.tally.error {
            return Some(run);
        }
        let pushed_out = (self.open.len() == OPEN_PORTALS_KEPT).then(|| self.open.remove(0).1);
        self.open.push((key, run));
        pushed_out
    }

    /// Portal `key` is gone (closed, or the unnamed portal bound anew): its run so far.
    pub fn end(&mut self, key: PortalKey) -> Option<Run> {
        let at = self.open.iter().position(|(open, _)| *open == key)?;
        Some(self.open.remove(at).1)
    }

    /// Every portal is gone (the transaction ended): their runs so far.
    pub fn end_all(&mut self) -> impl Iterator<Item = Run> + '_ {
        self.open.drain(..).map(|(_, run)| run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rows: u64, micros: u64) -> Run {
        Run {
            sql: EventText::from("SELECT id FROM gears"),
            tally: Tally {
                shape: None,
                params: 7,
                session_key: 0,
                served: Served::Primary,
                duration: Duration::from_micros(micros),
                rows,
                error: false,
                ended: Instant::now(),
            },
        }
    }

    #[test]
    fn a_portals_steps_add_up_to_one_run_until_a_step_completes_it() {
        let mut open = OpenPortals::default();
        let c1 = portal_key(b"C_1");
        assert_ne!(c1, portal_key(b""), "named and unnamed portals differ");
        assert!(
            open.step(c1, step(3, 10), true).is_none(),
            "suspended: kept"
        );
        assert!(open.step(c1, step(3, 20), true).is_none());
        let done = open.step(c1, step(1, 5), false).expect("completed");
        assert_eq!(
            (done.tally.rows, done.tally.duration),
            (7, Duration::from_micros(35))
        );
        assert!(open.is_empty());
        // A statement that was never suspended is its own run.
        let single = open.step(0, step(2, 4), false).expect("one step");
        assert_eq!(single.tally.rows, 2);
        // A failing step ends the run, with the rows before it.
        open.step(c1, step(3, 10), true);
        let mut failed = step(0, 1);
        failed.tally.error = true;
        let run = open.step(c1, failed, true).expect("failed");
        assert!(run.tally.error);
        assert_eq!(run.tally.rows, 3);
        assert!(open.is_empty());
    }

    #[test]
    fn portals_closed_or_left_by_their_transaction_are_counted_as_they_stand() {
        let mut open = OpenPortals::default();
        open.step(portal_key(b"C_1"), step(3, 10), true);
        open.step(0, step(5, 10), true);
        assert!(open.end(portal_key(b"C_2")).is_none(), "never opened");
        assert_eq!(open.end(portal_key(b"C_1")).map(|r| r.tally.rows), Some(3));
        assert_eq!(
            open.end_all().map(|r| r.tally.rows).collect::<Vec<_>>(),
            [5]
        );
        assert!(open.is_empty());
        // Bounded: the oldest open portal is counted when one more is kept.
        for n in 0..OPEN_PORTALS_KEPT {
            assert!(open
                .step(
                    portal_key(format!("C_{n}").as_bytes()),
                    step(n as u64, 1),
                    true
                )
                .is_none());
        }
        let oldest = open.step(portal_key(b"C_new"), step(9, 1), true);
        assert_eq!(oldest.map(|r| r.tally.rows), Some(0), "C_0 counted");
        assert_eq!(open.open.len(), OPEN_PORTALS_KEPT);
    }
}
