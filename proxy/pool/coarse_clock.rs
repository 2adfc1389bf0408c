//! A cheap monotonic clock for the pool's idle and lifetime bookkeeping, which needs
//! milliseconds at best: how long a server connection has been parked or alive.
//!
//! Every transaction parks one connection and takes one back, so these reads are on
//! the plain path. `CLOCK_MONOTONIC_COARSE` is read from the vDSO's data page without
//! touching the TSC: about a quarter of the instructions of `Instant::now` (and of the
//! `Timespec` arithmetic after it), at the resolution of the kernel's tick (1–4 ms).

use std::time::Duration;

/// A point on the coarse monotonic clock (the time since boot, to the kernel's tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CoarseInstant(Duration);

#[cfg(any(target_os = "linux", target_os = "android"))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

impl CoarseInstant {
    pub fn now() -> CoarseInstant {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec; a monotonic clock id cannot fail.
        unsafe { libc::clock_gettime(CLOCK, &mut now) };
        CoarseInstant(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
    }

    /// The time from `earlier` to this instant, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: CoarseInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub fn elapsed(self) -> Duration {
        CoarseInstant::now().saturating_duration_since(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// It moves forward with the real clock, to within the kernel's tick.
    #[test]
    fn follows_the_monotonic_clock() {
        let coarse = CoarseInstant::now();
        let precise = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(60));
        let elapsed = coarse.elapsed();
        let real = precise.elapsed();
        assert!(
            elapsed + Duration::from_millis(20) >= real
                && elapsed <= real + Duration::from_millis(20),
            "coarse {elapsed:?}, real {real:?}"
        );
        assert!(CoarseInstant::now() >= coarse);
        assert_eq!(
            coarse.saturating_duration_since(CoarseInstant::now()),
            Duration::ZERO
        );
    }
}
