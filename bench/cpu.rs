//! CPU time a process has spent, user and system apart, from `/proc/<pid>/stat`, to
//! report a proxy's CPU per transaction next to its throughput.

/// CPU seconds a process spent, in user space and in the kernel on its behalf.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

impl CpuTime {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was spent between `earlier` and this reading.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// The CPU time `pid` has spent so far; zero if the process is gone.
pub fn cpu_time(pid: u32) -> CpuTime {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return CpuTime::default();
    };
    parse_stat(
        &stat,
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64,
    )
}

/// utime and stime of one `/proc/<pid>/stat` line, in seconds.
fn parse_stat(stat: &str, ticks_per_second: f64) -> CpuTime {
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let Some(after_name) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return CpuTime::default();
    };
    // Fields 14 (utime) and 15 (stime) of proc(5); after the name they are 12th and 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut seconds = || {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .map_or(0.0, |ticks| ticks as f64 / ticks_per_second)
    };
    let user = seconds();
    let system = seconds();
    CpuTime { user, system }
}

/// [`cpu_time`] summed over `pids` (a proxy of several processes); zero for none.
pub fn cpu_time_of(pids: &[u32]) -> CpuTime {
    pids.iter()
        .copied()
        .map(cpu_time)
        .fold(CpuTime::default(), |sum, t| CpuTime {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
}

/// User plus system CPU seconds of `pids` so far.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    cpu_time_of(pids).total()
}
