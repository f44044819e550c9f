// The operator pane: sync status of both services, the open quarantined deliveries (replay,
// discard) and the background job queues (retry), through the admin services (admin.ts).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import * as admin from "./admin.js";
import { ago, button, el, report, table } from "./dom.js";

const QUEUES: [admin.JobQueue, string][] = [
  [admin.JobQueue.LIVEBLOCKS_CLEANUP, "liveblocks clean-up"],
  [admin.JobQueue.PURGE, "purge"],
];
const STATES: Record<number, string> = { 1: "pending", 2: "failing", 3: "dead", 4: "scheduled" };

export class OperatorPane {
  readonly root: HTMLElement;
  private sync = el("div", { id: "sync" });
  private quarantine = el("div", { id: "quarantine" });
  private jobs = el("div", { id: "jobs" });
  private result = el("pre", { id: "operator-result" });

  constructor() {
    this.root = el(
      "section",
      { id: "operator", class: "pane" },
      el("h2", {}, "Operator ", button("Refresh", () => this.refresh())),
      el("h3", {}, "Sync status"),
      this.sync,
      el("h3", {}, "Quarantine (open)"),
      this.quarantine,
      this.result,
      el("h3", {}, "Job queues"),
      this.jobs,
    );
  }

  async refresh() {
    await Promise.all([this.showSync(), this.showQuarantine(), this.showJobs()]).catch(report);
  }

  private async showSync() {
    const rows: (Node | string)[][] = [];
    for (const service of admin.SERVICES) {
      const s = await admin.syncStatus(service);
      rows.push([service, "quarantine", `${s.quarantineOpen} open`, `${s.quarantinedLastHour} in the last hour`]);
      for (const c of s.commands) {
        const h = c.lastHour;
        rows.push([service, c.command, ago(c.lastAppliedAgeSeconds), `${h?.applied ?? 0n} / ${h?.duplicate ?? 0n} / ${h?.stale ?? 0n}`]);
      }
    }
    this.sync.replaceChildren(table(["service", "command", "last applied", "last hour: applied / duplicate / stale"], rows));
  }

  private async showQuarantine() {
    const rows: (Node | string)[][] = [];
    for (const service of admin.SERVICES) {
      for (const d of await admin.quarantined(service)) {
        rows.push([
          service,
          el("code", { class: "svix-id" }, d.svixId),
          d.eventType,
          d.reason,
          String(d.attempts),
          el(
            "span",
            {},
            button("Replay", async () => {
              const r = await admin.replay(d.svixId);
              this.result.textContent = r.output;
              await this.refresh();
            }),
            button("Discard", async () => {
              await admin.discard(service, d.svixId, "discarded from the local console");
              this.result.textContent = `${d.svixId} discarded`;
              await this.refresh();
            }),
          ),
        ]);
      }
    }
    this.quarantine.replaceChildren(rows.length ? table(["service", "svix-id", "event", "reason", "attempts", ""], rows) : "none");
  }

  private async showJobs() {
    const depths = await admin.queueDepths();
    const name = (q: admin.JobQueue) => QUEUES.find(([k]) => k === q)?.[1] ?? String(q);
    const depthRows = depths.map((d) => [name(d.queue), String(d.pending), String(d.failing), String(d.dead), String(d.scheduled), ago(d.oldestLiveSeconds)]);
    const jobRows: (Node | string)[][] = [];
    for (const [queue, label] of QUEUES) {
      for (const j of await admin.jobs(queue)) {
        const due = j.nextAttemptAt ? timestampDate(j.nextAttemptAt).toLocaleTimeString() : "";
        jobRows.push([
          label,
          el("code", {}, j.key),
          STATES[j.state] ?? "",
          String(j.attempts),
          j.lastError,
          due,
          // A scheduled round (a room's second deletion) runs when it is due, not before.
          j.state === admin.JobState.SCHEDULED
            ? ""
            : button("Retry", async () => {
                this.result.textContent = `${await admin.retryJob(queue, j.key)} job(s) made due now`;
                await this.refresh();
              }),
        ]);
      }
    }
    this.jobs.replaceChildren(
      table(["queue", "pending", "failing", "dead", "scheduled", "oldest live"], depthRows),
      jobRows.length ? table(["queue", "key", "state", "attempts", "last error", "next attempt", ""], jobRows) : el("p", {}, "no jobs"),
    );
  }
}
