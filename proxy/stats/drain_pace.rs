//! How long the aggregator sleeps between two collections of the recording shards.
//!
//! Each collection is a timer, and on tokio a timer that becomes the earliest one wakes
//! the I/O driver with a write to its eventfd (and, with two workers, often the other
//! worker with a futex). A fixed 2 ms pause cost a lightly loaded proxy about 0.3 of
//! each of those calls per transaction at one client, where the socket calls are
//! four. A long pause is no better under load if a collection is much work: draining
//! 20 ms worth of events at 60k statements/s held a worker for most of a millisecond
//! and stalled every client (bench/runs/2026-12-01-stats-drain.md), when each event
//! was fingerprinted by the aggregator. Now the shards have done that, and a collected
//! statement costs the aggregator its histogram entry (tens of instructions). So the
//! pause follows the rate: long enough to gather about [`TARGET_DRAIN`] statements,
//! within [`BUSY_PAUSE`] and [`IDLE_PAUSE`]. And a proxy with nothing to record stops
//! the timer ([`may_park`]): the aggregator then waits for the next statement to wake
//! it, so an idle pgwarden is not woken 50 times a second.

use std::time::Duration;

/// The shortest pause, for the busiest proxy.
pub(super) const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause: a trickle of statements wakes the aggregator 50 times a second.
pub(super) const IDLE_PAUSE: Duration = Duration::from_millis(20);
/// How long a parked aggregator waits for the next statement before its housekeeping
/// (the N+1 detector's idle check, which has the same period, and the gauges).
pub(super) const PARKED_TICK: Duration = Duration::from_millis(250);
/// Statements one collection should take: a few tens of microseconds of work.
const TARGET_DRAIN: u128 = 512;

/// The pause before the next collection, given how many statements the last one took
/// and how long ago the collection before it ran.
pub(super) fn next_pause(
    previous: Duration,
    drained: usize,
    since_last_drain: Duration,
) -> Duration {
    if drained == 0 {
        return (previous * 2).min(IDLE_PAUSE);
    }
    let gather_nanos = since_last_drain.as_nanos() * TARGET_DRAIN / drained as u128;
    let gather = Duration::from_nanos(u64::try_from(gather_nanos).unwrap_or(u64::MAX));
    gather.clamp(BUSY_PAUSE, IDLE_PAUSE)
}

/// Whether the aggregator may stop draining on a timer and wait on the channel
/// itself: the last drain, at the idle pause already, found nothing, and everything
/// drained before is published. The next sender then wakes it, once, and a quiet
/// proxy wakes it [`PARKED_TICK`] apart instead of every [`IDLE_PAUSE`].
pub(super) fn may_park(pause: Duration, drained: usize, unpublished: bool) -> bool {
    pause >= IDLE_PAUSE && drained == 0 && !unpublished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_drained_doubles_the_pause_up_to_the_idle_pause() {
        assert_eq!(next_pause(BUSY_PAUSE, 0, ms(2)), ms(4));
        assert_eq!(next_pause(ms(16), 0, ms(16)), IDLE_PAUSE);
        assert_eq!(next_pause(IDLE_PAUSE, 0, IDLE_PAUSE), IDLE_PAUSE);
    }

    #[test]
    fn a_trickle_of_statements_waits_the_idle_pause() {
        // 20,000 statements a second: 400 in 20 ms, fewer than one collection's worth.
        assert_eq!(next_pause(IDLE_PAUSE, 400, ms(20)), IDLE_PAUSE);
    }

    #[test]
    fn a_steady_rate_gathers_about_one_target_drain() {
        // 32,000 statements a second: 512 arrive in 16 ms.
        assert_eq!(next_pause(IDLE_PAUSE, 640, ms(20)), ms(16));
        assert_eq!(next_pause(ms(16), 512, ms(16)), ms(16));
    }

    #[test]
    fn a_flood_drains_every_busy_pause() {
        // 256,000 statements a second and more: never longer apart than the busy pause.
        assert_eq!(next_pause(ms(4), 1200, ms(4)), BUSY_PAUSE);
        assert_eq!(next_pause(BUSY_PAUSE, 1024, ms(1)), BUSY_PAUSE);
        assert_eq!(next_pause(BUSY_PAUSE, usize::MAX, ms(3)), BUSY_PAUSE);
        // A stalled task (a long gap, few events) still pauses at most the idle pause.
        assert_eq!(next_pause(BUSY_PAUSE, 1, Duration::MAX), IDLE_PAUSE);
    }

    #[test]
    fn only_a_quiet_published_aggregator_parks() {
        assert!(may_park(IDLE_PAUSE, 0, false));
        // Still slowing down from a busy stretch, or statements just collected.
        assert!(!may_park(ms(16), 0, false));
        assert!(!may_park(IDLE_PAUSE, 1, false));
        // Collected statements not published yet: keep the timer until they are.
        assert!(!may_park(IDLE_PAUSE, 0, true));
    }
}
