//! The soak's table, as Markdown and as JSON.

use crate::check::Findings;
use crate::deliver::Outcome;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything the table states.
#[derive(Debug)]
pub struct Summary<'a> {
    pub seed: u64,
    pub command: String,
    pub events: usize,
    pub outcomes: &'a [Outcome],
    pub faults: BTreeMap<String, u64>,
    pub reconciles: Vec<i32>,
    pub final_reconcile: i32,
    /// Rows that differed before the final reconcile (all explained by withheld deliveries
    /// unless listed as diverged).
    pub differed_before_reconcile: usize,
    /// What the final reconcile repaired, per kind `created/updated/deleted`.
    pub repaired: String,
    pub watcher_reconnects: u32,
    pub traffic_calls: u64,
    pub traffic_failed: u64,
    pub duration: Duration,
    pub converge: Duration,
    pub findings: &'a Findings,
}

impl Summary<'_> {
    fn rows(&self) -> Vec<(String, Value)> {
        let o = self.outcomes;
        let count = |f: fn(&Outcome) -> bool| o.iter().filter(|x| f(x)).count();
        let f = self.findings;
        let mut rows = vec![
            ("seed".to_owned(), json!(self.seed)),
            ("events (Clerk history)".into(), json!(self.events)),
            (
                "delivery attempts".into(),
                json!(o.iter().map(|x| x.attempts as u64).sum::<u64>()),
            ),
            (
                "attempts answered non-2xx or timed out (retried)".into(),
                json!(o.iter().map(|x| x.failures as u64).sum::<u64>()),
            ),
            (
                "duplicates (same svix-id sent again)".into(),
                json!(o.iter().map(|x| x.duplicates as u64).sum::<u64>()),
            ),
            (
                "delayed (overtaken by later events)".into(),
                json!(count(|x| x.delayed)),
            ),
            ("withheld (never sent)".into(), json!(count(|x| x.withheld))),
            (
                "given up after every retry".into(),
                json!(count(|x| x.gave_up && !x.delivered)),
            ),
        ];
        for (k, v) in &self.faults {
            rows.push((format!("fault: {k}"), json!(v)));
        }
        rows.push((
            "faults in all".into(),
            json!(self.faults.values().sum::<u64>()),
        ));
        rows.push((
            "reconcile runs under faults (exit codes)".into(),
            json!(self.reconciles),
        ));
        rows.push((
            "rows differing before the final reconcile (webhooks alone)".into(),
            json!(self.differed_before_reconcile),
        ));
        rows.push((
            "final reconcile exit code".into(),
            json!(self.final_reconcile),
        ));
        rows.push((
            "repaired by the final reconcile (created/updated/deleted)".into(),
            json!(self.repaired),
        ));
        rows.push((
            "users' calls (failed or unanswered)".into(),
            json!(format!("{} ({})", self.traffic_calls, self.traffic_failed)),
        ));
        for (k, v) in &f.checked {
            rows.push((format!("checked: {k}"), json!(v)));
        }
        rows.extend([
            (
                "duration (load and faults)".to_owned(),
                json!(format!("{:.0} s", self.duration.as_secs_f64())),
            ),
            (
                "convergence (drain, reconcile, queues empty)".into(),
                json!(format!("{:.0} s", self.converge.as_secs_f64())),
            ),
            ("lost".into(), json!(f.lost.len())),
            ("doubled".into(), json!(f.doubled.len())),
            ("diverged".into(), json!(f.diverged.len())),
            (
                "left of deleted workspaces".into(),
                json!(f.leftovers.len()),
            ),
            ("Liveblocks rooms deleted once".into(), json!(f.rooms_once)),
            (
                "Liveblocks rooms deleted twice (repeat after a crash)".into(),
                json!(f.rooms_twice),
            ),
            (
                "Liveblocks rooms never deleted".into(),
                json!(f.rooms_never.len()),
            ),
            ("quarantined, open".into(), json!(f.quarantined.len())),
            (
                "watchers (reconnects)".into(),
                json!(format!(
                    "{} ({})",
                    f.watchers.len() + f.watcher_gaps.len(),
                    self.watcher_reconnects
                )),
            ),
            ("watcher gaps".into(), json!(f.watcher_gaps.len())),
            (
                "result".into(),
                json!(if f.failed() { "FAIL" } else { "PASS" }),
            ),
        ]);
        rows
    }

    /// The Markdown table and, below it, every difference.
    pub fn markdown(&self) -> String {
        let mut s = format!("Command: `{}`\n\n| | |\n|---|---|\n", self.command);
        for (k, v) in self.rows() {
            let v = match v {
                Value::String(s) => s,
                v => v.to_string(),
            };
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        let f = self.findings;
        for (title, list) in [
            ("Lost", &f.lost),
            ("Doubled", &f.doubled),
            ("Diverged", &f.diverged),
            ("Left of deleted workspaces", &f.leftovers),
            ("Liveblocks rooms never deleted", &f.rooms_never),
            ("Quarantined", &f.quarantined),
            ("Watcher gaps", &f.watcher_gaps),
            ("Watchers", &f.watchers),
        ] {
            if !list.is_empty() {
                s.push_str(&format!("\n{title} ({}):\n", list.len()));
                for l in list.iter().take(50) {
                    s.push_str(&format!("- {l}\n"));
                }
            }
        }
        s
    }

    /// The same as JSON, with the differences in full.
    pub fn json(&self) -> Value {
        let f = self.findings;
        let table: serde_json::Map<String, Value> = self.rows().into_iter().collect();
        json!({
            "command": self.command,
            "table": table,
            "lost": f.lost, "doubled": f.doubled, "diverged": f.diverged,
            "leftovers": f.leftovers, "watcher_gaps": f.watcher_gaps, "watchers": f.watchers, "rooms_never": f.rooms_never, "quarantined": f.quarantined,
        })
    }
}
