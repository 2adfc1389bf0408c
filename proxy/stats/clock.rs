//! The statistics' clock: when each statement started and ended, and the N+1 detector's
//! bursts and idle checks, which compare those times.
//!
//! Every statement reads it twice. `std::time::Instant` costs a `clock_gettime` (the
//! vDSO: about 90 instructions with its wrapper) per read and a checked `timespec`
//! subtraction per duration; quanta reads the CPU's time-stamp counter and scales it
//! (about 20), and a duration is a subtraction of two `u64`s. Where the CPU has no
//! invariant time-stamp counter, quanta falls back to the monotonic clock, so the
//! times are right either way. One clock for the whole process, calibrated when the
//! proxy starts ([`calibrate`]), not by the first statement.

use std::sync::LazyLock;

/// A point in time on the statistics' clock.
pub type Instant = quanta::Instant;

static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// Now, on the statistics' clock.
#[inline]
pub fn now() -> Instant {
    CLOCK.now()
}

/// Calibrates the clock against the monotonic clock (up to a few hundred ms the first
/// time in a process), so no statement waits for it.
pub fn calibrate() {
    LazyLock::force(&CLOCK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_on_the_clock_follow_the_monotonic_clock() {
        // Our two reads lie between the monotonic clock's two reads, around a sleep.
        let std_start = std::time::Instant::now();
        let start = now();
        std::thread::sleep(Duration::from_millis(30));
        let end = now();
        let std_elapsed = std_start.elapsed().as_secs_f64();
        let ours = end.saturating_duration_since(start).as_secs_f64();
        assert!(ours >= 0.030, "{ours}");
        assert!(
            ours <= std_elapsed * 1.01,
            "ours {ours}, monotonic {std_elapsed}"
        );
        assert_eq!(start.saturating_duration_since(end), Duration::ZERO);
    }
}
