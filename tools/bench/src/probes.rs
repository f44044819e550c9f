//! What the bench reads about the processes and the machine while a row runs: CPU and context
//! switches per call (from `/proc`), the services' batching histograms (from `/metrics`), memory.

use vbase_stack::{Stack, Which};

/// CPU seconds a process has used so far: (user + system, system alone).
pub fn cpu_secs(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ((ticks(11) + ticks(12)) / 100.0, ticks(12) / 100.0)
}

/// CPU seconds used so far by the live processes named `postgres` (the cluster's backends).
pub fn postgres_cpu() -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    procs
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_secs(pid).0)
        .sum()
}

/// Context switches (voluntary and forced) of a process's live threads so far.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Busy CPU seconds and context switches of the whole machine so far (one read of
/// `/proc/stat`).
pub fn machine_counters() -> (f64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0);
    };
    // user nice system idle iowait irq softirq steal
    let busy: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse::<f64>().ok())
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let switches = stat
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .unwrap_or(0);
    (busy / 100.0, switches)
}

/// CPU and context switches per call during a phase: our processes, this load generator, and
/// the rest of the machine (PostgreSQL).
pub struct CpuProbe {
    pub pids: Vec<(&'static str, u32)>,
    pub start: Vec<((f64, f64), u64)>,
    pub machine: (f64, u64),
}

impl CpuProbe {
    pub fn start(stack: &Stack) -> Self {
        let mut pids: Vec<(&'static str, u32)> =
            [Which::Gateway, Which::Identity, Which::Workspace]
                .iter()
                .filter_map(|w| stack.pid(*w).map(|p| (w.binary(), p)))
                .collect();
        pids.push(("load generator", std::process::id()));
        let start = pids
            .iter()
            .map(|(_, p)| (cpu_secs(*p), context_switches(*p)))
            .collect();
        Self {
            pids,
            start,
            machine: machine_counters(),
        }
    }

    pub fn per_call(&self, calls: usize) -> String {
        let calls = calls.max(1) as f64;
        let (mut ours, mut ours_switches) = (0.0, 0);
        let (mut parts, mut switches) = (Vec::new(), Vec::new());
        for ((name, pid), ((cpu, sys), ctx)) in self.pids.iter().zip(&self.start) {
            let (now, now_sys) = cpu_secs(*pid);
            let (used, in_kernel) = (now - cpu, now_sys - sys);
            let switched = context_switches(*pid).saturating_sub(*ctx);
            ours += used;
            ours_switches += switched;
            let us = used * 1e6 / calls;
            // The kernel's share only where the process did measurable work in the phase.
            parts.push(if us >= 0.5 {
                format!(
                    "{name} {us:.0} ({:.0} % in the kernel)",
                    100.0 * in_kernel / used
                )
            } else {
                format!("{name} {us:.0}")
            });
            switches.push(format!("{name} {:.1}", switched as f64 / calls));
        }
        let (busy, machine_switches) = machine_counters();
        let rest = (busy - self.machine.0 - ours).max(0.0);
        let rest_switches = machine_switches
            .saturating_sub(self.machine.1)
            .saturating_sub(ours_switches);
        parts.push(format!("PostgreSQL/other {:.0}", rest * 1e6 / calls));
        switches.push(format!(
            "PostgreSQL/other {:.1}",
            rest_switches as f64 / calls
        ));
        format!(
            "CPU µs/call: {}; context switches/call: {}",
            parts.join(", "),
            switches.join(", ")
        )
    }
}

/// Count and sum of a Prometheus histogram, read from a service's `/metrics`.
pub async fn histogram(url: &str, name: &str) -> Option<(f64, f64)> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("count")?, value("sum")?))
}

/// How a phase's requests were batched: the change of a size histogram over the phase.
pub struct BatchProbe {
    pub url: String,
    pub name: &'static str,
    pub before: (f64, f64),
}

impl BatchProbe {
    pub async fn start(stack: &Stack, name: &'static str) -> Option<Self> {
        let url = stack.metrics_url(Which::Identity)?;
        let before = histogram(&url, name).await?;
        Some(Self { url, name, before })
    }

    pub async fn report(self, what: &str) -> String {
        match histogram(&self.url, self.name).await {
            Some((n, sum)) if n > self.before.0 => format!(
                "{what}: {:.0} database statements, {:.1} requests each on average",
                n - self.before.0,
                (sum - self.before.1) / (n - self.before.0)
            ),
            _ => format!("{what}: no batches seen"),
        }
    }
}

/// Resident memory of a process now, KiB.
pub fn vm_rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} RAM")
}
