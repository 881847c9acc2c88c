//! CPU time, two ways. `/proc/stat` gives each CPU's time by kind (user, system, softirq...),
//! but this kernel samples it at each tick (no IRQ time accounting) and it counts every task
//! on the CPU, other builds on a shared machine included. `/proc/PID/task/TID/schedstat`
//! gives a thread's run time in nanoseconds, exact, and whatever it ran (softirqs served in
//! its context included): the bench charges the gateway the run time of the threads that do
//! its receive work, and reports the receive CPU's `/proc/stat` figures beside it.

use std::fs;

/// One CPU's line of `/proc/stat`, in clock ticks (USER_HZ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Time spent doing anything (guest time is already inside user and nice).
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }

    /// What was added since `earlier` (counters only grow; a reset reads as zero).
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            nice: self.nice.saturating_sub(earlier.nice),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The per-CPU lines of `/proc/stat`, indexed by CPU number (the `cpu` total is skipped).
pub fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    let mut cpus = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(index) = words
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let values: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
        let field = |i: usize| values.get(i).copied().unwrap_or(0);
        if cpus.len() <= index {
            cpus.resize(index + 1, CpuTimes::default());
        }
        cpus[index] = CpuTimes {
            user: field(0),
            nice: field(1),
            system: field(2),
            idle: field(3),
            iowait: field(4),
            irq: field(5),
            softirq: field(6),
            steal: field(7),
        };
    }
    cpus
}

pub fn read_proc_stat() -> Vec<CpuTimes> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").unwrap_or_default())
}

/// Clock ticks per second in `/proc/stat` (USER_HZ).
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf(3) reads a constant and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

pub fn ticks_to_ns(ticks: u64, ticks_per_sec: u64) -> u64 {
    ticks.saturating_mul(1_000_000_000) / ticks_per_sec.max(1)
}

/// A thread's `/proc/.../schedstat`: "run_ns wait_ns timeslices".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    pub run_ns: u64,
    /// How many times it was scheduled in: for a NAPI thread, how often it woke to poll.
    pub timeslices: u64,
}

pub fn parse_schedstat(text: &str) -> Option<SchedStat> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let run_ns = fields.next()??;
    let timeslices = fields.nth(1)??;
    Some(SchedStat { run_ns, timeslices })
}

/// Run time of every thread of process `pid`, in ns (0 once it has exited).
pub fn process_runtime_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path().join("schedstat");
            parse_schedstat(&fs::read_to_string(path).ok()?).map(|s| s.run_ns)
        })
        .sum()
}

/// The schedstat of a single thread (a kernel thread, say); zero once it has exited.
pub fn thread_schedstat(tid: u32) -> SchedStat {
    fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .ok()
        .and_then(|text| parse_schedstat(&text))
        .unwrap_or_default()
}

/// Run time of every process in process group `pgid` (a server xtask started, with what it
/// forked), in ns.
pub fn group_runtime_ns(pgid: u32) -> u64 {
    group_members(pgid)
        .into_iter()
        .map(process_runtime_ns)
        .sum()
}

/// What the processes of one group have run so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCpu {
    /// Run time of every thread, in ns (`schedstat`).
    pub run_ns: u64,
    /// User and kernel time, in clock ticks (`stat`): how a proxy's run time splits between
    /// its own code and the kernel's (syscalls, and the loopback TCP stack that runs in the
    /// sender's context).
    pub user_ticks: u64,
    pub system_ticks: u64,
}

/// [`GroupCpu`] of process group `pgid`, from one walk of its members.
pub fn group_cpu(pgid: u32) -> GroupCpu {
    group_members(pgid)
        .into_iter()
        .fold(GroupCpu::default(), |sum, pid| {
            let (user, system) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| user_system_ticks(&stat))
                .unwrap_or_default();
            GroupCpu {
                run_ns: sum.run_ns + process_runtime_ns(pid),
                user_ticks: sum.user_ticks + user,
                system_ticks: sum.system_ticks + system,
            }
        })
}

/// utime and stime in `/proc/PID/stat` (the 14th and 15th fields), every thread included.
pub fn user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    let mut fields = stat_fields(stat)?.skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// The fields of `/proc/PID/stat` after the command name, which is in parentheses and may
/// hold spaces and parentheses itself.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// The processes of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| process_group(&stat))
                == Some(pgid)
        })
        .collect()
}

/// The process group in `/proc/PID/stat` (the 5th field).
pub fn process_group(stat: &str) -> Option<u32> {
    // state, ppid, pgrp
    stat_fields(stat)?.nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  95495 0 55382 591186 2489 0 24812 76 0 0\n\
                        cpu0 44056 0 27332 300936 528 0 11745 43 0 0\n\
                        cpu1 51438 1 28050 290250 1960 5 13066 32 0 0\n\
                        intr 3554103 0 0\nctxt 1234\n";

    #[test]
    fn user_and_system_ticks_come_after_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 731 2146 0 0 20 0 2";
        assert_eq!(user_system_ticks(stat), Some((731, 2146)));
        assert_eq!(user_system_ticks("4242 (short) S 1 2"), None);
    }

    #[test]
    fn reads_each_cpu_and_skips_the_total() {
        let cpus = parse_proc_stat(STAT);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].user, 44056);
        assert_eq!(cpus[1].nice, 1);
        assert_eq!(cpus[1].irq, 5);
        assert_eq!(cpus[1].softirq, 13066);
        assert_eq!(cpus[1].steal, 32);
        assert_eq!(cpus[1].busy(), 51438 + 1 + 28050 + 5 + 13066);
    }

    #[test]
    fn deltas_are_per_kind_and_never_negative() {
        let before = parse_proc_stat(STAT)[1];
        let after = CpuTimes {
            user: before.user + 3,
            system: before.system + 40,
            softirq: before.softirq + 7,
            idle: before.idle + 50,
            ..before
        };
        let delta = after.since(&before);
        assert_eq!((delta.user, delta.system, delta.softirq), (3, 40, 7));
        assert_eq!(delta.busy(), 50);
        assert_eq!(delta.idle, 50);
        assert_eq!(before.since(&after).busy(), 0);
    }

    #[test]
    fn ticks_become_nanoseconds() {
        assert_eq!(ticks_to_ns(50, 100), 500_000_000);
        assert_eq!(ticks_to_ns(1, 250), 4_000_000);
        assert_eq!(
            ticks_to_ns(1, 0),
            1_000_000_000,
            "a zero rate is taken as 1"
        );
    }

    #[test]
    fn reads_schedstat_and_the_process_group() {
        assert_eq!(
            parse_schedstat("548752255 70155817 288\n"),
            Some(SchedStat {
                run_ns: 548_752_255,
                timeslices: 288
            })
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1 2"), None);
        let stat = "16097 (trafgen) S 16095 16095 16095 0 -1 4194560 137 0 0 0";
        assert_eq!(process_group(stat), Some(16095));
        let odd = "42 (a) b (c)) R 1 40 40 0";
        assert_eq!(process_group(odd), Some(40));
    }

    #[test]
    fn this_process_has_run() {
        assert!(process_runtime_ns(std::process::id()) > 0);
    }
}
