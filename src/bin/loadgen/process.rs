//! What the measured server processes cost, read from Linux's /proc: CPU time (user + system),
//! resident memory now (VmRSS) and at its peak (VmHWM), summed over several processes for a
//! horizontally scaled target; and the load generator's own open-files limit and CPU time, so a
//! reader can tell whether the client side kept up.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// CPU and memory of one or more processes at one moment, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    /// The sum of each process's own peak since it started.
    pub hwm_kib: u64,
}

/// Reads the usage of `pids` (summed); fails when one is gone.
pub fn usage(pids: &[u32]) -> anyhow::Result<Usage> {
    let ticks = ticks_per_second();
    let mut total = Usage::default();
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat (is process {pid} running?)"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let cpu = cpu_ticks(&stat).with_context(|| format!("no CPU times in /proc/{pid}/stat"))?;
        total.cpu_seconds += cpu as f64 / ticks;
        total.rss_kib += status_kib(&status, "VmRSS").unwrap_or(0);
        total.hwm_kib += status_kib(&status, "VmHWM").unwrap_or(0);
    }
    Ok(total)
}

/// This process's own CPU seconds so far.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| cpu_ticks(&stat))
        .map_or(0.0, |ticks| ticks as f64 / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// utime + stime, in clock ticks, from the text of /proc/PID/stat.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted from the
    // last ')'. utime and stime are fields 14 and 15, so the 12th and 13th after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of /proc/PID/status, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Samples the summed VmRSS of `pids` every 100 ms until stopped, and gives the highest seen:
/// the peak over a run, where VmHWM is the peak over the process's whole life.
pub struct PeakSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                if let Ok(now) = usage(&pids) {
                    peak = peak.max(now.rss_kib);
                }
            }
            peak
        });
        Self { stop, task }
    }

    /// The highest summed RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap_or(0)
    }
}

/// Raises this process's open-files soft limit to its hard limit (each subscriber is a socket),
/// and gives the limit in force afterwards.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum.unwrap_or(u64::MAX),
        Err(_) => limit.current.unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_past_an_awkward_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2011 0 0 0 1234 56 0 0 20 0 9 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\tserver\nVmHWM:\t  171234 kB\nVmRSS:\t   45678 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(45678));
        assert_eq!(status_kib(status, "VmHWM"), Some(171234));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = usage(&[std::process::id()]).expect("own /proc entry");
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
    }
}
