// Every call the console makes to the services' admin RPCs (operators' tokens from the local
// stack), and the one call that is not an RPC: replay, which the gateway does
// (`webhook-gateway replay-quarantined`, run by the stack). The one place naming them.
//
// Called: vbase.ops.v1.DeliveryAdminService/GetSyncStatus, /ListQuarantined, /DiscardQuarantined
// (on each service, which both serve the ledger); WorkspaceAdminService/GetQueueDepths, /ListJobs,
// /RetryJobs.
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { WorkspaceAdminService, JobQueue, JobState, type Job, type QueueDepth } from "../../gen/vbase/workspace/v1/admin_pb.js";
import { DeliveryAdminService, type GetSyncStatusResponse, type QuarantinedDelivery } from "../../gen/vbase/ops/v1/ops_pb.js";

export type Service = "identity-service" | "workspace-service";
export const SERVICES: Service[] = ["identity-service", "workspace-service"];
export { JobQueue, JobState, type Job, type QueueDepth, type QuarantinedDelivery, type GetSyncStatusResponse };

type Config = { identityUrl: string; workspaceUrl: string };
let clients: {
  ledger: Record<Service, ReturnType<typeof ledgerClient>>;
  workspace: ReturnType<typeof workspaceClient>;
} | null = null;
const ledgerClient = (url: string) => createClient(DeliveryAdminService, createGrpcWebTransport({ baseUrl: url }));
const workspaceClient = (url: string) => createClient(WorkspaceAdminService, createGrpcWebTransport({ baseUrl: url }));

export function configure(c: Config) {
  clients = {
    ledger: { "identity-service": ledgerClient(c.identityUrl), "workspace-service": ledgerClient(c.workspaceUrl) },
    workspace: workspaceClient(c.workspaceUrl),
  };
}

function admin() {
  if (!clients) throw new Error("admin clients are not configured");
  return clients;
}

// Operators' tokens live 15 minutes; a fresh one is fetched after 10.
const tokens = new Map<Service, { token: string; at: number }>();
async function headers(service: Service) {
  const held = tokens.get(service);
  if (!held || Date.now() - held.at > 10 * 60_000) {
    const r = await fetch(`/dev/operator-token?service=${service}`);
    if (!r.ok) throw new Error(`operator token: ${await r.text()}`);
    tokens.set(service, { token: (await r.json()).token, at: Date.now() });
  }
  return { Authorization: `Bearer ${tokens.get(service)!.token}` };
}

export async function syncStatus(service: Service): Promise<GetSyncStatusResponse> {
  const h = { headers: await headers(service) };
  return admin().ledger[service].getSyncStatus({}, h);
}

/// Open quarantined deliveries, oldest first.
export async function quarantined(service: Service): Promise<QuarantinedDelivery[]> {
  const h = { headers: await headers(service) };
  const r = await admin().ledger[service].listQuarantined({}, h);
  return r.deliveries;
}

export async function discard(service: Service, svixId: string, reason: string): Promise<boolean> {
  const h = { headers: await headers(service) };
  const req = { svixId, reason };
  const r = await admin().ledger[service].discardQuarantined(req, h);
  return r.discarded;
}

/// Applies one quarantined delivery again with the gateway's current code.
export async function replay(svixId: string): Promise<{ ok: boolean; output: string }> {
  const r = await fetch(`/dev/replay?id=${encodeURIComponent(svixId)}`, { method: "POST" });
  if (!r.ok) throw new Error(`replay: ${await r.text()}`);
  return r.json();
}

export async function queueDepths(): Promise<QueueDepth[]> {
  return (await admin().workspace.getQueueDepths({}, { headers: await headers("workspace-service") })).queues;
}

export async function jobs(queue: JobQueue): Promise<Job[]> {
  const r = await admin().workspace.listJobs({ queue, pageSize: 100 }, { headers: await headers("workspace-service") });
  return r.jobs;
}

export async function retryJob(queue: JobQueue, key: string): Promise<bigint> {
  const r = await admin().workspace.retryJobs({ queue, which: { case: "key", value: key } }, { headers: await headers("workspace-service") });
  return r.retried;
}
