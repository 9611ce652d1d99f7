//! What the kernel knows about a process: CPU time at nanosecond resolution (the sum of every
//! thread's `schedstat`) and resident memory (`VmRSS`, `VmHWM`), read from /proc.

use std::time::Duration;

/// CPU time all threads of `pid` have run so far. Threads that have exited are not counted, so
/// deltas are taken over periods in which the process keeps its worker threads (tokio does).
pub fn cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(nanos)
}

/// Clock ticks `pid` has spent in user mode and in the kernel (`utime`, `stime` of
/// `/proc/<pid>/stat`). Tick resolution: used for the split of the `cpu` total, not as a total.
pub fn user_and_kernel_ticks(pid: u32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // Fields after the command name (which may hold spaces), counted from `state`, field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (field(14), field(15))
}

/// Context switches (voluntary and not) of all threads of `pid` so far.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Resident set size now, bytes.
pub fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident set size so far, bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let spent = cpu(me);
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        // A running thread's account is brought up to date when it is switched out.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(cpu(me) > spent, "busy work shows as CPU time");
        let (user, _) = user_and_kernel_ticks(me);
        assert!(user > 0, "50 million additions take more than a clock tick in user mode");
        assert!(rss(me) > 1 << 20);
        assert!(peak_rss(me) >= rss(me));
    }
}
