// One user's pane: pick a development user, one of their workspaces and a channel; the
// channel's messages, live (WatchChannel), and a box to post as that user. Every call is the
// user's own gRPC-Web call with a development token for the workspace picked.
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { WorkspaceService, type Message } from "../../gen/vbase/workspace/v1/workspace_pb.js";
import { button, el, report, setOptions } from "./dom.js";

export type Directory = { users: { id: string; name: string }[]; memberships: { user: string; org: string; role: string }[] };

async function devToken(user: string, org: string): Promise<string> {
  const r = await fetch(`/dev/token?user=${encodeURIComponent(user)}&org=${encodeURIComponent(org)}`);
  if (!r.ok) throw new Error(`token: ${await r.text()}`);
  return (await r.json()).token;
}

export class Pane {
  readonly root: HTMLElement;
  private user = el("select", { class: "user" });
  private workspace = el("select", { class: "workspace" });
  private channel = el("select", { class: "channel" });
  private messages = el("ul", { class: "messages" });
  private body = el("input", { class: "body", placeholder: "message", maxlength: "10000" });
  private status = el("div", { class: "status" });
  private token = "";
  private watching: AbortController | null = null;
  private shown = new Set<string>();
  /// The post last refused or unanswered: posting the same text to the same channel again is
  /// its retry, sent with its request id, so a post that did commit is not made twice.
  private unsent: { channelId: string; body: string; requestId: string } | null = null;
  private client;
  private directory: Directory = { users: [], memberships: [] };

  constructor(id: string, title: string, workspaceUrl: string) {
    this.client = createClient(WorkspaceService, createGrpcWebTransport({ baseUrl: workspaceUrl }));
    const send = button("Post", () => this.post(), "send");
    this.body.addEventListener("keydown", (e) => e.key === "Enter" && send.click());
    this.root = el(
      "section",
      { id, class: "pane" },
      el("h2", {}, title),
      el("label", {}, "user ", this.user),
      el("label", {}, "workspace ", this.workspace),
      el("label", {}, "channel ", this.channel),
      this.status,
      this.messages,
      el("div", { class: "compose" }, this.body, send),
    );
    this.user.addEventListener("change", () => this.pickUser().catch(report));
    this.workspace.addEventListener("change", () => this.pickWorkspace().catch(report));
    this.channel.addEventListener("change", () => this.pickChannel().catch(report));
  }

  /// New directory (users and memberships); refreshes this pane's user's workspaces.
  async update(d: Directory) {
    this.directory = d;
    const ids = new Set([...d.users.map((u) => u.id), ...d.memberships.map((m) => m.user)]);
    const name = (id: string) => d.users.find((u) => u.id === id)?.name ?? "";
    setOptions(this.user, [...ids].sort().map((id) => ({ value: id, label: name(id) ? `${name(id)} (${id})` : id })), "pick a user");
    if (this.user.value) await this.listWorkspaces();
  }

  private async pickUser() {
    this.stopWatching();
    await this.listWorkspaces();
  }

  /// The user's workspaces, named by GetWorkspace with the user's token for each.
  private async listWorkspaces() {
    const user = this.user.value;
    const orgs = this.directory.memberships.filter((m) => m.user === user).map((m) => m.org);
    const options = await Promise.all(
      orgs.map(async (org) => {
        try {
          const token = await devToken(user, org);
          const r = await this.client.getWorkspace({ clerkOrgId: org }, { headers: auth(token) });
          return { value: org, label: `${r.workspace?.name ?? org} (${org})` };
        } catch (e) {
          return { value: org, label: `${org}: ${ConnectError.from(e).rawMessage}` };
        }
      }),
    );
    setOptions(this.workspace, options, options.length ? "pick a workspace" : "no workspace");
  }

  private async pickWorkspace() {
    this.stopWatching();
    const org = this.workspace.value;
    if (!org) return;
    this.token = await devToken(this.user.value, org);
    const r = await this.client.listChannels({ clerkOrgId: org }, { headers: auth(this.token) });
    setOptions(this.channel, r.channels.map((c) => ({ value: c.id, label: `#${c.name}` })), "pick a channel");
    const general = r.channels.find((c) => c.name === "general");
    if (general) {
      this.channel.value = general.id;
      await this.pickChannel();
    }
  }

  /// Watches the channel (live from now), then shows its latest page; each message once.
  private async pickChannel() {
    this.stopWatching();
    const channelId = this.channel.value;
    if (!channelId) return;
    const abort = new AbortController();
    this.watching = abort;
    const stream = this.client.watchChannel({ channelId, resumeToken: "" }, { headers: auth(this.token), signal: abort.signal });
    const it = stream[Symbol.asyncIterator]();
    const caughtUp = (async () => {
      for (;;) {
        const { value, done } = await it.next();
        if (done || value.event.case === "caughtUp") return;
      }
    })();
    await caughtUp;
    const page = await this.client.listMessages({ channelId, pageSize: 50 }, { headers: auth(this.token) });
    [...page.messages].reverse().forEach((m) => this.show(m)); // the page is newest first
    this.status.textContent = "watching live";
    (async () => {
      try {
        for (;;) {
          const { value, done } = await it.next();
          if (done) break;
          if (value.event.case === "messagePosted") this.show(value.event.value);
        }
        if (this.watching === abort) this.status.textContent = "the watch ended";
      } catch (e) {
        if (this.watching === abort) this.status.textContent = `the watch ended: ${ConnectError.from(e).rawMessage}`;
      }
    })();
  }

  private show(m: Message) {
    if (this.shown.has(m.id)) return;
    this.shown.add(m.id);
    this.messages.append(el("li", {}, el("b", {}, m.authorClerkId), " ", m.body));
  }

  private stopWatching() {
    this.watching?.abort();
    this.watching = null;
    this.shown.clear();
    this.messages.replaceChildren();
    this.status.textContent = "";
  }

  private async post() {
    const body = this.body.value.trim();
    const channelId = this.channel.value;
    if (!body || !channelId) return;
    const retry = this.unsent?.channelId === channelId && this.unsent.body === body ? this.unsent : null;
    const requestId = retry?.requestId ?? crypto.randomUUID();
    this.unsent = { channelId, body, requestId };
    try {
      await this.client.postMessage({ channelId, body, requestId }, { headers: auth(this.token) });
      this.unsent = null;
      this.body.value = "";
    } catch (e) {
      this.status.textContent = `refused: ${ConnectError.from(e).rawMessage}`;
    }
  }
}

function auth(token: string) {
  return { Authorization: `Bearer ${token}` };
}
