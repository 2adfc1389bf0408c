//! How many threads run sessions: `proxy.worker_threads` resolved against the cores
//! this process may use.
//!
//! `0` (the default) picks by the machine. With two cores or fewer, one thread runs
//! everything (tokio's current-thread runtime). On such a machine the proxy shares its
//! cores with PostgreSQL or the application. There, work stealing mostly means waking
//! the other thread to look for work, and that costs more than it gains: on the 2-core
//! bench VM one thread spent 11–21% less CPU per transaction than two work-stealing
//! workers, at the same throughput (`bench/runs/2026-12-03-late-threads.md`). With more
//! cores, tokio's work-stealing runtime gets one worker per core.

/// The runtime sessions run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionThreads {
    /// One thread runs every session and background task: no work stealing, and no
    /// wakeups of sibling threads. It caps the process at one core, as PgBouncer is.
    One,
    /// tokio's work-stealing runtime with this many workers.
    WorkStealing(usize),
}

/// With `worker_threads = 0`, machines with this many cores or fewer run sessions on
/// one thread.
pub const ONE_THREAD_UP_TO_CORES: usize = 2;

impl SessionThreads {
    /// The layout for `worker_threads` (`proxy.worker_threads`) on a machine where this
    /// process may use `cores` cores.
    pub fn resolve(worker_threads: usize, cores: usize) -> SessionThreads {
        match worker_threads {
            0 if cores <= ONE_THREAD_UP_TO_CORES => SessionThreads::One,
            0 => SessionThreads::WorkStealing(cores),
            1 => SessionThreads::One,
            workers => SessionThreads::WorkStealing(workers),
        }
    }

    /// The layout for `worker_threads` here: the cores counted are those this process
    /// may run on (CPU affinity and cgroup quota included).
    pub fn on_this_machine(worker_threads: usize) -> (SessionThreads, usize) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (Self::resolve(worker_threads, cores), cores)
    }

    /// How many threads run sessions.
    pub fn threads(self) -> usize {
        match self {
            SessionThreads::One => 1,
            SessionThreads::WorkStealing(workers) => workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_picks_one_thread_up_to_two_cores_and_work_stealing_above() {
        assert_eq!(SessionThreads::resolve(0, 1), SessionThreads::One);
        assert_eq!(SessionThreads::resolve(0, 2), SessionThreads::One);
        assert_eq!(
            SessionThreads::resolve(0, 3),
            SessionThreads::WorkStealing(3)
        );
        assert_eq!(
            SessionThreads::resolve(0, 16),
            SessionThreads::WorkStealing(16)
        );
    }

    #[test]
    fn an_explicit_count_wins_over_the_machine() {
        assert_eq!(SessionThreads::resolve(1, 16), SessionThreads::One);
        assert_eq!(
            SessionThreads::resolve(2, 2),
            SessionThreads::WorkStealing(2)
        );
        assert_eq!(
            SessionThreads::resolve(4, 1),
            SessionThreads::WorkStealing(4)
        );
        assert_eq!(SessionThreads::resolve(4, 1).threads(), 4);
        assert_eq!(SessionThreads::One.threads(), 1);
    }
}
