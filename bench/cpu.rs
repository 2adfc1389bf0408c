//! CPU time a process has spent (user + system), from `/proc/<pid>/stat`, to report a
//! proxy's CPU per transaction next to its throughput.

/// User plus system CPU seconds of `pid` so far; 0 if the process is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let Some(after_name) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); after the name they are 12th and 13th.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// [`cpu_seconds`] summed over `pids` (a proxy of several processes); 0 for none.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().copied().map(cpu_seconds).sum()
}
