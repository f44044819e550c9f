//! The table the bench prints (and writes with `--write`): one row per measurement, then where
//! the CPU went and how identity-service batched.

use crate::probes::{machine, vm_hwm_mib};
use vbase_stack::{Stack, Which};

/// A table row: what, ours, baseline, ratio.
pub type TableRow = [String; 4];

/// What the rows measured, in the order they ran.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<TableRow>,
    /// CPU per call by process, for the rows that drive the services over the network.
    pub cpu: Vec<String>,
    /// identity-service's batching over each phase.
    pub batching: Vec<String>,
}

impl Report {
    /// The peak-memory row: each service's high-water mark over the whole run.
    pub fn push_peak_memory(&mut self, stack: &Stack) {
        let rss: Vec<String> = [Which::Identity, Which::Workspace, Which::Gateway]
            .iter()
            .map(|w| {
                format!(
                    "{} {:.1} MiB",
                    w.binary(),
                    stack.pid(*w).and_then(vm_hwm_mib).unwrap_or(f64::NAN)
                )
            })
            .collect();
        self.rows.push([
            "peak RSS per service during the run".into(),
            rss.join(", "),
            "—".into(),
            "goal <= 64 MiB each".into(),
        ]);
    }

    /// The Markdown table with the machine and the mode above it.
    pub fn render(&self, smoke: bool) -> String {
        let mut table = format!(
            "Machine: {}. Mode: {}. PostgreSQL: ephemeral cluster, fsync on. Release build.\n\n| what | ours | baseline in the same run | ratio |\n|---|---|---|---|\n",
            machine(),
            if smoke {
                "smoke (small counts, not representative)"
            } else {
                "full"
            }
        );
        for r in &self.rows {
            table.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
        }
        table.push_str(&format!(
            "\nWhere the CPU goes (2 cores shared by everything):\n\n{}",
            self.cpu
                .iter()
                .map(|l| format!("- {l}\n"))
                .collect::<String>()
        ));
        if !self.batching.is_empty() {
            table.push_str(&format!(
                "\nHow identity-service batched (its `/metrics` histograms over each phase):\n\n{}",
                self.batching
                    .iter()
                    .map(|l| format!("- {l}\n"))
                    .collect::<String>()
            ));
        }
        table
    }
}
